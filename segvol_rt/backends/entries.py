"""The entries of the built-in backends, which :mod:`segvol_rt.backends.registry` starts from.

Order is ``auto``'s: TensorRT (CUDA), ONNX Runtime (CUDA, then CPU), OpenVINO
(never by ``auto``: see below), then the PyTorch model (CPU). Each opener
imports its backend module, and that module its engine, only when called.

OpenVINO is chosen by name only, in Python as in the C++ SDK (whose ``auto``
is ONNX Runtime too), by measurement (``benchmarks/cpu_tier.py``, quiet 2-core
AMD EPYC, 2026-12-06): its fp32 gives ONNX Runtime's masks at full size, but
it was 1.05x faster per window and 4-17 % per whole run with a warm model
cache, a first run on a machine compiles (12.6 s against 9.4 s on a real CT;
10.1 s against 9.0 s on 2026-12-07),
and on the demo model it is slower and moves 1-3 voxels. Its bf16 changes
numbers and is always asked for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from segvol_rt._optional import available
from segvol_rt.backends import cuda_common
from segvol_rt.backends.backend_entry import BackendEntry
from segvol_rt.backends.tensorrt.engines import has_engines
from segvol_rt.errors import SegVolError

if TYPE_CHECKING:
    from segvol_rt.backends.base import Backend
    from segvol_rt.io.artifacts import Artifacts


def _no_problem(_artifacts: Artifacts, _device: str) -> str | None:
    return None


def _graph_variant(artifacts: Artifacts, precision: str | None) -> list[tuple[str, str]]:
    """The graphs at ``precision`` (fp32 when None); none for a precision the artifacts
    lack, which the opener refuses in a line of its own."""
    precision = precision or "fp32"
    return artifacts.graph_files(precision) if precision in artifacts.precisions else []


def _engines(artifacts: Artifacts, _precision: str | None) -> list[tuple[str, str]]:
    return artifacts.engine_files()


def _fp32_graphs(artifacts: Artifacts, _precision: str | None) -> list[tuple[str, str]]:
    return artifacts.graph_files("fp32")  # bf16 is an inference precision on these


def _nothing(_artifacts: Artifacts, _precision: str | None) -> list[tuple[str, str]]:
    return []  # the checkpoint, which the manifest does not vouch for


# -- TensorRT ---------------------------------------------------------------------------


def _tensorrt_probe(artifacts: Artifacts, _device: str) -> str | None:
    """What TensorRT lacks here besides a GPU (select checks that for every CUDA candidate)."""
    if not has_engines(artifacts.manifest):
        return "no TensorRT engines in the manifest (segvol-rt build)"
    if not available("tensorrt"):
        return "tensorrt is not installed"
    return None


def _open_tensorrt(artifacts: Artifacts, device: str, *, checkpoint: str | os.PathLike[str] | None = None,
                   threads: int | None = None, precision: str | None = None) -> Backend:
    if device == "cpu":
        raise SegVolError("the tensorrt backend runs on CUDA only; use --device cuda or another backend")
    problem = _tensorrt_probe(artifacts, device) or cuda_common.gpu_problem()
    if problem:
        raise SegVolError(f"the tensorrt backend cannot run: {problem}")
    try:
        from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    except ImportError as exc:
        raise SegVolError(f"the tensorrt backend is not available in this install ({exc})") from exc
    return TensorRTBackend(artifacts, precision=precision)


# -- ONNX Runtime -----------------------------------------------------------------------


def _open_onnxruntime(artifacts: Artifacts, device: str, *, checkpoint: str | os.PathLike[str] | None = None,
                      threads: int | None = None, precision: str | None = None) -> Backend:
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend, cuda_problem

    precision = precision or "fp32"
    artifacts.require_precision(precision)  # before any CUDA check: the clearer line
    if device == "cuda":
        problem = cuda_problem() or cuda_common.gpu_problem()
        if problem:
            raise SegVolError(f"onnxruntime on CUDA is not available: {problem}")
        from segvol_rt.backends.ort_cuda import OrtCudaBackend

        # CuPy missing: a MissingDependencyError naming the gpu extra
        return OrtCudaBackend(artifacts, precision=precision)
    return OnnxRuntimeBackend(artifacts, device=device, threads=threads, precision=precision)


def _onnxruntime_device() -> tuple[str, str]:
    from segvol_rt.backends.onnxruntime import cuda_problem

    problem = cuda_problem() or cuda_common.gpu_problem()
    if problem is None and not available("cupy"):
        problem = "cupy is not installed (pip install 'segvol-rt[gpu]')"
    return ("cpu", problem) if problem else ("cuda", "requested, CUDA available")


# -- OpenVINO ---------------------------------------------------------------------------


def _open_openvino(artifacts: Artifacts, device: str, *, checkpoint: str | os.PathLike[str] | None = None,
                   threads: int | None = None, precision: str | None = None) -> Backend:
    if device != "cpu":
        raise SegVolError("the openvino backend runs on the CPU only here; use --device cpu")
    from segvol_rt.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(artifacts, threads=threads, precision=precision or "fp32")


# -- torch ------------------------------------------------------------------------------


def _open_torch(artifacts: Artifacts, device: str, *, checkpoint: str | os.PathLike[str] | None = None,
                threads: int | None = None, precision: str | None = None) -> Backend:
    from segvol_rt.backends.torch import TorchBackend

    if precision not in (None, "fp32"):
        raise SegVolError(f"the torch backend runs the checkpoint in fp32 only, not {precision}; "
                          "use --backend onnxruntime or tensorrt for fp16, openvino for bf16")
    if threads:
        from segvol_rt._optional import require

        require("torch").set_num_threads(threads)  # process-wide: torch has no per-model setting
    return TorchBackend(artifacts, device=device, checkpoint=checkpoint)


def _torch_device() -> tuple[str, str]:
    from segvol_rt._optional import require

    if require("torch").cuda.is_available():
        return "cuda", "requested, CUDA available"
    return "cpu", "no CUDA device for torch"


TENSORRT = BackendEntry(
    name="tensorrt", devices=("cuda",), precisions=("fp32", "fp16"), auto_devices=("cuda",),
    probe=_tensorrt_probe, open=_open_tensorrt, default_device=lambda: ("cuda", "requested"), reads=_engines)
ONNXRUNTIME = BackendEntry(
    name="onnxruntime", devices=("cpu", "cuda"), precisions=("fp32", "fp16"), auto_devices=("cuda", "cpu"),
    probe=_no_problem, open=_open_onnxruntime, default_device=_onnxruntime_device, reads=_graph_variant)
OPENVINO = BackendEntry(
    name="openvino", devices=("cpu",), precisions=("fp32", "bf16"), auto_devices=(),
    probe=_no_problem, open=_open_openvino, default_device=lambda: ("cpu", "requested (CPU only)"),
    reads=_fp32_graphs)
TORCH = BackendEntry(
    name="torch", devices=("cpu", "cuda"), precisions=("fp32",), auto_devices=("cpu",),
    probe=_no_problem, open=_open_torch, default_device=_torch_device, reads=_nothing)

#: In ``auto`` order.
BUILT_IN = (TENSORRT, ONNXRUNTIME, OPENVINO, TORCH)
