"""An EMULATED GPU for pipeline tests on machines without one.

:func:`make` returns a module that stands in for ``cupy``: numpy underneath,
but its arrays are :class:`DeviceArray` - a numpy subclass whose type claims
to come from cupy, so :mod:`segvol_rt.ops` dispatches them to
:mod:`segvol_rt.ops.cuda`, whose kernels run on the CPU emulator of
kernel_emu.py. The whole pipeline then runs its GPU code path here.

What it checks beyond the numbers:

* **host/device crossings**: every upload (``asarray`` & co. of host data)
  and download (``.get()``) is counted in :class:`Transfers`, so a test can
  assert that only the scan goes up and only small things and the mask come
  down;
* **numpy on device arrays**: a numpy *function* (``np.stack``,
  ``np.concatenate``, ...) called on a device array raises, as cupy's arrays
  refuse implicit conversion. (``np.asarray`` of a device array cannot be
  caught this way; review for it.)

:class:`EmulatedCudaBackend` wraps a CPU backend as a "CUDA" one: device
arrays in (anything else fails), device arrays out.
"""

from __future__ import annotations

import contextlib
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segvol_rt.backends.base import Backend

_state = threading.local()


@contextlib.contextmanager
def _inside() -> Any:
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


@dataclass
class Transfers:
    """Bytes that crossed between host and the emulated device, per crossing."""

    uploads: list[int] = field(default_factory=list)
    downloads: list[int] = field(default_factory=list)
    syncs: int = 0

    def reset(self) -> None:
        self.uploads.clear()
        self.downloads.clear()
        self.syncs = 0


TRANSFERS = Transfers()


class DeviceArray(np.ndarray):
    """numpy memory standing in for a cupy array."""

    __module__ = "cupy._emulated"  # what segvol_rt.ops.dispatch.is_cupy looks at

    def get(self) -> np.ndarray:
        """Download (cupy's ``ndarray.get``), counted."""
        TRANSFERS.downloads.append(int(self.nbytes))
        return np.array(self.view(np.ndarray), copy=True)

    def __array_function__(self, func, types_, args, kwargs):
        if not getattr(_state, "depth", 0):
            raise TypeError(f"numpy.{func.__name__} called on a device array (cupy would refuse)")
        return super().__array_function__(func, types_, args, kwargs)


def _device(result: Any) -> Any:
    if isinstance(result, np.ndarray) and not isinstance(result, DeviceArray):
        return result.view(DeviceArray)
    if isinstance(result, tuple):
        return tuple(_device(r) for r in result)
    if isinstance(result, list):
        return [_device(r) for r in result]
    return result


def _host_data(x: Any) -> bool:
    return not isinstance(x, DeviceArray)


def _upload(fn: Any) -> Any:
    """``asarray``-like constructors: host data is copied up (and counted)."""

    def call(x: Any, *args: Any, **kwargs: Any) -> Any:
        with _inside():
            if _host_data(x):
                host = np.array(fn(x, *args, **kwargs), copy=True, order="K")
                TRANSFERS.uploads.append(int(host.nbytes))
                return host.view(DeviceArray)
            return _device(fn(x.view(np.ndarray), *args, **kwargs))

    return call


def _wrap(fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with _inside():
            return _device(fn(*args, **kwargs))

    return call


class _Stream:
    def synchronize(self) -> None:
        TRANSFERS.syncs += 1


class _Pool:
    """Bytes 'held': everything ever uploaded or created, a stand-in high-water mark."""

    def total_bytes(self) -> int:
        return sum(TRANSFERS.uploads) + 1

    def used_bytes(self) -> int:
        return self.total_bytes()


def make() -> types.ModuleType:
    """The emulated ``cupy`` module."""
    cp = types.ModuleType("cupy")
    stream, pool = _Stream(), _Pool()
    cp.ndarray = DeviceArray
    cp.asarray = _upload(np.asarray)
    cp.array = _upload(np.array)
    cp.ascontiguousarray = _upload(np.ascontiguousarray)
    cp.asnumpy = lambda a: a.get() if isinstance(a, DeviceArray) else np.asarray(a)
    cp.get_default_memory_pool = lambda: pool
    cp.cuda = types.SimpleNamespace(
        get_current_stream=lambda: stream,
        runtime=types.SimpleNamespace(memGetInfo=lambda: (100 << 30, 141 << 30), getDeviceCount=lambda: 1),
    )

    def __getattr__(name: str) -> Any:
        attr = getattr(np, name)
        if isinstance(attr, (type, np.ufunc)) or not callable(attr):
            return attr  # dtypes, constants; ufuncs keep the subclass themselves
        return _wrap(attr)

    cp.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return cp


def gpu_ops_device(cp: types.ModuleType) -> Any:
    """A :class:`segvol_rt.ops.cuda.Device` on the emulated cupy and the CPU
    emulator of the kernels; fresh outputs poisoned (NaN / 0xAB)."""
    import importlib.util
    from pathlib import Path

    from segvol_rt.ops import cuda as gpu_ops

    spec = importlib.util.spec_from_file_location("segvol_rt_kernel_emu", Path(__file__).with_name("kernel_emu.py"))
    emu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu)  # type: ignore[union-attr]
    return gpu_ops.Device(xp=cp, kernel=emu.kernel, to_host=lambda a: a.get(), poison=True), emu


@contextlib.contextmanager
def activated(cp: types.ModuleType, device: Any) -> Any:
    """Inside the block ``import cupy`` gives ``cp`` and gpu_ops runs on ``device``."""
    import sys

    from segvol_rt.ops import cuda as gpu_ops

    missing = object()
    previous = sys.modules.get("cupy", missing)
    sys.modules["cupy"] = cp
    try:
        with gpu_ops.use(device):
            yield cp
    finally:
        if previous is missing:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = previous  # type: ignore[assignment]


class EmulatedCudaBackend(Backend):
    """A CPU backend dressed as a CUDA one: takes and returns device arrays.

    Every input must already be a device array (the pipeline uploads what it
    feeds); the graph runs on the wrapped backend without counting a transfer
    (on a real GPU it would run there)."""

    device = "cuda"

    def __init__(self, inner: Backend, cp: types.ModuleType):
        super().__init__(inner.specs)
        self.inner = inner
        self.name = inner.name
        self._cp = cp
        self.calls: dict[str, list[int]] = {}

    @property
    def xp(self) -> Any:
        return self._cp

    def _run(self, graph: str, feeds: dict[str, Any]) -> dict[str, Any]:
        for name, value in feeds.items():
            if not isinstance(value, DeviceArray):
                raise TypeError(f"{graph}.{name} was fed a host {type(value).__name__}, not a device array")
        self.calls.setdefault(graph, []).append(int(next(iter(feeds.values())).shape[0]))
        host = {k: np.ascontiguousarray(v.view(np.ndarray)) for k, v in feeds.items()}
        return {k: np.asarray(v).view(DeviceArray) for k, v in self.inner._run(graph, host).items()}
