"""A FAKE ``cupy`` for CPU-only machines: numpy memory typed as cupy arrays.
Nothing runs on a GPU.

:func:`make` returns a module that stands in for ``cupy``. Its arrays are
:class:`DeviceArray` - a numpy subclass whose type claims to come from cupy
(so :mod:`segvol_rt.ops` dispatches them to :mod:`segvol_rt.ops.cuda`) and
whose ``.data.ptr`` is its host address. Every numpy function is there
(``cp.empty``, ``cp.copyto``, ...), returning device arrays. It serves:

* **the CUDA backends' wiring** (TensorRT, ONNX Runtime CUDA; the fake is put
  into ``sys.modules`` with monkeypatch): streams log ``record`` /
  ``wait_event`` / ``synchronize`` / ``graph.launch`` in ``cp.log``, and a
  stream capture records the fake TensorRT executions of fake_tensorrt.py
  into a CUDA graph that ``launch`` replays;
* **the pipeline's GPU code path** (inside :func:`activated`, with
  :func:`gpu_ops_device`: the CUDA kernels on the CPU emulator of
  kernel_emu.py, and :class:`EmulatedCudaBackend` around a CPU backend).

What it checks beyond the numbers:

* **host/device crossings**: every upload (``asarray`` & co. of host data)
  and download (``.get()``, ``asnumpy``) is counted in :data:`TRANSFERS`,
  as are stream syncs, so a test can assert that only the scan goes up and
  only small things and the mask come down;
* **numpy on device arrays**: inside :func:`activated`, a numpy *function*
  (``np.stack``, ``np.concatenate``, ...) called on a device array raises,
  as cupy's arrays refuse implicit conversion. (``np.asarray`` of a device
  array cannot be caught this way; review for it.) Outside it they run as
  numpy, so the wiring tests compare outputs with numpy directly.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segvol_rt.backends.base import Backend
from tests.support.fake_tensorrt import FakeContext

FakeContext.alive = staticmethod(lambda ptr: allocated(ptr))  # bound buffers must outlive the enqueue

_state = threading.local()
_strict = [0]  # > 0 inside activated(): numpy functions on device arrays raise


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


#: address handed out by ``.data.ptr`` -> weak reference to the array owning that memory
_HANDED_OUT: dict[int, weakref.ref] = {}


def allocated(ptr: int) -> bool:
    """Whether the memory at ``ptr`` (an address from ``.data.ptr``) is still
    held by a live array: False once its owner was released (on a GPU, CuPy's
    pool could then hand it to another array before a queued kernel reads it)."""
    ref = _HANDED_OUT.get(ptr)
    return ref is not None and ref() is not None


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class DeviceArray(np.ndarray):
    """numpy memory standing in for a cupy array."""

    __module__ = "cupy._emulated"  # what segvol_rt.ops.dispatch.is_cupy looks at

    @property
    def data(self) -> Any:  # cupy: a MemoryPointer with .ptr
        ptr = self.ctypes.data
        _HANDED_OUT[ptr] = weakref.ref(_owner(self))
        return types.SimpleNamespace(ptr=ptr)

    def get(self) -> np.ndarray:
        """Download (cupy's ``ndarray.get``), counted."""
        TRANSFERS.downloads.append(int(self.nbytes))
        return np.array(self.view(np.ndarray), copy=True)

    def __array_function__(self, func, types_, args, kwargs):
        if _strict[0] and not getattr(_state, "depth", 0):
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


class _Pool:
    """Bytes 'held': everything ever uploaded or created, a stand-in high-water mark."""

    def total_bytes(self) -> int:
        return sum(TRANSFERS.uploads) + 1

    def used_bytes(self) -> int:
        return self.total_bytes()


def make() -> types.ModuleType:
    """A fresh fake ``cupy`` module with its own stream log ``cp.log``."""
    cp = types.ModuleType("cupy")
    log: list[tuple] = []
    ids = itertools.count(1000)
    current: list = []
    pool = _Pool()
    cp.log, cp.ndarray = log, DeviceArray
    cp.asarray = _upload(np.asarray)
    cp.array = _upload(np.array)
    cp.ascontiguousarray = _upload(np.ascontiguousarray)
    cp.asnumpy = lambda a: a.get() if isinstance(a, DeviceArray) else np.asarray(a)
    cp.get_default_memory_pool = lambda: pool

    class Event:
        def __init__(self, stream):
            self.stream = stream

    class Graph:
        def __init__(self, thunks):
            self.thunks = thunks

        def launch(self, stream=None):
            log.append(("graph.launch", stream.ptr))
            for thunk in self.thunks:
                thunk()

    class Stream:
        def __init__(self, non_blocking=False, ptr=None):
            self.ptr = next(ids) if ptr is None else ptr

        def record(self):
            log.append(("record", self.ptr))
            return Event(self)

        def wait_event(self, event):
            log.append(("wait_event", self.ptr, event.stream.ptr))

        def synchronize(self):
            log.append(("synchronize", self.ptr))
            TRANSFERS.syncs += 1

        def begin_capture(self):
            FakeContext.capturing[self.ptr] = []

        def end_capture(self):
            return Graph(FakeContext.capturing.pop(self.ptr))

        def __enter__(self):
            current.append(self)
            return self

        def __exit__(self, *exc):
            current.pop()

    null = Stream(ptr=0)

    class Device:
        def __init__(self, device_id=0):
            self.id = device_id

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    cp.cuda = types.SimpleNamespace(
        Stream=Stream,
        Device=Device,
        get_current_stream=lambda: current[-1] if current else null,
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
    """A :class:`segvol_rt.ops.cuda.Device` on the fake cupy and the CPU
    emulator of the kernels (fresh outputs poisoned: NaN / 0xAB), and that
    emulator module."""
    from segvol_rt.ops import cuda as gpu_ops
    from tests.support import kernel_emu as emu

    return gpu_ops.Device(xp=cp, kernel=emu.kernel, to_host=lambda a: a.get(), poison=True), emu


@contextlib.contextmanager
def activated(cp: types.ModuleType, device: Any) -> Any:
    """Inside the block ``import cupy`` gives ``cp``, gpu_ops runs on ``device``
    and numpy functions on device arrays raise."""
    import sys

    from segvol_rt.ops import cuda as gpu_ops

    missing = object()
    previous = sys.modules.get("cupy", missing)
    sys.modules["cupy"] = cp
    _strict[0] += 1
    try:
        with gpu_ops.use(device):
            yield cp
    finally:
        _strict[0] -= 1
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
