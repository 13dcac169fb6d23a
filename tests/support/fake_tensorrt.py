"""A FAKE, minimal ``tensorrt`` module for CPU tests of our builder wiring.

It implements only the TensorRT 10 Python API surface that
``segvol_rt.backends.tensorrt.build`` calls, records every call in
``module.calls`` and returns plausible objects. It builds nothing: tests
using it check that we call the documented API in the right order with the
right profile shapes, NOT that TensorRT accepts our graphs.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path

import numpy as np


class LayerType(enum.Enum):
    NORMALIZATION = 1
    SOFTMAX = 2
    REDUCE = 3
    ELEMENTWISE = 4
    UNARY = 5
    MATRIX_MULTIPLY = 6
    SHUFFLE = 7


class ElementWiseOperation(enum.Enum):
    SUM = 0
    PROD = 1
    DIV = 2
    POW = 3


class UnaryOperation(enum.Enum):
    EXP = 0
    SQRT = 1


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 2
    INT64 = 3


class TensorIOMode(enum.Enum):
    INPUT = 0
    OUTPUT = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.Enum):
    FP16 = 0
    OBEY_PRECISION_CONSTRAINTS = 1


class FakeTensor:
    def __init__(self, dtype: DataType):
        self.dtype = dtype


class ILayer:
    def __init__(self, calls, name, type_, dtype=DataType.FLOAT, op=None):
        self._calls = calls
        self.name = name
        self.type = type_
        self._op = op
        self._outputs = [FakeTensor(dtype)]
        self._precision = None

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, i):
        return self._outputs[i]

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, value):
        self._calls.append(("layer.precision", self.name, value))
        self._precision = value

    def set_output_type(self, i, dtype):
        self._calls.append(("layer.set_output_type", self.name, i, dtype))
        self._outputs[i].dtype = dtype


class IElementWiseLayer(ILayer):
    @property
    def op(self):
        return self._op


class IUnaryLayer(ILayer):
    @property
    def op(self):
        return self._op


class ParserError:
    def __init__(self, node, name, op, desc):
        self._v = (node, name, op, desc)

    def node(self):
        return self._v[0]

    def node_name(self):
        return self._v[1]

    def node_operator(self):
        return self._v[2]

    def desc(self):
        return self._v[3]


def make(version: str = "10.99.0-FAKE") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module with its own call log."""
    calls: list[tuple] = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls
    for cls in (LayerType, TensorIOMode, ElementWiseOperation, UnaryOperation, MemoryPoolType, BuilderFlag, IElementWiseLayer, IUnaryLayer):
        setattr(trt, cls.__name__, cls)
    trt.float32, trt.float16, trt.int32, trt.int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level):
            calls.append(("Logger", level))

    class Network:
        def __init__(self):
            self.layers = []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            layer = self.layers[i]
            base = ILayer.__new__(ILayer)  # get_layer hands out the generic ILayer, as TensorRT does
            base.__dict__ = layer.__dict__
            return base

    class OnnxParser:
        def __init__(self, network, logger):
            calls.append(("OnnxParser",))
            self.network = network
            self.errors = []

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name))
            if b"BROKEN" in Path(path).read_bytes():
                self.errors = [ParserError(7, "/blocks.0/attn/Einsum", "Einsum", "unsupported equation")]
                return False
            self.network.source = Path(path).read_bytes()
            f, i64 = DataType.FLOAT, DataType.INT64
            self.network.layers = [
                ILayer(calls, "/norm/LayerNormalization", LayerType.NORMALIZATION),
                ILayer(calls, "/attn/Softmax", LayerType.SOFTMAX),
                ILayer(calls, "/attn/MatMul", LayerType.MATRIX_MULTIPLY),
                ILayer(calls, "/pe/ReduceMean", LayerType.REDUCE),
                IElementWiseLayer(calls, "node_7", LayerType.ELEMENTWISE, f, ElementWiseOperation.POW),
                IElementWiseLayer(calls, "/attn/Add", LayerType.ELEMENTWISE, f, ElementWiseOperation.SUM),
                IElementWiseLayer(calls, "/shape/Div", LayerType.ELEMENTWISE, i64, ElementWiseOperation.DIV),
                IElementWiseLayer(calls, "/pe/Div", LayerType.ELEMENTWISE, f, ElementWiseOperation.DIV),
                IUnaryLayer(calls, "/norm/Sqrt", LayerType.UNARY, f, UnaryOperation.SQRT),
                IUnaryLayer(calls, "/act/Exp", LayerType.UNARY, f, UnaryOperation.EXP),
                ILayer(calls, "/reshape", LayerType.SHUFFLE),
            ]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return memoryview(self.blob + b"+timed")

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("config.set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("config.set_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("config.add_optimization_profile",))
            return 0

        def create_timing_cache(self, blob):
            calls.append(("config.create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("config.set_timing_cache", ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self):
            calls.append(("config.get_timing_cache",))
            return self.cache

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("builder.create_network", flags))
            return Network()

        def create_builder_config(self):
            calls.append(("builder.create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("builder.create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("builder.build_serialized_network",))
            return memoryview(b"FAKE-SERIALIZED-ENGINE/" + network.source)

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.Runtime = lambda logger: FakeRuntime(calls)
    trt.nptype = lambda dtype: {DataType.FLOAT: np.float32, DataType.INT32: np.int32, DataType.INT64: np.int64}[dtype]
    return trt


# -- runtime: engines whose "graph" is a GraphSpec dict -------------------------
_DTYPES = {"float32": DataType.FLOAT, "int32": DataType.INT32, "int64": DataType.INT64}


def _view(ptr: int, shape, dtype) -> np.ndarray:
    """The array at a raw address (the fake's stand-in for device memory)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


def fake_outputs(spec, inputs: dict) -> dict:
    """What a fake engine computes: every output element of batch row b is the
    sum of all inputs' row b (so each input must be bound at the right address)."""
    rows = sum(np.asarray(a, np.float64).reshape(a.shape[0], -1).sum(1) for a in inputs.values())
    dims = {}
    for t in spec.inputs:
        for i, axis in t.dynamic_axes().items():
            dims[axis] = inputs[t.name].shape[i]
    out = {}
    for t in spec.outputs:
        shape = t.resolve(dims)
        out[t.name] = np.broadcast_to(rows.reshape(-1, *[1] * (len(shape) - 1)), shape).astype(t.dtype)
    return out


class FakeRuntime:
    def __init__(self, calls):
        self.calls = calls

    def deserialize_cuda_engine(self, blob):
        self.calls.append(("runtime.deserialize_cuda_engine",))
        head = b"FAKE-SERIALIZED-ENGINE/"
        if not bytes(blob).startswith(head):
            return None
        from segvol_rt.io.spec import spec_from_dict

        return FakeEngine(self.calls, spec_from_dict(json.loads(bytes(blob)[len(head):])))


class FakeEngine:
    def __init__(self, calls, spec):
        self.calls, self.spec = calls, spec
        self.tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.spec.input_names else TensorIOMode.OUTPUT

    narrowed: set = set()  # tensor names this fake engine takes as int32 instead of int64

    def get_tensor_dtype(self, name):
        return DataType.INT32 if name in self.narrowed else _DTYPES[self.tensors[name].dtype]

    def create_execution_context(self):
        self.calls.append(("engine.create_execution_context", self.spec.name))
        dtypes = {name: "int32" if name in self.narrowed else t.dtype for name, t in self.tensors.items()}
        return FakeContext(self.calls, self.spec, dtypes)


class FakeContext:
    """Records shapes and addresses; executes (or, on a capturing stream, is
    recorded into the capture) by reading inputs from and writing outputs to
    the bound addresses."""

    capturing: dict = {}  # stream ptr -> list of captured thunks (shared with fake_cupy)

    def __init__(self, calls, spec, dtypes):
        self.calls, self.spec, self.dtypes = calls, spec, dtypes
        self.shapes, self.addresses = {}, {}

    def set_input_shape(self, name, shape):
        self.calls.append(("context.set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.calls.append(("context.set_tensor_address", name))
        self.addresses[name] = ptr

    def get_tensor_shape(self, name):
        views = {t.name: np.zeros(self.shapes[t.name], t.dtype) for t in self.spec.inputs}
        return fake_outputs(self.spec, views)[name].shape

    def execute_async_v3(self, stream_ptr):
        self.calls.append(("context.execute_async_v3", self.spec.name, stream_ptr))
        snapshot = (dict(self.shapes), dict(self.addresses))
        thunk = lambda: self._execute(*snapshot)  # noqa: E731
        if stream_ptr in FakeContext.capturing:
            FakeContext.capturing[stream_ptr].append(thunk)
        else:
            thunk()
        return True

    def _execute(self, shapes, addresses):
        inputs = {t.name: _view(addresses[t.name], shapes[t.name], self.dtypes[t.name]).copy() for t in self.spec.inputs}
        for name, value in fake_outputs(self.spec, inputs).items():
            _view(addresses[name], value.shape, value.dtype)[...] = value
