"""Choosing a backend: :func:`open_backend`.

``backend="auto"`` tries, in order, TensorRT (engines recorded in the
manifest, ``tensorrt`` importable, a GPU), ONNX Runtime on CUDA, ONNX Runtime
on the CPU, then the PyTorch model; the returned reason says what was chosen
and why the better ones were not (``"onnxruntime on CPU: no CUDA device"``).
A backend or device asked for by name that cannot run is a
:class:`SegVolError` naming what is missing.

``precision`` (``"fp32"`` or ``"fp16"``; None: the backend's default) picks
the graph variant: ONNX Runtime runs the fp32 graphs by default and the fp16
variants of ``export --precision fp16`` when asked; TensorRT runs the engines
``segvol-rt build`` made, and refuses them when they are not of the asked
precision; torch runs fp32 only. Asking for fp16 from artifacts without fp16
graphs is one :class:`SegVolError` line naming ``export --precision fp16``.

The CUDA backends keep the pipeline on the GPU (``xp`` is cupy): ONNX
Runtime on CUDA is :class:`segvol_rt.backends.ort_cuda.OrtCudaBackend` (IO
binding on CuPy memory; needs onnxruntime-gpu, CuPy and a GPU - the ``gpu``
extra), TensorRT is :class:`segvol_rt.backends.tensorrt.runner.TensorRTBackend`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from segvol_rt._optional import available
from segvol_rt.backends.base import Backend
from segvol_rt.backends.tensorrt.engines import has_engines
from segvol_rt.errors import SegVolError
from segvol_rt.io.artifacts import PRECISIONS

if TYPE_CHECKING:
    from segvol_rt.io.artifacts import Artifacts

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
DEVICES = ("auto", "cpu", "cuda")


def gpu_problem() -> str | None:
    """Why there is no usable CUDA GPU here, or None when there is one."""
    from segvol_rt.backends.cuda_common import query_gpu

    try:
        query_gpu(0)
    except SegVolError:
        return "no CUDA device"
    return None


def _tensorrt_problem(artifacts: Artifacts) -> str | None:
    if not has_engines(artifacts.manifest):
        return "no TensorRT engines in the manifest (segvol-rt build)"
    if not available("tensorrt"):
        return "tensorrt is not installed"
    return gpu_problem()


def _open_tensorrt(artifacts: Artifacts, device: str, precision: str | None = None, **_: Any) -> Backend:
    if device == "cpu":
        raise SegVolError("the tensorrt backend runs on CUDA only; use --device cuda or another backend")
    problem = _tensorrt_problem(artifacts)
    if problem:
        raise SegVolError(f"the tensorrt backend cannot run: {problem}")
    try:
        from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    except ImportError as exc:
        raise SegVolError(f"the tensorrt backend is not available in this install ({exc})") from exc
    return TensorRTBackend(artifacts, precision=precision)


def _open_onnxruntime(artifacts: Artifacts, device: str, threads: int | None = None, precision: str | None = None,
                      **_: Any) -> Backend:
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend, cuda_problem

    precision = precision or "fp32"
    artifacts.require_precision(precision)  # before any CUDA check: the clearer line

    if device == "cuda":
        problem = cuda_problem() or gpu_problem()
        if problem:
            raise SegVolError(f"onnxruntime on CUDA is not available: {problem}")
        from segvol_rt.backends.ort_cuda import OrtCudaBackend

        # CuPy missing: a MissingDependencyError naming the gpu extra
        return OrtCudaBackend(artifacts, precision=precision)
    return OnnxRuntimeBackend(artifacts, device=device, threads=threads, precision=precision)


def _open_torch(artifacts: Artifacts, device: str, checkpoint: str | os.PathLike[str] | None = None,
                threads: int | None = None, precision: str | None = None, **_: Any) -> Backend:
    from segvol_rt.backends.torch import TorchBackend

    if precision not in (None, "fp32"):
        raise SegVolError(f"the torch backend runs the checkpoint in fp32 only, not {precision}; "
                          "use --backend onnxruntime or tensorrt for fp16")

    if threads:
        from segvol_rt._optional import require

        require("torch").set_num_threads(threads)  # process-wide: torch has no per-model setting

    return TorchBackend(artifacts, device=device, checkpoint=checkpoint)


_OPENERS: dict[str, Callable[..., Backend]] = {
    "tensorrt": _open_tensorrt,
    "onnxruntime": _open_onnxruntime,
    "torch": _open_torch,
}


def _label(backend: Backend) -> str:
    return f"{backend.name} on {'CUDA' if backend.device == 'cuda' else 'CPU'} ({backend.precision})"


def _auto(artifacts: Artifacts, device: str, checkpoint: str | os.PathLike[str] | None,
          threads: int | None = None, precision: str | None = None) -> tuple[Backend, str]:
    """Best runnable (backend, device) for ``device`` ("auto", "cpu" or "cuda")."""
    why_not: list[str] = []
    gpu = None if device == "cpu" else gpu_problem()
    candidates: list[tuple[str, str]] = []
    if device != "cpu":
        candidates += [("tensorrt", "cuda"), ("onnxruntime", "cuda")]
    if device != "cuda":
        candidates += [("onnxruntime", "cpu")]
    candidates += [("torch", "cpu" if device != "cuda" else "cuda")]
    for name, dev in candidates:
        if dev == "cuda" and gpu:
            if gpu not in why_not:
                why_not.append(gpu)
            continue
        if name == "tensorrt":
            problem = _tensorrt_problem(artifacts)
            if problem:
                why_not.append(problem)
                continue
        try:
            backend = _OPENERS[name](artifacts, dev, checkpoint=checkpoint, threads=threads, precision=precision)
        except SegVolError as exc:
            why_not.append(f"{name} ({dev}): {exc}")
            continue
        reason = _label(backend)
        if why_not:
            reason += ": " + "; ".join(why_not)
        return backend, reason
    hint = " (use --device cpu or auto to run on the CPU)" if device == "cuda" else ""
    raise SegVolError(f"no backend can run on device={device!r}: " + "; ".join(why_not) + hint)


def check_names(backend: str | None = None, device: str | None = None, precision: str | None = None) -> None:
    """Each of ``backend``, ``device`` and ``precision`` that is given is a known name."""
    if backend is not None and backend not in BACKENDS:
        raise SegVolError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if device is not None and device not in DEVICES:
        raise SegVolError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if precision is not None and precision not in PRECISIONS:
        raise SegVolError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def open_backend(
    artifacts: Artifacts,
    backend: str = "auto",
    device: str = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> tuple[Backend, str]:
    """Open a backend for ``artifacts`` (:class:`segvol_rt.io.artifacts.Artifacts`).

    Args:
        backend: ``"auto"``, ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        checkpoint: for the torch backend, a checkpoint path overriding the manifest's.
        threads: CPU threads of ONNX Runtime on the CPU and of torch (None: all cores).
        precision: ``"fp32"`` or ``"fp16"`` (None: fp32 on ONNX Runtime and torch,
            the built engines' on TensorRT); see the module docstring.

    Returns:
        ``(backend, reason)``: the reason says what runs and why better choices do not.
    """
    check_names(backend, device, precision)
    if precision is not None and precision != "fp32" and backend in ("auto", "onnxruntime"):
        artifacts.require_precision(precision)  # one clear line, not a list of every backend's refusal
    if backend == "auto":
        return _auto(artifacts, device, checkpoint, threads, precision)
    if device == "auto":
        device, why = _default_device(backend)
        opened = _OPENERS[backend](artifacts, device, checkpoint=checkpoint, threads=threads, precision=precision)
        return opened, _label(opened) + f": {why}"
    opened = _OPENERS[backend](artifacts, device, checkpoint=checkpoint, threads=threads, precision=precision)
    return opened, _label(opened) + ": requested"


def _default_device(backend: str) -> tuple[str, str]:
    """(device, why) for a backend asked for by name with ``device="auto"``."""
    if backend == "tensorrt":
        return "cuda", "requested"
    if backend == "torch":
        from segvol_rt._optional import require

        if require("torch").cuda.is_available():
            return "cuda", "requested, CUDA available"
        return "cpu", "no CUDA device for torch"
    from segvol_rt.backends.onnxruntime import cuda_problem

    problem = cuda_problem() or gpu_problem()
    if problem is None and not available("cupy"):
        problem = "cupy is not installed (pip install 'segvol-rt[gpu]')"
    return ("cpu", problem) if problem else ("cuda", "requested, CUDA available")
