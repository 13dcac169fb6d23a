"""TensorRT backend: the three graphs as serialized engines (``segvol-rt build``),
run on CuPy device arrays and a CuPy stream.

Each engine is checked against the manifest before it is deserialized: its
file hash, and that it was built for this model, this graph, this GPU (name
and compute capability) and this TensorRT version
(:func:`segvol_rt.backends.tensorrt.engines.check_engine`). The graph specs are narrowed to the
engine's optimisation profile, so out-of-profile inputs fail validation with
a clear message.

A run sets every input's shape and address, allocates the outputs from the
shapes TensorRT infers, and enqueues ``execute_async_v3`` on the backend's
stream, ordered with the caller's stream (:mod:`.cuda_common`). Optionally the
image encoder at one fixed batch is captured once into a CUDA graph and
replayed (``cuda_graph_batch``; off by default).

Inputs and outputs are cupy arrays (``xp`` is cupy). tensorrt and cupy are
imported when a backend is created, never at module import.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.backends.base import Backend
from segvol_rt.backends.cuda_common import (
    device_inputs,
    empty_outputs,
    ordered_on,
    output_shapes,
    query_gpu,
    require_cupy,
)
from segvol_rt.backends.tensorrt import engines as E
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import Artifacts


@dataclass(frozen=True)
class _Bound:
    """The buffers bound to an execution context for one run: ``inputs`` as
    bound (cast copies included) and the ``outputs`` TensorRT writes."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


class _Engine:
    """One deserialized engine with an execution context, checked against its spec."""

    def __init__(self, trt: Any, runtime: Any, blob: bytes, spec: S.GraphSpec, label: str):
        self.trt = trt
        self.spec = spec
        self.engine = runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise SegVolError(f"TensorRT could not deserialize {label} (see the TensorRT log); {E.REBUILD_HINT}")
        self.context = self._new_context()
        self._check_io(label)

    def _new_context(self) -> Any:
        context = self.engine.create_execution_context()
        if context is None:
            raise SegVolError("TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def _check_io(self, label: str) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if sorted(inputs) != sorted(self.spec.input_names) or sorted(outputs) != sorted(self.spec.output_names):
            raise SegVolError(
                f"{label}: engine IO inputs={inputs} outputs={outputs} differ from the graph spec "
                f"inputs={self.spec.input_names} outputs={self.spec.output_names}; {E.REBUILD_HINT}"
            )
        # An engine may take int32 where the graph has int64 (older parsers
        # narrowed them); such inputs are cast, any other difference is an error.
        self.casts: dict[str, np.dtype] = {}
        for t in (*self.spec.inputs, *self.spec.outputs):
            got = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(t.name)))
            if got == np.dtype(t.dtype):
                continue
            if t in self.spec.inputs and (t.dtype, got) == ("int64", np.dtype(np.int32)):
                self.casts[t.name] = got
                continue
            raise SegVolError(
                f"{label}: tensor {t.name} is {got} in the engine, {t.dtype} in the spec; {E.REBUILD_HINT}"
            )

    def bind(self, context: Any, inputs: Mapping[str, Any], cp: Any) -> _Bound:
        """Set shapes and addresses of ``inputs`` on ``context``; allocate and
        bind outputs of the shapes TensorRT infers.

        Returns every bound buffer (the cast copies of inputs too): the caller
        keeps it until the enqueued run has read them, since a buffer released
        earlier goes back to CuPy's pool and may be handed out before the
        engine reads it."""
        bound = {name: self._cast(name, arr) for name, arr in inputs.items()}
        for name, arr in bound.items():
            if not context.set_input_shape(name, tuple(arr.shape)):
                raise SegVolError(f"{self.spec.name}: TensorRT rejects {name} of shape {tuple(arr.shape)}")
            context.set_tensor_address(name, arr.data.ptr)
        expected = output_shapes(self.spec, bound)
        shapes = {}
        for name in self.spec.output_names:
            shapes[name] = tuple(context.get_tensor_shape(name))
            if shapes[name] != expected[name]:
                raise RuntimeError(
                    f"{self.spec.name}.{name}: TensorRT infers {shapes[name]}, the spec {expected[name]}"
                )
        outputs = empty_outputs(cp, self.spec, shapes)
        for name, arr in outputs.items():
            context.set_tensor_address(name, arr.data.ptr)
        return _Bound(bound, outputs)

    def _cast(self, name: str, arr: Any) -> Any:
        """``arr`` as the engine's dtype for ``name``: itself when it already is."""
        want = self.casts.get(name)
        return arr if want is None or arr.dtype == want else arr.astype(want)

    def enqueue(self, context: Any, stream: Any) -> None:
        if not context.execute_async_v3(stream.ptr):
            raise RuntimeError(f"{self.spec.name}: TensorRT execute_async_v3 failed (see the TensorRT log)")


