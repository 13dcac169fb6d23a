"""The CUDA kernels of the GPU path: kernels/*.cu compiled with NVRTC through
``cupy.RawModule``, lazily at first use and cached per device.

This package is the top-level ``kernels/`` folder of the repository,
installed as ``segvol_rt.kernels``: the ``.cu`` files are its package data
and this module their loader (one name, so ``segvol_rt.kernels`` cannot be
both a module and the data package). Each ``.cu`` file is compiled as
``common.cuh`` + the file, with the template instantiations listed in
:data:`NAME_EXPRESSIONS` - the one list that the loader, the nvcc compile test
and the CPU emulator of the tests all use. CuPy itself keeps a disk cache of
the compiled binaries, so a new process recompiles nothing that is unchanged.

Importing this module needs numpy alone; cupy is imported on the first
:func:`function` call.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError

#: threads per block of every launch (kernels/common.cuh: SEGVOL_BLOCK)
BLOCK = 256
COMMON = "common.cuh"
OPTIONS = ("-std=c++17",)

#: numpy dtype name -> C++ type, for the kernels templated on the input dtype
CTYPES = {
    "float32": "float",
    "float64": "double",
    "uint8": "unsigned char",
    "int8": "signed char",
    "int16": "short",
    "uint16": "unsigned short",
    "int32": "int",
    "int64": "long long",
}
#: dtypes that the nearest resize, the box of nonzeros and paste take as they are
NEAREST_DTYPES = tuple(CTYPES)
#: dtypes that trilinear reads directly; others are cast to float32 first
TRILINEAR_DTYPES = ("float32", "uint8", "int16")


def _names() -> dict[str, tuple[str, ...]]:
    nearest = tuple(f"resize_nearest<{CTYPES[d]}, {e}>" for d in NEAREST_DTYPES for e in (0, 1))
    trilinear = tuple(f"resize_trilinear<{CTYPES[d]}>" for d in TRILINEAR_DTYPES)
    boxes = tuple(f"bbox<{CTYPES[d]}, 0>" for d in NEAREST_DTYPES) + ("bbox<float, 1>",)
    pastes = tuple(f"paste<{CTYPES[d]}>" for d in ("float32", "uint8"))
    return {
        "resize.cu": nearest + trilinear + ("upsample_then_nearest",),
        "reduce.cu": boxes + ("np1_leaf_sums", "np1_block_sums", "radix_histogram", "minmax_keys"),
        "pointwise.cu": ("normalize_affine",),
        "blend.cu": ("blend_accumulate", "blend_divide", "blend_average") + pastes + ("scan_mask",),
    }


#: source file -> the kernel name expressions compiled from it
NAME_EXPRESSIONS: dict[str, tuple[str, ...]] = _names()

_modules: dict[tuple[int, str], Any] = {}
_functions: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()
_checked: Any = None  # cupy, once a GPU was seen


def source_text(name: str) -> str:
    """Text of one file of ``segvol_rt.kernels`` (a ``.cu`` or ``.cuh``)."""
    return resources.files("segvol_rt.kernels").joinpath(name).read_text(encoding="utf-8")


def full_source(file: str) -> str:
    """What NVRTC compiles for ``file``: common.cuh, then the file."""
    return source_text(COMMON) + "\n#line 1 \"" + file + "\"\n" + source_text(file)


def file_of(name: str) -> str:
    """The .cu file that defines the kernel name expression ``name``."""
    for file, names in NAME_EXPRESSIONS.items():
        if name in names:
            return file
    raise KeyError(f"unknown kernel {name!r}; known: {sorted(n for v in NAME_EXPRESSIONS.values() for n in v)}")


def cupy_module() -> Any:
    """cupy, once it is known to reach a GPU; else a :class:`SegVolError`
    naming the ``gpu`` extra (cupy missing) or saying there is no CUDA device."""
    global _checked
    if _checked is not None:
        return _checked
    cupy = require("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError and driver load failures alike
        raise SegVolError(f"no CUDA device: cupy cannot reach a GPU ({exc})") from exc
    if count < 1:
        raise SegVolError("no CUDA device: cupy sees no GPU")
    _checked = cupy
    return cupy


def module(file: str) -> Any:
    """The compiled ``cupy.RawModule`` of ``file`` on the current device."""
    cupy = cupy_module()
    key = (cupy.cuda.runtime.getDevice(), file)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = cupy.RawModule(
                code=full_source(file), options=OPTIONS, name_expressions=list(NAME_EXPRESSIONS[file])
            )
            _modules[key] = mod
    return mod


def function(name: str) -> Any:
    """The kernel ``name`` (a name expression of :data:`NAME_EXPRESSIONS`), compiled
    for the current device on first use; call it as ``f((grid,), (BLOCK,), args)``."""
    key = (cupy_module().cuda.runtime.getDevice(), name)
    fn = _functions.get(key)
    if fn is None:
        fn = module(file_of(name)).get_function(name)
        _functions[key] = fn
    return fn


def compile_all() -> None:
    """Compile and load every kernel on the current device (warm-up, checks)."""
    for names in NAME_EXPRESSIONS.values():
        for name in names:
            function(name)
