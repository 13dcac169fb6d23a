"""ONNX Runtime backend: one inference session per graph of an artifacts directory.

``device="cpu"`` uses the CPU execution provider; ``device="cuda"`` the CUDA
provider of onnxruntime-gpu with numpy arrays in and out (every call copies
through the host). The runtime's CUDA path uses
:class:`segvol_rt.backends.ort_cuda.OrtCudaBackend` instead (IO binding on
CuPy memory; :func:`segvol_rt.backends.select.open_backend` picks it).
A CUDA request that cannot be met is a :class:`SegVolError` naming what is
missing; there is no silent fallback to the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from segvol_rt._optional import require
from segvol_rt.backends.base import Backend
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S

if TYPE_CHECKING:
    from segvol_rt.io.artifacts import Artifacts

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


class OnnxRuntimeBackend(Backend):
    """Runs the three ONNX graphs with ONNX Runtime.

    Args:
        artifacts: a loaded :class:`segvol_rt.io.artifacts.Artifacts`.
        device: ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads (default: all cores of this process).
    """

    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, device: str = "cpu", threads: int | None = None):
        super().__init__(artifacts.specs)
        ort = require("onnxruntime")
        if device not in ("cpu", "cuda"):
            raise SegVolError(f"device must be 'cpu' or 'cuda', not {device!r}")
        if device == "cuda":
            problem = cuda_problem(ort)
            if problem:
                raise SegVolError(f"onnxruntime on CUDA is not available: {problem}")
        self.device = device
        self.threads = threads or cpu_cores()
        providers = [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT's warnings are noise to users
        self.sessions = {}
        for graph in S.GRAPH_NAMES:
            path = artifacts.graph_path(graph)
            if not path.is_file():
                raise SegVolError(f"{path} is missing; export the artifacts again")
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            if device == "cuda" and CUDA_PROVIDER not in session.get_providers():
                raise SegVolError(
                    f"onnxruntime could not start {CUDA_PROVIDER} for {graph} "
                    "(no CUDA device, or CUDA/cuDNN libraries missing)"
                )
            self.sessions[graph] = session
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}

    def describe(self) -> str:
        return f"onnxruntime ({self.device}, {self.threads} threads, fp32)"

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        # Seam for the GPU path: with CuPy inputs this becomes an IO binding
        # (session.io_binding() bound to device pointers); numpy for now.
        names = self._outputs[graph]
        values = self.sessions[graph].run(names, dict(feeds))
        return dict(zip(names, values))

    def close(self) -> None:
        self.sessions.clear()
