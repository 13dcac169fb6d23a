"""ONNX Runtime backend: one inference session per graph of an artifacts directory.

``device="cpu"`` uses the CPU execution provider; ``device="cuda"`` the CUDA
provider of onnxruntime-gpu with numpy arrays in and out (every call copies
through the host). The runtime's CUDA path uses
:class:`segvol_rt.backends.ort_cuda.OrtCudaBackend` instead (IO binding on
CuPy memory; :func:`segvol_rt.backends.select.open_backend` picks it).
A CUDA request that cannot be met is a :class:`SegVolError` naming what is
missing; there is no silent fallback to the CPU.

Opening a graph (:func:`open_session`) turns ONNX Runtime's load errors
(``InvalidProtobuf``, ``INVALID_GRAPH``, ...) into one line naming the file,
and checks the session's inputs and outputs against the graph's spec
(:func:`check_session_io`): a truncated, foreign or swapped graph is refused
when it is opened, not when it first runs.

Memory. The text encoder's session is opened on the first
:meth:`~segvol_rt.backends.base.Backend.encode_text`, i.e. only when a
phrase outside the artifacts' text table needs it (the runtime looks table
names up first); at full size its weights are about 250 MB. The session
options are :data:`SESSION_MEMORY` (measured choices; see its comment).
Opening a graph leaves free memory in the C heap (the parsed protobuf, the
staged initializers), handed back after each open
(:func:`segvol_rt.backends.resident.trim_heap`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segvol_rt._optional import require
from segvol_rt._system import cpu_cores
from segvol_rt.backends.base import Backend
from segvol_rt.backends.resident import trim_heap
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S

if TYPE_CHECKING:
    from segvol_rt.io.artifacts import Artifacts

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_problem(ort: Any | None = None) -> str | None:
    """Why ONNX Runtime cannot use CUDA here, or None when it can (provider present)."""
    if ort is None:
        try:
            ort = require("onnxruntime")
        except SegVolError as exc:
            return str(exc)
    if CUDA_PROVIDER not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
            "(install onnxruntime-gpu: pip install 'segvol-rt[gpu]')"
        )
    return None


# Graphs whose session opens on first use rather than with the backend.
LAZY_GRAPHS = frozenset({S.TEXT_ENCODER})

# Rows per call on the CPU (Backend.cpu_batches), measured (benchmarks/cpu_batch.py):
# the prompt decoder at batch 1. Full size, random weights, --text aorta: on a Xeon
# with a real 120x126x164 CT, peak RSS 2.6 GB at batch 8 against 1.48 GB at batch 1
# (ONNX Runtime's arena keeps what batch 8 needed), decode 7.6 s -> 3.9 s, the same
# mask; on a shared 2-core EPYC with ../shared/data's CT at 1.5 mm, 1344 -> 1318 MiB,
# the same mask, decode time within noise. The C++ SDK's policy is the same
# (cpp/src/runtime.cpp, dec_batch_, from cpp/src/generated/shared_constants.hpp).
CPU_BATCHES = {S.PROMPT_DECODER: 1}

# ONNX Runtime element types (NodeArg.type) -> numpy dtype names of the specs.
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class SessionMemory:
    """Memory-related ONNX Runtime session options.

    ``arena``: the CPU memory arena (``enable_cpu_mem_arena``); ``mem_pattern``:
    preplanned activation buffers (``enable_mem_pattern``); ``prepacking``:
    weight prepacking (session config ``session.disable_prepacking`` is its
    inverse), which keeps a second, repacked copy of the MatMul/Conv weights;
    ``shrink_arena``: the arena gives its unused regions back at the end of
    every run (run option ``memory.enable_memory_arena_shrinkage`` on
    ``cpu:0``; no effect without the arena), and the C heap is trimmed after
    it (:func:`segvol_rt.backends.resident.trim_heap`); ``shared_arena``: the
    sessions share one CPU arena registered with ONNX Runtime's environment
    (:func:`register_shared_arena`, session config ``session.use_env_allocators``),
    whose regions are the size asked for rather than the next power of two."""

    arena: bool = True
    mem_pattern: bool = True
    prepacking: bool = True
    shrink_arena: bool = False
    shared_arena: bool = False


# Default options (see SessionMemory), measured at full size on 2 CPU cores (ONNX
# Runtime 1.32, one intra-op thread, CPU seconds per run: median/min of 12):
# image encoder peak RSS 1476 MiB -> 1034 MiB without the memory pattern (3.34/2.91 s
# -> 3.07/2.90 s); prepacking off saves another 171 MiB but costs 5-7% (3.39/3.07 s)
# and makes results depend on the batch (a phrase encoded alone and beside another
# differ in the last bit), so it stays on; the arena off saves nothing beside the
# pattern off and runs slower. The prompt decoder: 432 -> 361 MiB without the
# pattern, same latency. Outputs are bit-identical with and without the pattern.
# Arena shrinkage: each session has an arena of its own that keeps the high-water
# mark of its runs, so without it the whole process peaked at the image encoder's
# activations (444 MiB) plus the prompt decoder's (132 MiB) plus the weights; with it
# each run gives its activations back at its end. Measured on the whole `segvol-rt
# infer` (../shared/data's CT at 1.5 mm, full size, random weights, --text aorta,
# shared 2-core EPYC, benchmarks/rss_stages.py): peak RSS 1309 -> 1156 MiB, the same
# mask, segment time within noise (16.0 vs 16.6 s; reallocating per run is page
# faults, small beside a 3-8 s window). One shared arena whose regions are the size
# asked for (the image encoder's attention scores are 192 MiB tensors; power-of-two
# regions spread them over more touched pages): cpu_tier's ct case, whole process,
# 1120 -> 1072 MiB, wall time the same (25.3 vs 25.5 s), the same mask.
SESSION_MEMORY = SessionMemory(arena=True, mem_pattern=False, prepacking=True, shrink_arena=True, shared_arena=True)

_shared_arena_lock = threading.Lock()
_shared_arena: list[bool] = []


def register_shared_arena(ort: Any) -> None:
    """Register the process's shared CPU arena with ONNX Runtime's environment, once:
    regions of exactly the requested size (``arena_extend_strategy`` 1)."""
    with _shared_arena_lock:
        if _shared_arena:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
        _shared_arena.append(True)


def session_options(ort: Any, threads: int | None = None, memory: SessionMemory = SESSION_MEMORY) -> Any:
    """``onnxruntime.SessionOptions`` for one graph: all graph optimisations,
    errors-only logging, ``threads`` intra-op threads and the ``memory`` choices."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT's warnings are noise to users
    options.enable_cpu_mem_arena = memory.arena
    options.enable_mem_pattern = memory.mem_pattern
    if not memory.prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if memory.arena and memory.shared_arena:
        register_shared_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def run_options(ort: Any, memory: SessionMemory = SESSION_MEMORY) -> Any:
    """``onnxruntime.RunOptions`` of every run: the CPU arena shrunk at its end
    when ``memory`` asks (and has an arena); None: ONNX Runtime's defaults."""
    if not (memory.arena and memory.shrink_arena):
        return None
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def open_session(ort: Any, path: Path, graph: str, options: Any, providers: list[Any]) -> Any:
    """``ort.InferenceSession`` of ``path``; a missing file or ORT's load errors
    (InvalidProtobuf, INVALID_GRAPH, ...) become one line naming the file."""
    if not path.is_file():
        raise SegVolError(f"{path} is missing; export the artifacts again")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind11 exception types
        reason = " ".join(str(exc).split())
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise SegVolError(
            f"cannot open the {graph} graph {path} ({exc.__class__.__name__}: {reason}); "
            "it is not a valid ONNX graph for this onnxruntime - export the artifacts again"
        ) from exc