class _GraphReplay:
    """The image encoder at one fixed batch, captured once into a CUDA graph.

    Uses its own execution context and static input/output buffers (the
    captured kernels have these addresses baked in). Each call copies the
    input into the static buffer, replays, and returns a copy of the output,
    since the next replay overwrites the static one.
    """

    def __init__(self, engine: _Engine, batch: int):
        self.engine = engine
        self.batch = batch
        self.context = None
        self.graph = None
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}

    def matches(self, feeds: Mapping[str, Any]) -> bool:
        return all(arr.shape[0] == self.batch for arr in feeds.values())

    def run(self, cp: Any, stream: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if self.graph is None:
            self._capture(cp, stream, feeds)
        for name, arr in feeds.items():
            cp.copyto(self.inputs[name], arr)
        if self.graph is None:
            raise RuntimeError("CUDA graph capture produced no graph")
        self.graph.launch(stream)
        return {name: arr.copy() for name, arr in self.outputs.items()}

    def _capture(self, cp: Any, stream: Any, feeds: Mapping[str, Any]) -> None:
        self.context = self.engine._new_context()
        casts = self.engine.casts
        static = {name: cp.empty(arr.shape, casts.get(name, arr.dtype)) for name, arr in feeds.items()}
        bound = self.engine.bind(self.context, static, cp)
        # the captured kernels read these addresses on every replay: keep them
        self.inputs, self.outputs = bound.inputs, bound.outputs
        # One plain run first: TensorRT finishes shape-dependent setup outside the capture.
        self.engine.enqueue(self.context, stream)
        stream.begin_capture()
        try:
            self.engine.enqueue(self.context, stream)
        finally:
            graph = stream.end_capture()
        self.graph = graph


class TensorRTBackend(Backend):
    """Runs the engines recorded in an artifacts directory's manifest.

    Args:
        artifacts: the artifacts (with engines built by ``segvol-rt build``).
        device_id: CUDA device to run on.
        cuda_graph_batch: capture the image encoder at this batch into a CUDA
            graph and replay it for inputs of that batch (None: never).
        precision: ``"fp32"`` or ``"fp16"``: refuse engines of another precision
            (None: run the engines as built).
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, artifacts: Artifacts, device_id: int = 0, cuda_graph_batch: int | None = None,
                 precision: str | None = None):
        self.records = _records_for(artifacts, precision)
        self._trt = require("tensorrt")
        self._cp = require_cupy(device_id)
        self.gpu = query_gpu(device_id)
        self._device = self._cp.cuda.Device(device_id)
        specs = {g: E.spec_for_profiles(artifacts.specs[g], r.profiles) for g, r in self.records.items()}
        super().__init__(specs)
        with self._device:
            self.stream = self._cp.cuda.Stream(non_blocking=True)
            self._logger = self._trt.Logger(self._trt.Logger.WARNING)
            self._runtime = self._trt.Runtime(self._logger)
            self._engines = {g: self._load(artifacts, g) for g in S.GRAPH_NAMES}
        self._replay = _GraphReplay(self._engines[S.IMAGE_ENCODER], cuda_graph_batch) if cuda_graph_batch else None
        self._in_flight: dict[str, _Bound] = {}

    @classmethod
    def load(cls, root: str | Path, **kwargs: Any) -> TensorRTBackend:
        return cls(Artifacts.load(root), **kwargs)

    @property
    def xp(self) -> Any:
        return self._cp

    @property
    def precision(self) -> str:  # type: ignore[override]
        return "/".join(sorted({r.precision for r in self.records.values()}))

    @property
    def device_memory_bytes(self) -> dict[str, int]:
        """Device memory each engine's execution context needs, by graph."""
        return {g: E.device_memory_bytes(e.engine) for g, e in self._engines.items()}

    def describe(self) -> str:
        return f"tensorrt {self._trt.__version__} (cuda: {self.gpu.name}, {self.precision})"

    def _load(self, artifacts: Artifacts, graph: str) -> _Engine:
        record = self.records[graph]
        model_sha, graph_sha = E.artifact_hashes(artifacts.manifest, graph, record.graph_variant)
        E.check_engine(
            record,
            model_sha256=model_sha,
            graph_sha256=graph_sha,
            tensorrt_version=self._trt.__version__,
            gpu=self.gpu,
        )
        path = artifacts.root / record.file
        if not path.is_file():
            raise SegVolError(f"engine {path} is listed in the manifest but missing; {E.REBUILD_HINT}")
        data = path.read_bytes()  # hashed as read: TensorRT deserializes exactly the bytes checked
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise SegVolError(
                f"engine {path} does not match its manifest sha256 (changed or damaged); {E.REBUILD_HINT}"
            )
        return _Engine(self._trt, self._runtime, data, self.specs[graph], str(path))

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        cp, engine = self._cp, self._engines[graph]
        with self._device, ordered_on(cp, self.stream) as stream:
            inputs = device_inputs(cp, engine.spec, feeds)
            if graph == S.IMAGE_ENCODER and self._replay is not None and self._replay.matches(inputs):
                try:
                    return self._replay.run(cp, stream, inputs)
                except Exception as exc:  # noqa: BLE001 - capture is an optimisation; fall back to plain runs
                    warnings.warn(f"CUDA graph capture of the image encoder failed ({exc}); running without it", stacklevel=2)
                    self._replay = None
            bound = engine.bind(engine.context, inputs, cp)
            engine.enqueue(engine.context, stream)
            # Every bound buffer (cast copies too) stays referenced until the next
            # run of this graph is enqueued on the same stream, which orders it
            # after this one: their memory cannot be reused while this run reads it.
            self._in_flight[graph] = bound
            return bound.outputs

    def close(self) -> None:
        self._replay = None
        self._engines = {}
        self._in_flight = {}


def _records_for(artifacts: Artifacts, precision: str | None = None) -> dict[str, E.EngineRecord]:
    """The engine records of all three graphs, all of ``precision`` when given."""
    records = E.engine_records(artifacts.manifest)
    missing = [g for g in S.GRAPH_NAMES if g not in records]
    if missing:
        raise SegVolError(
            f"{artifacts.root} has no TensorRT engine for {missing}; "
            f"build them: segvol-rt build --artifacts {artifacts.root}"
        )
    other = sorted(g for g, r in records.items() if precision is not None and r.precision != precision)
    if other:
        built = ", ".join(f"{g} {records[g].precision}" for g in other)
        raise SegVolError(
            f"the TensorRT engines of {artifacts.root} are not {precision} ({built}); "
            f"build them: segvol-rt build --precision {precision} --artifacts {artifacts.root}"
        )
    return records
