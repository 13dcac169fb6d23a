"""FAKE, strict ``tensorrt`` modules for CPU tests of our builder and runner.

:func:`make` returns a fresh module with *one major version's* documented
Python API surface, ``make(10)`` (TensorRT 10.x) or ``make(11)`` (TensorRT
11.x), and nothing more: a name the version lacks raises ``AttributeError``
when touched, as the real bindings do. Every call is recorded in
``module.calls``. Nothing is parsed, built or executed on a GPU: the tests
check that we call the documented API of each version the right way.

The surfaces, from NVIDIA's pages:

* TensorRT 10.x Python API reference, ``Core/Builder.html``
  (``NetworkDefinitionCreationFlag``: ``EXPLICIT_BATCH`` "[DEPRECATED] Ignored
  because networks are always explicit batch", ``STRONGLY_TYPED``; ``BuilderFlag``
  with ``FP16``, ``BF16``, ``INT8``, ``FP8``, ``INT4``, ``OBEY_PRECISION_CONSTRAINTS``,
  ``PREFER_PRECISION_CONSTRAINTS``, ``DIRECT_IO``, ...), ``Core/Engine.html``
  (``ICudaEngine.device_memory_size`` and, from 10.1, ``device_memory_size_v2``),
  ``Graph/Layers.html`` (``ILayer.precision``, ``ILayer.set_output_type``);
  docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html.
  PyPI's ``tensorrt-stubs`` 10.13 types the same names:
  tests/export/test_fake_tensorrt_surface.py checks every name we use, the
  10.x flag names and the enum values against it (.ci/setup-tensorrt-stubs.sh).
* "Migrating from TensorRT 10.x to 11.x" and its "Removed Python APIs and
  Replacements" page (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/
  tensorrt-10x-to-11x-python-api-reference.html): removed are
  ``BuilderFlag.FP16``/``BF16``/``INT8``/``FP8``/``INT4``/``FP4``,
  ``OBEY_PRECISION_CONSTRAINTS``, ``PREFER_PRECISION_CONSTRAINTS``, ``DIRECT_IO``,
  the weak-typing layer APIs (``ILayer.precision``, ``ILayer.set_output_type``)
  and ``ICudaEngine.device_memory_size`` (use ``device_memory_size_v2``). The 11.0
  Python reference (11.0.0/_static/python-api/infer/Core/Engine.html) lists
  ``device_memory_size_v2`` only; ``NetworkDefinitionCreationFlag`` keeps
  ``STRONGLY_TYPED`` (value 0, accepted and ignored: strong typing is always on)
  and has no ``EXPLICIT_BATCH``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path

import numpy as np

VERSIONS = {10: "10.99.0-FAKE", 11: "11.99.0-FAKE"}


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


# BuilderFlag members common to 10.x and 11.x (the weak-typing ones are 10.x only).
_COMMON_FLAGS = [
    "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE",
    "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "STRIP_PLAN", "REFIT_IDENTICAL",
    "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "EDITABLE_TIMING_CACHE",
    "DISTRIBUTIVE_INDEPENDENCE",
]
REMOVED_IN_11_FLAGS = [
    "FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
    "DIRECT_IO",
]
BuilderFlag10 = enum.IntEnum("BuilderFlag", [*REMOVED_IN_11_FLAGS, *_COMMON_FLAGS])  # type: ignore[misc]
BuilderFlag11 = enum.IntEnum("BuilderFlag", _COMMON_FLAGS)  # type: ignore[misc]


class NetworkDefinitionCreationFlag10(enum.IntEnum):
    """Values as tensorrt-stubs 10.13 gives them (tests/export/test_fake_tensorrt_surface.py checks)."""

    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1
    PREFER_JIT_PYTHON_PLUGINS = 2
    PREFER_AOT_PYTHON_PLUGINS = 3


class NetworkDefinitionCreationFlag11(enum.IntEnum):
    """11.x: ``kSTRONGLY_TYPED = 0``, deprecated and ignored (strong typing is always on),
    as the 11.x headers declare it; the plugin-preference members are left out (unverified)."""

    STRONGLY_TYPED = 0


class ILayer11:
    """A network layer as 11.x has it: strongly typed, no precision or output-type setters."""

    def __init__(self, calls, name, dtype=DataType.FLOAT):
        self._calls = calls
        self.name = name
        self._outputs = [FakeTensor(dtype)]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, i):
        return self._outputs[i]


class ILayer10(ILayer11):
    """10.x also documents the weak-typing setters (refused in a strongly typed
    network: the fake records the call and the network's build fails)."""

    @property
    def precision(self):
        return DataType.FLOAT

    @precision.setter
    def precision(self, value):
        self._calls.append(("layer.precision", self.name, value))

    def set_output_type(self, i, dtype):
        self._calls.append(("layer.set_output_type", self.name, i, dtype))


class FakeTensor:
    def __init__(self, dtype: DataType):
        self.dtype = dtype


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


def make(major: int = 10) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module of TensorRT ``major`` (10 or 11) with its own call log."""
    if major not in VERSIONS:
        raise ValueError(f"no fake for TensorRT {major}")
    calls: list[tuple] = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSIONS[major]
    trt.calls = calls
    flags_enum = NetworkDefinitionCreationFlag10 if major == 10 else NetworkDefinitionCreationFlag11
    trt.NetworkDefinitionCreationFlag = flags_enum
    trt.BuilderFlag = BuilderFlag10 if major == 10 else BuilderFlag11
    trt.TensorIOMode, trt.MemoryPoolType, trt.DataType = TensorIOMode, MemoryPoolType, DataType
    trt.ILayer = ILayer10 if major == 10 else ILayer11
    trt.float32, trt.float16, trt.int32, trt.int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64
    trt.bfloat16, trt.int8, trt.bool, trt.uint8 = DataType.BF16, DataType.INT8, DataType.BOOL, DataType.UINT8
    known_bits = sum(1 << int(f) for f in flags_enum)

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, level):
            calls.append(("Logger", level))

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.layers: list = []
            self.source = b""

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        def get_flag(self, flag):
            return bool(self.flags & (1 << int(flag)))

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
            self.network.layers = [trt.ILayer(calls, "/norm/LayerNormalization"), trt.ILayer(calls, "/attn/MatMul")]
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
            self.flags: set = set()

        def set_memory_pool_limit(self, pool, size):
            calls.append(("config.set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            if not isinstance(flag, trt.BuilderFlag):
                raise TypeError(f"set_flag(): incompatible function arguments ({flag!r})")
            calls.append(("config.set_flag", flag))
            self.flags.add(flag.name)

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

        def create_network(self, flags=0):
            if flags & ~known_bits:
                raise ValueError(f"create_network: unknown NetworkDefinitionCreationFlag bits {flags:#x}")
            calls.append(("builder.create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            calls.append(("builder.create_builder_config",))
            return Config()

        def create_optimization_profile(self):
            calls.append(("builder.create_optimization_profile",))
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("builder.build_serialized_network",))
            strongly = network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) or major >= 11
            weak = {"FP16", "BF16", "INT8", "FP8", "INT4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
            pinned = any(c[0] in ("layer.precision", "layer.set_output_type") for c in calls)
            if strongly and (config.flags & weak or pinned):
                return None  # TensorRT logs "... not allowed in a strongly typed network" and builds nothing
            return memoryview(b"FAKE-SERIALIZED-ENGINE/" + network.source)

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.Runtime = lambda logger: FakeRuntime(calls, major)
    trt.nptype = lambda dtype: {
        DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64,
        DataType.BOOL: np.bool_, DataType.INT8: np.int8, DataType.UINT8: np.uint8,
    }[dtype]
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
    def __init__(self, calls, major: int = 10):
        self.calls, self.major = calls, major

    def deserialize_cuda_engine(self, blob):
        self.calls.append(("runtime.deserialize_cuda_engine",))
        head = b"FAKE-SERIALIZED-ENGINE/"
        if not bytes(blob).startswith(head):
            return None
        from segvol_rt.io.spec import spec_from_dict

        cls = FakeEngine10 if self.major == 10 else FakeEngine
        return cls(self.calls, spec_from_dict(json.loads(bytes(blob)[len(head):])))


class FakeEngine:
    """``ICudaEngine`` as 11.x has it (``device_memory_size_v2`` only)."""

    def __init__(self, calls, spec):
        self.calls, self.spec = calls, spec
        self.tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}

    @property
    def device_memory_size_v2(self):
        return 1 << 20

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


class FakeEngine10(FakeEngine):
    """10.x: also the older ``device_memory_size`` (deprecated in 10.1, removed in 11)."""

    @property
    def device_memory_size(self):
        return 1 << 20


class FakeContext:
    """Records shapes and addresses; executes (or, on a capturing stream, is
    recorded into the capture) by reading inputs from and writing outputs to
    the bound addresses."""

    capturing: dict = {}  # stream ptr -> list of captured thunks (shared with fake_cupy)
    #: address -> still allocated? (fake_cupy installs its check; plain numpy memory: always)
    alive = staticmethod(lambda ptr: True)

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
        self._check_alive("enqueue", self.addresses)
        snapshot = (dict(self.shapes), dict(self.addresses))
        thunk = lambda: self._execute(*snapshot)  # noqa: E731
        if stream_ptr in FakeContext.capturing:
            FakeContext.capturing[stream_ptr].append(thunk)
        else:
            thunk()
        return True

    def _check_alive(self, when: str, addresses: dict) -> None:
        """Every bound address must still be allocated: the engine reads them later, on its stream."""
        freed = sorted(name for name, ptr in addresses.items() if not FakeContext.alive(ptr))
        if freed:
            raise RuntimeError(f"{self.spec.name}: bound buffers {freed} were released before {when}")

    def _execute(self, shapes, addresses):
        self._check_alive("execution", addresses)
        inputs = {t.name: _view(addresses[t.name], shapes[t.name], self.dtypes[t.name]).copy() for t in self.spec.inputs}
        for name, value in fake_outputs(self.spec, inputs).items():
            _view(addresses[name], value.shape, value.dtype)[...] = value