def _io_problem(args: list[Any], tensors: tuple[S.TensorSpec, ...], kind: str) -> str | None:
    """What differs between a session's inputs or outputs and the spec's."""
    found = {a.name: a for a in args}
    if set(found) != {t.name for t in tensors}:
        return f"{kind}s {sorted(found)}, the spec has {sorted(t.name for t in tensors)}"
    for t in tensors:
        arg = found[t.name]
        dtype = _ORT_TYPES.get(arg.type, arg.type)
        if dtype != t.dtype:
            return f"{kind} {t.name} is {dtype}, the spec says {t.dtype}"
        shape = list(arg.shape) if arg.shape is not None else None
        if shape is None or len(shape) != len(t.shape):
            return f"{kind} {t.name} has shape {shape}, the spec says {list(t.shape)} (axes {list(t.axes)})"
        for axis, want, got in zip(t.axes, t.shape, shape):
            # a fixed spec size may be symbolic in the graph; a dynamic one must not be fixed
            if isinstance(want, int) and isinstance(got, int) and got != want:
                return f"{kind} {t.name} has {axis}={got}, the spec says {want}"
            if isinstance(want, str) and isinstance(got, int):
                return f"{kind} {t.name} has a fixed {axis}={got}, the spec makes it dynamic"
    return None


