"""OpenVINO backend: the three fp32 ONNX graphs compiled for the CPU by OpenVINO.

Precision is what the compiled model computes in, OpenVINO's
``INFERENCE_PRECISION_HINT`` on the fp32 graphs:

- ``fp32``: the hint is set to ``f32`` explicitly, because OpenVINO computes
  in bf16 by default on CPUs with AVX512-BF16 or AMX;
- ``bf16``: offered only where OpenVINO lists ``BF16`` in the CPU's
  ``OPTIMIZATION_CAPABILITIES`` (AMX, AVX512-BF16, AVX2-VNNI-2); elsewhere
  OpenVINO would ignore or emulate it, so asking is one :class:`SegVolError`
  line naming what the CPU offers, never a silent fp32 run. The image and
  text encoders compute in bf16; the prompt decoder stays in f32
  (:data:`F32_GRAPHS`, :func:`graph_hint`);
- ``fp16`` is refused: on ONNX Runtime and TensorRT it names the fp16 graph
  variant, which OpenVINO would upcast to its inference precision rather than
  run in fp16, and OpenVINO's own f16 hint (CPUs with AVX512-FP16) has no
  measured Dice against fp32 yet.

Every compile reads the hint back from the compiled model; a compiled model
that does not run the asked precision is refused. :attr:`OpenVinoBackend.ran`
records, per graph, what ran.

Compiled models are cached with OpenVINO's ``CACHE_DIR`` under ``openvino/``
in segvol-rt's user cache (:func:`segvol_rt.io.user_cache.cache_root`), never
in the artifacts directory, which may be read-only. Graphs are read from their
files by OpenVINO, so a cached blob also skips the ONNX import. OpenVINO keys
a blob by the graph's path and the compile options and takes it as current
while the file's size and modification second are unchanged, so a graph
replaced in place by one of the same size within that second (a re-export of
the same architecture, or files whose times a build or copy normalises) ran
the old weights. Each graph therefore has a cache folder of its own named by
its sha256 as the manifest lists it (:func:`graph_cache_dir`), the content
:meth:`segvol_rt.io.artifacts.Artifacts.verify` checks.

The text encoder is compiled on first use, as on ONNX Runtime
(:data:`segvol_rt.backends.onnxruntime.LAZY_GRAPHS`). Runs may overlap:
each thread has its own infer request of each compiled model.

Memory (measured: :data:`RELEASED_BETWEEN_GRAPHS`). OpenVINO maps a graph's (or a
cached blob's) weights and repacks most of them while compiling, and the
compiled model keeps the mapped originals, so the weights were resident twice:
after each compile the mapped pages are given back
(:func:`segvol_rt.backends.resident.drop_mapped_pages`; the kernel reads
back from the file what the compiled model still uses), and the free heap
the compile left (:func:`segvol_rt.backends.resident.trim_heap`). The graphs of
:data:`RELEASED_BETWEEN_GRAPHS` give their intermediate memory back before
another graph runs and at :meth:`OpenVinoBackend.rest` (``CompiledModel.release_memory``,
then the heap trimmed), so one graph's memory does not sit under another's run,
while a graph's consecutive runs (the decoder's, one per target and window) keep it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt._system import cpu_cores
from segvol_rt.backends.base import Backend
from segvol_rt.backends.onnxruntime import LAZY_GRAPHS
from segvol_rt.backends.resident import drop_mapped_pages, trim_heap
from segvol_rt.backends.signal_stack import kept_signal_stack
from segvol_rt.errors import MissingDependencyError, SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.user_cache import cache_root

if TYPE_CHECKING:
    from segvol_rt.io.artifacts import Artifacts

DEVICE = "CPU"
# segvol-rt precision -> OpenVINO inference precision (the names compiled models report)
HINTS = {"fp32": "f32", "bf16": "bf16"}
# segvol-rt precision -> the OPTIMIZATION_CAPABILITIES entry that must be present
CAPABILITIES = {"fp32": "FP32", "bf16": "BF16"}
# Graphs compiled in f32 whatever precision is asked. The prompt decoder's logits are
# thresholded into the mask: in bf16 it took the mask Dice against fp32 (demo model, held-out
# phantoms x 10 organs x text, box, points, text+box; AMD EPYC with AVX512-BF16) from 0.9950
# to 0.9883, under the 0.99 bf16 is held to, while the image encoder is over 90% of a run.
F32_GRAPHS = (S.PROMPT_DECODER,)
CACHE_SUBDIR = "openvino"
# Rows per call on the CPU, measured (benchmarks/cpu_batch.py; full size, shared 2-core
# EPYC, ../shared/data's CT at 1.5 mm): the prompt decoder at batch 1, as on ONNX Runtime
# (decode 2.54 s at batch 8, 1.97 s at batch 1; peak RSS 1387 -> 1374 MiB; the same mask).
CPU_BATCHES = {S.PROMPT_DECODER: 1}
# Graphs whose compiled model releases its intermediate memory (and the heap trimmed
# after it) before another graph runs, and at rest: all three. Each compiled model
# otherwise keeps its last run's memory, so the prompt decoder's (about 180 MiB) sat
# under the image encoder's next window and the encoder's under the decoder's runs.
# Measured on the whole pipeline (../shared/data's CT at 1.5 mm, full size, random
# weights, --text aorta, shared 2-core EPYC), releasing after every run: peak RSS
# 1382 MiB -> 1282 MiB releasing the decoder alone (with the mapped weights given back:
# 1094 -> 1043), 1057 -> 976 releasing the encoder too and trimming the heap after each
# run; the same mask. That cost about 0.05 s per decoder call (its memory faulted in
# again: 0.155 -> 0.20 s on a quiet 2-core EPYC), so a graph's consecutive runs keep it:
# it is released when another graph runs and at rest(), which the pipeline calls after
# each decoding stage (before its upsampling and blending allocate) and the runtime
# after each request. Quiet 2-core EPYC, the same CT, bf16, same masks: 5 targets
# 6.8-7.0 s -> 6.4-6.5 s (decoding 1.8-2.0 s -> 1.6 s); peak RSS unchanged with 1 and 5
# targets (861 / 870-880 MiB before, 858 / 867 after; 906 / 940 keeping it until the
# next graph, without the rest() after each decoding stage).
RELEASED_BETWEEN_GRAPHS = frozenset(S.GRAPH_NAMES)
# An image encoder whose file is at least this large gives the mapped weight pages back
# after every run too, not only after compiling: a run reads the weights the compiled model
# did not repack back from the mapping, and they stayed resident under everything
# after. Measured (512x512x200 raw phantom, full size, 5 targets, 2-core EPYC): peak RSS
# 1470 -> 1310 MiB, the baseline through the zoom-in 1010 -> 855, image-encoder windows
# within noise (3.0-3.3 s -> 2.8-2.9 s); reading /proc/self/smaps costs about 0.03 s, so
# small graphs (the demo model's take milliseconds per run) are left alone.
DROP_PAGES_AFTER_RUN_BYTES = 64 << 20


def default_cache_dir() -> Path:
    """Where compiled models are cached: ``<user cache>/openvino``."""
    return cache_root() / CACHE_SUBDIR


def graph_cache_dir(cache_dir: Path, sha256: str) -> Path:
    """The cache folder of the graph whose file has this (manifest) sha256:
    ``<cache_dir>/<sha256>``, so a blob is only ever read for the bytes it was compiled from."""
    return cache_dir / sha256


def precision_problem(precision: str, core: Any = None) -> str | None:
    """Why this CPU's OpenVINO cannot compute in ``precision`` (one line naming what
    the CPU offers), or None. ``core``: an ``openvino.Core`` (default: a new one; where
    openvino cannot be imported, the line is the one naming the extra), so the
    benchmarks and tests that ask whether a precision runs here skip with this line."""
    if precision == "fp16":
        return ("the openvino backend computes in fp32 or bf16, not fp16 (fp16 is a graph variant for "
                "--backend onnxruntime or tensorrt); use --precision fp32 or bf16")
    if precision not in HINTS:
        return f"the openvino backend computes in {' or '.join(HINTS)}, not {precision!r}"
    if core is None:
        try:
            core = require("openvino").Core()
        except MissingDependencyError as exc:
            return str(exc)
    offered = [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]
    if CAPABILITIES[precision] in offered:
        return None
    name = core.get_property(DEVICE, "FULL_DEVICE_NAME")
    return (f"{precision} needs a CPU on which OpenVINO offers {CAPABILITIES[precision]} (AMX, "
            f"AVX512-BF16 or AVX2-VNNI-2); this CPU ({name}) offers {', '.join(offered)}; use --precision fp32")


def check_precision(core: Any, precision: str) -> None:
    """Refuse a precision this CPU's OpenVINO does not offer (:func:`precision_problem`'s line)."""
    problem = precision_problem(precision, core)
    if problem is not None:
        raise SegVolError(problem)


def _unwritable(folder: Path, why: str) -> SegVolError:
    return SegVolError(f"cannot write the OpenVINO model cache {folder} ({why}); "
                       "set SEGVOL_RT_CACHE to a writable directory")


def _make_cache_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc.strerror or str(exc)) from None


def graph_hint(precision: str, graph: str) -> str:
    """The OpenVINO inference precision ``graph`` is compiled in when ``precision`` is asked."""
    return HINTS["fp32"] if graph in F32_GRAPHS else HINTS[precision]


def _hint_name(value: Any) -> str:
    """OpenVINO's element type (``<Type: 'bfloat16'>``, ``f32``) as its short name."""
    text = str(getattr(value, "get_type_name", lambda: value)())
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


