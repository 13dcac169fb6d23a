"""Host and device arrays of the pipeline: upload, download, stream sync and
the GPU memory high-water mark.

The pipeline runs on the array module of its backend (``backend.xp``): numpy
on CPU backends, cupy on CUDA backends. These helpers are the only places
where data crosses between host and device, so the crossings are easy to
find (and to count, in the tests' emulated device). Everything here is a
no-op or returns None for numpy; cupy is never imported by this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segvol_rt.ops.dispatch import is_cupy


def is_host(xp: Any) -> bool:
    """True for numpy (a CPU backend)."""
    return xp is np


def on_device(x: Any) -> bool:
    """True for a device (cupy) array."""
    return is_cupy(x)


def to_host(x: Any) -> Any:
    """``x`` as a numpy array (a copy from the device for cupy arrays; numpy
    arrays, scalars and None pass through)."""
    if x is None:
        return None
    if is_cupy(x) or hasattr(x, "__cuda_array_interface__"):
        return x.get()
    return np.asarray(x)


def to_device(xp: Any, x: Any) -> Any:
    """``x`` in the array module ``xp``: uploaded once for cupy (a device array
    passes through), downloaded for numpy. The memory layout is kept: a
    Fortran-ordered scan (as nibabel reads it) stays Fortran-ordered, so its
    model-space view is C-contiguous on the device as on the host."""
    if is_host(xp):
        return to_host(x)
    if is_cupy(x):
        return x
    x = np.asarray(x)
    if x.ndim > 1 and x.flags.f_contiguous and not x.flags.c_contiguous:
        return xp.asarray(x.T).T  # x.T is C-contiguous: a plain copy of the bytes
    return xp.asarray(np.ascontiguousarray(x))


def synchronize(xp: Any) -> None:
    """Wait for the device work queued on the current stream (no-op on the host);
    stage timings of asynchronous kernels are meaningful only after this."""
    if not is_host(xp):
        xp.cuda.get_current_stream().synchronize()


class GpuMemory:
    """High-water marks of GPU memory, sampled at stage ends.

    ``peak_pool_bytes``: bytes held by CuPy's default memory pool (the
    pipeline's own arrays; the pool keeps freed blocks, so this is close to
    the true peak of CuPy allocations). ``peak_device_bytes``: device memory
    in use per ``cudaMemGetInfo`` (everything on the GPU: CuPy, the ONNX
    Runtime / TensorRT workspaces, the CUDA context). Both None on the host."""

    def __init__(self, xp: Any):
        self.xp = None if is_host(xp) else xp
        self.peak_pool_bytes: int | None = None
        self.peak_device_bytes: int | None = None
        self.device_total_bytes: int | None = None

    def sample(self) -> None:
        if self.xp is None:
            return
        pool = self.xp.get_default_memory_pool()
        free, total = self.xp.cuda.runtime.memGetInfo()
        self.peak_pool_bytes = max(self.peak_pool_bytes or 0, int(pool.total_bytes()))
        self.peak_device_bytes = max(self.peak_device_bytes or 0, int(total) - int(free))
        self.device_total_bytes = int(total)

    def as_dict(self) -> dict[str, int | None]:
        return {
            "peak_gpu_pool_bytes": self.peak_pool_bytes,
            "peak_gpu_device_bytes": self.peak_device_bytes,
            "gpu_total_bytes": self.device_total_bytes,
        }
