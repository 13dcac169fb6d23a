"""``segvol-rt build --backend openvino``: OpenVINO's compiled models of the three
graphs put into the model cache ahead of use.

A run compiles the image encoder and the prompt decoder when it loads and the text
encoder on its first free phrase (:data:`segvol_rt.backends.onnxruntime.LAZY_GRAPHS`),
writing each blob on its first compile (seconds at full size, where a cached blob
loads in a fraction of one). Building compiles all three at one precision, so that
no run compiles: a server's first free phrase, or a cache made in a container image
and read-only there, which refuses a graph it holds no blob of. The cache is where
runs read it (:func:`segvol_rt.backends.openvino.default_cache_dir`,
``$SEGVOL_RT_CACHE``), shared with the C++ SDK.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from segvol_rt.backends import registry
from segvol_rt.backends.openvino import OpenVinoBackend
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import Artifacts


@dataclass(frozen=True)
class CachedGraph:
    """One graph's compiled model in the cache.

    ``folder``: its cache folder (named by the graph's sha256); ``ran``: the
    inference precision the compiled model reports (``f32``, ``bf16``);
    ``compiled``: compiled now (False: its blob was in the cache already)."""

    graph: str
    folder: Path
    ran: str
    compiled: bool


@dataclass(frozen=True)
class CacheBuild:
    """What ``build --backend openvino`` left: each graph's entry, the cache and the seconds taken."""

    graphs: tuple[CachedGraph, ...]
    cache_dir: Path
    precision: str
    seconds: float


def build_openvino_cache(artifacts_dir: str | os.PathLike[str], precision: str = "fp32",
                         threads: int | None = None) -> CacheBuild:
    """Verify the graphs the openvino backend reads (the registry entry's ``reads``:
    the fp32 graphs) and compile each one at ``precision`` (fp32 or bf16,
    refused in one line where this CPU does not offer it) into the model cache."""
    start = time.perf_counter()
    artifacts = Artifacts.load(artifacts_dir)
    artifacts.verify_files(registry.entry(OpenVinoBackend.name).reads(artifacts, precision))  # what it compiles
    backend = OpenVinoBackend(artifacts, threads=threads, precision=precision)
    try:
        backend.compile_all()
        graphs = tuple(CachedGraph(graph, backend.cache_folder(graph), backend.ran[graph], not backend.from_cache[graph])
                       for graph in S.GRAPH_NAMES)
    finally:
        backend.close()
    return CacheBuild(graphs, backend.cache_dir, precision, time.perf_counter() - start)