class OpenVinoBackend(Backend):
    """Runs the three fp32 ONNX graphs with OpenVINO on the CPU.

    Args:
        artifacts: a loaded :class:`segvol_rt.io.artifacts.Artifacts`.
        threads: inference threads (default: all cores of this process).
        precision: ``"fp32"`` or ``"bf16"`` (see the module docstring).
        cache_dir: compiled-model cache (default :func:`default_cache_dir`; None there
            too: the default). Never the artifacts directory.

    ``ran``: graph -> the inference precision its compiled model reports;
    ``from_cache``: graph -> whether its compiled model came from a blob the cache
    held before (False: compiled here, and the blob written).
    """

    name = "openvino"
    device = "cpu"
    concurrent = True
    cpu_batches = CPU_BATCHES

    @kept_signal_stack()
    def __init__(self, artifacts: Artifacts, threads: int | None = None, precision: str = "fp32",
                 cache_dir: str | Path | None = None):
        super().__init__(artifacts.specs)
        ov = require("openvino")
        self._core = ov.Core()
        check_precision(self._core, precision)
        self.precision = precision
        self.threads = threads or cpu_cores()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._config = self._compile_config()
        self._paths = {graph: artifacts.graph_path(graph) for graph in S.GRAPH_NAMES}  # the fp32 graphs
        self._caches = {graph: graph_cache_dir(self.cache_dir, artifacts.graph_entry(graph)["sha256"])
                        for graph in S.GRAPH_NAMES}
        for path in self._paths.values():
            if not path.is_file():
                raise SegVolError(f"{path} is missing; export the artifacts again")
        self._lock = threading.Lock()
        self._local = threading.local()
        self._held: set[str] = set()  # graphs whose compiled model holds its last run's memory
        self._held_lock = threading.Lock()
        self.compiled: dict[str, Any] = {}
        self.ran: dict[str, str] = {}
        self.from_cache: dict[str, bool] = {}
        self._mapped: list[Path] = []  # the files whose pages the compiled models map
        big = self._paths[S.IMAGE_ENCODER].stat().st_size >= DROP_PAGES_AFTER_RUN_BYTES
        self._drop_after_run = S.IMAGE_ENCODER if big else None  # the graph that does
        for graph in S.GRAPH_NAMES:
            if graph not in LAZY_GRAPHS:
                self._compile(graph)

    def _compile_config(self) -> dict[str, str]:
        _make_cache_dir(self.cache_dir)
        return {
            "INFERENCE_NUM_THREADS": str(self.threads),
            "PERFORMANCE_HINT": "LATENCY",
        }

    def _compile(self, graph: str) -> Any:
        path, cache = self._paths[graph], self._caches[graph]
        _make_cache_dir(cache)
        blobs = set(cache.glob("*.blob"))
        if not blobs and not os.access(cache, os.W_OK):
            # OpenVINO would compile every time without a word (a read-only cache is
            # fine only where it holds the blobs already: one prepared in an image)
            raise _unwritable(cache, "not writable, and it holds no compiled model of this graph")
        compiled = self._compile_model(graph, path)
        self.from_cache[graph] = bool(compiled.get_property("LOADED_FROM_CACHE"))
        if not self.from_cache[graph] and set(cache.glob("*.blob")) - blobs:
            # a first compile holds the weights in memory of its own (not mapped, so not given
            # back below: 1285 MiB peak against 997 warm); the blob it just wrote loads mapped
            # (about 0.4 s for the image encoder), so load that instead
            del compiled
            trim_heap()
            compiled = self._compile_model(graph, path)
        ran, asked = _hint_name(compiled.get_property("INFERENCE_PRECISION_HINT")), graph_hint(self.precision, graph)
        if ran != asked:
            raise SegVolError(f"OpenVINO compiled the {graph} graph to run in {ran}, not the asked {asked} ({self.precision})")
        self._check_io(compiled, graph, path)
        self.ran[graph] = ran
        self.compiled[graph] = compiled
        # the weights are repacked by now: give back the mapped originals (graph file or cached blob)
        self._mapped = [*self._paths.values(), *(b for c in self._caches.values() for b in c.glob("*.blob"))]
        drop_mapped_pages([path, *cache.glob("*.blob")])
        trim_heap()
        return compiled

    def _compile_model(self, graph: str, path: Path) -> Any:
        try:
            config = {**self._config, "CACHE_DIR": str(self._caches[graph]),
                      "INFERENCE_PRECISION_HINT": graph_hint(self.precision, graph)}
            return self._core.compile_model(str(path), DEVICE, config)
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:300]
            raise SegVolError(f"OpenVINO cannot compile the {graph} graph {path} ({reason}); "
                              "export the artifacts again") from exc

    def _check_io(self, compiled: Any, graph: str, path: Path) -> None:
        spec = self.specs[graph]
        for kind, ports, tensors in (("inputs", compiled.inputs, spec.inputs), ("outputs", compiled.outputs, spec.outputs)):
            # a port may carry several names (OpenVINO merges a Cast's output name into its input's)
            names = [set(p.get_names()) for p in ports]
            missing = [t.name for t in tensors if not any(t.name in n for n in names)]
            if missing or len(ports) != len(tensors):
                raise SegVolError(f"{path} is not the {graph} graph its spec describes ({len(ports)} {kind}, none "
                                  f"named {missing}; the spec has {[t.name for t in tensors]}); "
                                  "export the artifacts again")

    def cache_folder(self, graph: str) -> Path:
        """The cache folder of ``graph``'s compiled models (:func:`graph_cache_dir`)."""
        return self._caches[graph]

    @kept_signal_stack()
    def compile_all(self) -> None:
        """Compile every graph now, the text encoder too (otherwise compiled on first
        use): each one's blob is then in the cache, for a cache prepared ahead of use
        (``segvol-rt build --backend openvino``) or a read-only one."""
        with self._lock:
            for graph in S.GRAPH_NAMES:
                if graph not in self.compiled:
                    self._compile(graph)

    def _request(self, graph: str) -> Any:
        """This thread's infer request of ``graph`` (compiled now if it was not yet)."""
        requests = self._local.__dict__.setdefault("requests", {})
        found = requests.get(graph)
        if found is None:
            compiled = self.compiled.get(graph)
            if compiled is None:
                with self._lock:  # two threads asking at once compile it once
                    compiled = self.compiled.get(graph) or self._compile(graph)
            found = requests[graph] = compiled.create_infer_request()
        return found

    def describe(self) -> str:
        return f"openvino ({self.device}, {self.threads} threads, {self.precision})"

    @kept_signal_stack()
    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        request = self._request(graph)
        self._release_held(but=graph)
        request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()})
        # the request's output tensors are reused by its next run: copy them out
        out = {name: np.array(request.get_tensor(name).data, copy=True) for name in self.specs[graph].output_names}
        if graph in RELEASED_BETWEEN_GRAPHS:
            with self._held_lock:
                self._held.add(graph)
        if graph == self._drop_after_run:
            drop_mapped_pages(self._mapped)
        return out

    @kept_signal_stack()
    def rest(self) -> None:
        """Give back every graph's intermediate memory (the runtime calls it after each request)."""
        self._release_held(but=None)

    def _release_held(self, but: str | None) -> None:
        """Release the memory the held graphs other than ``but`` keep, then trim the heap."""
        with self._held_lock:
            others = [g for g in self._held if g != but]
        released = [g for g in others if self._release(g)]
        if released:
            with self._held_lock:
                self._held.difference_update(released)
            trim_heap()

    def _release(self, graph: str) -> bool:
        """Release ``graph``'s intermediate memory, unless another thread's run holds it:
        OpenVINO refuses (RuntimeError) while a request of the model is running, and
        the graph stays held (a later release gives it back)."""
        try:
            self.compiled[graph].release_memory()
        except RuntimeError:
            return False
        return True

    @kept_signal_stack()
    def close(self) -> None:
        self._held.clear()
        self.compiled.clear()
        self._local = threading.local()