def check_session_io(session: Any, spec: S.GraphSpec, path: Path, specs: Mapping[str, S.GraphSpec] | None = None) -> None:
    """Refuse a session whose inputs/outputs (names, dtypes, ranks, fixed sizes)
    are not those of ``spec``. With all ``specs``, name the graph it looks like."""
    problem = _io_problem(session.get_inputs(), spec.inputs, "input") or _io_problem(
        session.get_outputs(), spec.outputs, "output"
    )
    if problem is None:
        return
    names = {a.name for a in session.get_inputs()}
    twin = next((g for g, sp in (specs or {}).items() if g != spec.name and names == set(sp.input_names)), None)
    hint = f"; it looks like the {twin} graph" if twin else ""
    raise SegVolError(
        f"{path} is not the {spec.name} graph its spec describes ({problem}){hint}; export the artifacts again"
    )


class OnnxRuntimeBackend(Backend):
    """Runs the three ONNX graphs with ONNX Runtime.

    Args:
        artifacts: a loaded :class:`segvol_rt.io.artifacts.Artifacts`.
        device: ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads (default: all cores of this process).
        memory: the sessions' memory options, for every graph (default :data:`SESSION_MEMORY`).
        precision: the graph variant, ``"fp32"`` (the exported graphs) or ``"fp16"``
            (their fp16 variants from ``export --precision fp16``; same IO).

    ``sessions`` holds the sessions opened so far: the image encoder and the
    prompt decoder from the start, the text encoder (:data:`LAZY_GRAPHS`)
    from its first run.
    """

    name = "onnxruntime"
    cpu_batches = CPU_BATCHES

    def __init__(
        self, artifacts: Artifacts, device: str = "cpu", threads: int | None = None, memory: SessionMemory | None = None,
        precision: str = "fp32",
    ):
        super().__init__(artifacts.specs)
        artifacts.require_precision(precision)
        self.precision = precision
        self._ort = ort = require("onnxruntime")
        if device not in ("cpu", "cuda"):
            raise SegVolError(f"device must be 'cpu' or 'cuda', not {device!r}")
        if device == "cuda":
            problem = cuda_problem(ort)
            if problem:
                raise SegVolError(f"onnxruntime on CUDA is not available: {problem}")
        self.device = device
        # InferenceSession.run is thread-safe and this backend keeps no state between
        # runs (the lazy text encoder opens under a lock); through the host on CUDA it is not shared
        self.concurrent = device == "cpu"
        self.threads = threads or cpu_cores()
        self._providers: list[Any] = [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
        # one options object for every graph's session (opened now, or on first use), one for every run
        memory = memory or SESSION_MEMORY
        self._options = dict.fromkeys(S.GRAPH_NAMES, session_options(ort, self.threads, memory))
        self._run_options = run_options(ort, memory)
        self._paths = {graph: artifacts.graph_path(graph, precision) for graph in S.GRAPH_NAMES}
        for path in self._paths.values():
            if not path.is_file():  # a lazy graph's file is missing: say so now, not mid-run
                raise SegVolError(f"{path} is missing; export the artifacts again")
        self._lock = threading.Lock()
        self.sessions: dict[str, Any] = {}
        self._outputs: dict[str, list[str]] = {}
        for graph in S.GRAPH_NAMES:
            if graph not in LAZY_GRAPHS:
                self._open(graph)

    def _open(self, graph: str) -> Any:
        path = self._paths[graph]
        session = open_session(self._ort, path, graph, self._options[graph], self._providers)
        if self.device == "cuda" and CUDA_PROVIDER not in session.get_providers():
            raise SegVolError(
                f"onnxruntime could not start {CUDA_PROVIDER} for {graph} "
                "(no CUDA device, or CUDA/cuDNN libraries missing)"
            )
        check_session_io(session, self.specs[graph], path, self.specs)
        self._outputs[graph] = [o.name for o in session.get_outputs()]
        self.sessions[graph] = session
        trim_heap()  # what loading left free in the heap (full size: about 114 MiB)
        return session

    def session(self, graph: str) -> Any:
        """The session of ``graph``, opened now if it was not yet."""
        found = self.sessions.get(graph)
        if found is None:
            with self._lock:  # two threads asking at once open it once
                found = self.sessions.get(graph) or self._open(graph)
        return found

    def describe(self) -> str:
        return f"onnxruntime ({self.device}, {self.threads} threads, {self.precision})"

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        # Seam for the GPU path: with CuPy inputs this becomes an IO binding
        # (session.io_binding() bound to device pointers); numpy for now.
        session = self.session(graph)
        names = self._outputs[graph]
        values = session.run(names, dict(feeds), self._run_options)
        if self._run_options is not None:
            trim_heap()  # what the arena gave back under glibc's mmap threshold stays in the heap otherwise
        return dict(zip(names, values))

    def close(self) -> None:
        self.sessions.clear()
