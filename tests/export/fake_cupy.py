"""A FAKE ``cupy`` for CPU tests of the CUDA backends' plumbing: host numpy
arrays whose ``.data.ptr`` is their host address, streams that log
``record``/``wait_event``/capture, and CUDA graphs that replay the fake
TensorRT executions captured on them. Nothing runs on a GPU."""

from __future__ import annotations

import itertools
import types

import numpy as np
from fake_tensorrt import FakeContext


class ndarray(np.ndarray):  # noqa: N801 - mirrors cupy.ndarray
    @property
    def data(self):  # cupy: a MemoryPointer with .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)


def make() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    log: list[tuple] = []
    ids = itertools.count(1000)
    current: list = []
    cp.log, cp.ndarray = log, ndarray

    def wrap(a):
        return np.asarray(a).view(ndarray)

    cp.asarray = lambda a, dtype=None: wrap(np.asarray(a, dtype=dtype))
    cp.ascontiguousarray = lambda a: wrap(np.ascontiguousarray(a))
    cp.empty = lambda shape, dtype=np.float32: wrap(np.empty(shape, dtype))
    cp.empty_like = lambda a: wrap(np.empty_like(a))
    cp.copyto = np.copyto
    cp.asnumpy = np.asarray

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
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
    )
    return cp
