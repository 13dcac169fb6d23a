"""CUDA plumbing shared by the TensorRT and ONNX Runtime CUDA backends (and
the engine build): GPU identity, the CuPy import, device buffers sized from
the graph specs, and stream ordering.

Streams: each CUDA backend runs its graphs on its own stream. Callers produce
inputs and consume outputs on *their* current CuPy stream; :func:`ordered_on`
makes the backend's stream wait for the caller's pending work before running,
and the caller's stream wait for the backend's work afterwards (events, no
host synchronisation). Because every run starts after everything the caller
had queued and the caller continues only after the run, buffers freed on
either side are never reused while the other side still reads them.

Nothing here imports cupy at module level: :func:`require_cupy` does, and
:func:`query_gpu` talks to the CUDA driver through ctypes so that the build
(which needs TensorRT, not CuPy) and the runtime identify a GPU identically.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S

# cuDeviceGetAttribute ids (cuda.h, stable since CUDA 2.x)
_CC_MAJOR = 75
_CC_MINOR = 76
_NO_DEVICE = 100  # CUDA_ERROR_NO_DEVICE


@dataclass(frozen=True)
class GpuIdentity:
    """A GPU as the CUDA driver names it: what a TensorRT engine is specific to on the device side."""

    name: str
    compute_capability: str  # "major.minor", e.g. "9.0"


def require_cupy(device_id: int = 0) -> Any:
    """Import cupy and check that GPU ``device_id`` is visible; else a
    :class:`SegVolError` naming the ``gpu`` extra or the missing GPU."""
    cp = require("cupy")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CuPy raises its own CUDARuntimeError
        raise SegVolError(
            f"CuPy is installed but CUDA is unusable here ({exc}); is there an NVIDIA GPU and driver?"
        ) from exc
    if count <= device_id:
        raise SegVolError(f"no CUDA GPU {device_id} (CuPy sees {count}); run on a GPU machine or use a CPU backend")
    return cp


def _load_driver() -> ctypes.CDLL:
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError as exc:
        raise SegVolError(
            f"no NVIDIA driver found ({name} cannot be loaded); TensorRT and CUDA backends need a GPU"
        ) from exc


def _check(rc: int, what: str) -> None:
    if rc == _NO_DEVICE:
        raise SegVolError("the NVIDIA driver reports no CUDA-capable GPU; TensorRT and CUDA backends need one")
    if rc:
        raise SegVolError(f"CUDA driver call {what} failed with error {rc}")


def query_gpu(device_id: int = 0) -> GpuIdentity:
    """Name and compute capability of GPU ``device_id``, from the CUDA driver
    API (``cuDeviceGetName``/``cuDeviceGetAttribute``), honouring
    ``CUDA_VISIBLE_DEVICES``. Raises :class:`SegVolError` without a GPU."""
    lib = _load_driver()
    _check(lib.cuInit(0), "cuInit")
    count = ctypes.c_int()
    _check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if device_id >= count.value:
        raise SegVolError(f"no CUDA GPU {device_id}: the driver sees {count.value}")
    dev = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(dev), device_id), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    _check(lib.cuDeviceGetName(name, len(name), dev), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev), "cuDeviceGetAttribute")
    return GpuIdentity(name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}")


# -- shapes ------------------------------------------------------------------
def axis_values(spec: S.GraphSpec, feeds: Mapping[str, Any]) -> dict[str, int]:
    """Dynamic axis name -> its value in ``feeds`` (already validated)."""
    dims: dict[str, int] = {}
    for tensor in spec.inputs:
        shape = feeds[tensor.name].shape
        for index, axis in tensor.dynamic_axes().items():
            dims[axis] = int(shape[index])
    return dims


def output_shapes(spec: S.GraphSpec, feeds: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Output name -> shape for these inputs, from the spec alone (used to
    preallocate outputs before running)."""
    dims = axis_values(spec, feeds)
    return {t.name: t.resolve(dims) for t in spec.outputs}


# -- buffers -----------------------------------------------------------------
def device_inputs(cp: Any, spec: S.GraphSpec, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """C-contiguous cupy arrays of the spec's dtypes, ordered as ``spec.inputs``.
    cupy inputs are used as they are when already contiguous (no copy);
    numpy inputs are uploaded (a host copy the caller chose)."""
    return {t.name: cp.ascontiguousarray(cp.asarray(feeds[t.name], dtype=t.dtype)) for t in spec.inputs}


def empty_outputs(cp: Any, spec: S.GraphSpec, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Uninitialised cupy outputs of the spec's dtypes and the given shapes."""
    return {t.name: cp.empty(shapes[t.name], dtype=t.dtype) for t in spec.outputs}


@contextmanager
def ordered_on(cp: Any, stream: Any) -> Iterator[Any]:
    """Run the enclosed work on ``stream``, after everything queued on the
    caller's current stream and before anything the caller queues later."""
    caller = cp.cuda.get_current_stream()
    if caller.ptr == stream.ptr:
        yield stream
        return
    stream.wait_event(caller.record())
    try:
        with stream:
            yield stream
    finally:
        caller.wait_event(stream.record())


def gpu_problem() -> str | None:
    """Why there is no usable CUDA GPU here, or None when there is one."""
    try:
        query_gpu(0)
    except SegVolError:
        return "no CUDA device"
    return None
