"""One dispatcher for the array operations: NumPy reference on numpy arrays,
the registered CUDA twin on cupy arrays.

Each NumPy function of :mod:`segvol_rt.ops` that has a kernel declares it with
:func:`cuda_twin`. The twin is the function of the same name in
:mod:`segvol_rt.ops.cuda`; it takes the same arguments and returns the same
result. Dispatch looks at the first argument only. A registered function
without a twin is a programming error that the tests catch
(:func:`registered_twins` lists every pair), never a silent NumPy run on
device arrays. cupy is imported only when the caller already holds a cupy array.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

CUDA_MODULE = "segvol_rt.ops.cuda"

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Callable[..., Any]] = {}


def is_cupy(x: Any) -> bool:
    """True for a cupy array (or scalar), without importing cupy."""
    return type(x).__module__.split(".")[0] == "cupy"


def array_namespace(x: Any) -> Any:
    """numpy for numpy arrays, cupy for cupy arrays."""
    if is_cupy(x):
        import cupy  # only reachable when the caller already holds a cupy array

        return cupy
    return np


def host_values(values: Any) -> np.ndarray:
    """A small device array (indices, per-chunk sums) as a numpy array."""
    return values.get() if is_cupy(values) else np.asarray(values)


def twin_of(name: str) -> Callable[..., Any]:
    """The CUDA twin ``segvol_rt.ops.cuda.<name>``; LookupError when it is missing."""
    cuda = importlib.import_module(CUDA_MODULE)
    twin = getattr(cuda, name, None)
    if not callable(twin):
        raise LookupError(f"{CUDA_MODULE} has no twin {name!r} for segvol_rt.ops.{name}")
    return twin


def cuda_twin(fn: F) -> F:
    """Register ``fn`` as the NumPy twin of ``segvol_rt.ops.cuda.<fn.__name__>``.

    The returned function runs ``fn`` on numpy input and the CUDA twin when
    the first argument is a cupy array; ``__wrapped__`` is the NumPy function."""
    name = fn.__name__
    if name in _REGISTRY:
        raise LookupError(f"segvol_rt.ops.{name} is registered twice")
    _REGISTRY[name] = fn

    @functools.wraps(fn)
    def dispatch(first: Any, *args: Any, **kwargs: Any) -> Any:
        if is_cupy(first):
            return twin_of(name)(first, *args, **kwargs)
        return fn(first, *args, **kwargs)

    return dispatch  # type: ignore[return-value]


def registered_twins() -> dict[str, Callable[..., Any]]:
    """Every registered NumPy function by name (the CUDA twin has the same name).

    Complete whenever this module is: importing it runs ``segvol_rt.ops``
    first, whose ``__init__`` imports (and so registers) every operation."""
    return dict(_REGISTRY)
