"""Checks of the Python API's arguments: real types, or a :class:`SegVolError`
whose one line names the argument.

The API refuses what it cannot honour instead of coercing it: a bare string
is not a list of targets, bytes are not text, a float is not a voxel index
(truncating it would move the prompt), a bool is not an int (``True`` is not
voxel 1), a complex volume has no intensity, a 3x3 matrix is not an affine.
The checks run at the API boundary (:mod:`segvol_rt.runtime`), before any
work, so a user mistake never surfaces as a ``TypeError``, ``ValueError`` or
``AttributeError`` from inside the pipeline.

Accepted types, by kind of argument:

* integers: Python ``int`` and NumPy integer scalars (not ``bool`` / ``numpy.bool_``);
* integer vectors (boxes, points): sequences of those, or NumPy integer arrays;
* flags: ``bool`` or ``numpy.bool_``;
* text: ``str`` (a ``numpy.str_`` is a ``str``);
* paths: ``str`` or ``os.PathLike`` whose ``__fspath__`` is a ``str`` (not bytes);
* volumes: arrays of integer, unsigned or floating-point dtype (bool, complex,
  object, string and time dtypes are refused: none of them is a CT intensity);
* affines: finite real 4x4 arrays.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt.errors import SegVolError

# dtype kinds of a scan's intensities: signed and unsigned integers, floats
REAL_KINDS = "iuf"


def type_name(value: Any) -> str:
    """The type of ``value`` as a message says it."""
    return type(value).__name__


def is_integer(value: Any) -> bool:
    """A Python or NumPy integer that is not a boolean."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (Python or NumPy integer; not a bool, not a float)."""
    if not is_integer(value):
        raise SegVolError(f"{name} must be an integer, not {type_name(value)} ({value!r})")
    out = int(value)
    if minimum is not None and out < minimum:
        raise SegVolError(f"{name} must be >= {minimum}, got {out}")
    return out


def boolean(value: Any, name: str) -> bool:
    """``value`` as a ``bool`` (``True``/``False`` or ``numpy.bool_``; 0 and 1 are not flags)."""
    if not isinstance(value, (bool, np.bool_)):
        raise SegVolError(f"{name} must be True or False, not {type_name(value)} ({value!r})")
    return bool(value)


def optional_text(value: Any, name: str) -> str | None:
    """``value`` if it is a ``str`` or None (bytes are refused, not decoded)."""
    if value is not None and not isinstance(value, str):
        raise SegVolError(f"{name} must be a str or None, not {type_name(value)} ({value!r:.60})")
    return value


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        shown = f"{value!r:.60}" if isinstance(value, str) else f"{type_name(value)} {value!r:.60}"
        raise SegVolError(f"unknown {name} {shown}: choose {', '.join(choices)}")
    return value


def path(value: Any, name: str) -> Path:
    """``value`` as a :class:`pathlib.Path` (``str`` or ``os.PathLike`` of ``str``)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, os.PathLike) and isinstance(fspath := os.fspath(value), str):
        text = fspath
    else:
        raise SegVolError(f"{name} must be a path (str or os.PathLike of str), not {type_name(value)}")
    if not text or "\0" in text:
        raise SegVolError(f"{name} {text!r} is not a usable path")
    return Path(text)


def optional_path(value: Any, name: str) -> Path | None:
    return None if value is None else path(value, name)


def sequence(value: Any, name: str, of: str) -> Sequence[Any] | np.ndarray:
    """``value`` if it is a sequence other than a string, bytes or a mapping
    (a bare string would otherwise be iterated letter by letter)."""
    if isinstance(value, str):
        raise SegVolError(f"{name} must be a list of {of}, not a bare str; wrap it: [{value!r:.40}]")
    if isinstance(value, (bytes, bytearray, memoryview, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        raise SegVolError(f"{name} must be a list of {of}, not {type_name(value)}")
    return value


def int_vector(value: Any, name: str) -> list[int]:
    """A 1D sequence of integers (Python/NumPy ints or an integer array) as Python ints;
    floats, bools and strings are refused, not converted."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise SegVolError(f"{name} must be a 1D integer array, got dtype {value.dtype} and shape {value.shape}")
        return [int(v) for v in value.tolist()]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise SegVolError(f"{name} must be a sequence of integers, not {type_name(value)}")
    bad = [v for v in value if not is_integer(v)]
    if bad:
        raise SegVolError(f"{name} {_shown(value)}: {bad[0]!r} is not an integer (voxel indices are not rounded)")
    return [int(v) for v in value]


def _shown(value: Iterable[Any]) -> str:
    return f"({', '.join(repr(v) for v in value)})"[:80]


def _as_array(value: Any, name: str) -> np.ndarray:
    """``numpy.asarray(value)``; a ragged nesting is a user error naming ``name``."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise SegVolError(f"{name} is not a rectangular array ({str(exc).split('.')[0]})") from None


def real_volume(value: Any, name: str, on_device: bool = False) -> Any:
    """A 3D array of real intensities: a NumPy array (array-likes are converted
    without a dtype, then checked), or the device array itself when
    ``on_device``. Its dtype kind must be in :data:`REAL_KINDS`."""
    arraylike = on_device or hasattr(value, "__array__") or isinstance(value, (list, tuple))
    if not arraylike or isinstance(value, (str, bytes, bytearray, memoryview, Mapping)):
        raise SegVolError(f"{name} must be a NIfTI path or a real-valued (I, J, K) array, not {type_name(value)}")
    if not on_device:
        value = _as_array(value, name)
    dtype = value.dtype
    if dtype.kind not in REAL_KINDS:
        what = {"b": "bool (a mask, not intensities)", "c": "complex (no intensity)"}.get(dtype.kind, str(dtype))
        raise SegVolError(f"{name} has dtype {what}; a CT scan is an integer or floating-point array")
    if value.ndim != 3:
        raise SegVolError(f"{name} must be 3D (I, J, K), got shape {tuple(value.shape)}")
    return value


def affine(value: Any, name: str) -> np.ndarray:
    """A finite real 4x4 voxel-to-world matrix as float64."""
    if isinstance(value, (str, bytes, Mapping)):
        raise SegVolError(f"{name} must be a finite 4x4 array, not {type_name(value)}")
    arr = _as_array(value, name)
    if arr.dtype.kind not in REAL_KINDS:
        raise SegVolError(f"{name} must be a finite real 4x4 array, got dtype {arr.dtype}")
    if arr.shape != (4, 4):
        raise SegVolError(f"{name} must be a 4x4 array, got shape {arr.shape}")
    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise SegVolError(f"{name} has NaN or infinite entries: {out.tolist()}")
    return out


def float32_scan(value: Any, name: str = "volume") -> np.ndarray:
    """A host volume as the pipeline reads it: :func:`real_volume`, then float32
    (the official LoadImage's dtype). Values beyond float32's range would
    silently become infinite there; they are refused by name instead.

    The result is Fortran-ordered, as nibabel reads a NIfTI file: the
    statistics' float32 sums depend on the memory order, so one order makes an
    array give exactly the masks of the same values read from a file, whatever
    order the caller's array has."""
    arr = real_volume(value, name)
    with np.errstate(over="ignore"):  # reported below, not as a NumPy warning
        data = np.asarray(arr, dtype=np.float32, order="F")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and np.isinf(data).any() and not np.isinf(arr).any():
        raise SegVolError(f"{name} has values beyond float32's range (|value| up to {float(np.abs(arr).max()):g}); the model reads float32")
    return data
