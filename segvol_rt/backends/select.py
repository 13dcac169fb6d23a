"""Choosing a backend: :func:`open_backend`, over the backend registry.

``backend="auto"`` tries the registered backends in registry order on the
devices each declares for ``auto`` (:mod:`segvol_rt.backends.entries`):
TensorRT (engines recorded in the manifest, ``tensorrt`` importable, a GPU),
ONNX Runtime on CUDA, ONNX Runtime on the CPU, then the PyTorch model; the
returned reason says what was chosen and why the better ones were not
(``"onnxruntime on CPU: no CUDA device"``). OpenVINO is never chosen by
``auto`` (see :mod:`segvol_rt.backends.entries`). A backend or device asked
for by name that cannot run is a :class:`SegVolError` naming what is missing.

``precision`` (None: the backend's default) is what the backend computes in
(:data:`segvol_rt.io.artifacts.PRECISIONS`): on ONNX Runtime and TensorRT
``fp32``/``fp16`` pick the graph variant (ONNX Runtime runs the fp16 variants
of ``export --precision fp16`` when asked; TensorRT runs the engines
``segvol-rt build`` made, and refuses them when they are not of the asked
precision); on OpenVINO ``fp32``/``bf16`` is the inference precision of the
fp32 graphs (:mod:`segvol_rt.backends.openvino`); torch runs fp32 only.
Asking for fp16 from artifacts without fp16 graphs is one
:class:`SegVolError` line naming ``export --precision fp16``.

The CUDA backends keep the pipeline on the GPU (``xp`` is cupy): ONNX
Runtime on CUDA is :class:`segvol_rt.backends.ort_cuda.OrtCudaBackend` (IO
binding on CuPy memory; needs onnxruntime-gpu, CuPy and a GPU - the ``gpu``
extra), TensorRT is :class:`segvol_rt.backends.tensorrt.runner.TensorRTBackend`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from segvol_rt.backends import backend_entry, cuda_common, registry
from segvol_rt.backends.base import Backend
from segvol_rt.errors import SegVolError
from segvol_rt.io.artifacts import GRAPH_VARIANTS, PRECISIONS, REFERENCE_PRECISION

if TYPE_CHECKING:
    from segvol_rt.backends.backend_entry import BackendEntry
    from segvol_rt.io.artifacts import Artifacts

BACKENDS = registry.names()
DEVICES = ("auto", *backend_entry.DEVICES)



def gpu_problem() -> str | None:
    """Why there is no usable CUDA GPU here, or None (:func:`segvol_rt.backends.cuda_common.gpu_problem`)."""
    return cuda_common.gpu_problem()


def _label(backend: Backend) -> str:
    return f"{backend.name} on {'CUDA' if backend.device == 'cuda' else 'CPU'} ({backend.precision})"


def _candidates(device: str) -> list[tuple[BackendEntry, str]]:
    """(entry, device) pairs ``auto`` tries for ``device``: each entry's auto
    devices in order; with a device named, the entries ``auto`` may pick that run on it."""
    found = []
    for e in registry.entries():
        if not e.auto_devices:
            continue
        if device == "auto":
            found += [(e, d) for d in e.auto_devices]
        elif device in e.devices:
            found.append((e, device))
    return found


def _verify(entry: BackendEntry, artifacts: Artifacts, precision: str | None) -> None:
    """Check the sha256 of the files ``entry`` reads (its own and the support files):
    a changed file is one line, never a reason to try another backend."""
    artifacts.verify_files([*artifacts.support_files(), *entry.reads(artifacts, precision)])


def _auto(artifacts: Artifacts, device: str, checkpoint: str | os.PathLike[str] | None,
          threads: int | None = None, precision: str | None = None, verify: bool = False) -> tuple[Backend, str]:
    """Best runnable (backend, device) for ``device`` ("auto", "cpu" or "cuda")."""
    candidates = _candidates(device)
    if precision is not None and not any(precision in e.precisions for e, _ in candidates):
        named = [e.name for e in registry.entries() if precision in e.precisions]
        raise SegVolError(f"{precision} is never chosen by --backend auto (it changes numbers); ask for it by name: "
                          f"--backend {named[0]} --precision {precision}")
    why_not: list[str] = []
    gpu = None if device == "cpu" else cuda_common.gpu_problem()
    for e, dev in candidates:
        if precision is not None and precision not in e.precisions:
            why_not.append(f"{e.name} computes in {'/'.join(e.precisions)}, not {precision}")
            continue
        problem = (gpu if dev == "cuda" else None) or e.probe(artifacts, dev)
        if problem:
            if problem not in why_not:
                why_not.append(problem)
            continue
        if verify:
            _verify(e, artifacts, precision)
        try:
            backend = e.open(artifacts, dev, checkpoint=checkpoint, threads=threads, precision=precision)
        except SegVolError as exc:
            why_not.append(f"{e.name} ({dev}): {exc}")
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
    verify: bool = False,
) -> tuple[Backend, str]:
    """Open a backend for ``artifacts`` (:class:`segvol_rt.io.artifacts.Artifacts`).

    Args:
        backend: ``"auto"`` or a registered name (:data:`BACKENDS`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        checkpoint: for the torch backend, a checkpoint path overriding the manifest's.
        threads: CPU threads of the CPU backends (None: all cores).
        precision: one of :data:`PRECISIONS` (None: fp32 on ONNX Runtime, OpenVINO
            and torch, the built engines' on TensorRT); see the module docstring.
        verify: check the sha256 of the files a backend reads (its graphs at the
            precision it runs, or its engines, and the tokenizer and text table)
            before opening it (:attr:`segvol_rt.backends.backend_entry.BackendEntry.reads`):
            a file of another precision, or an engine an ONNX backend never
            opens, is not read.

    Returns:
        ``(backend, reason)``: the reason says what runs and why better choices do not.
    """
    check_names(backend, device, precision)
    if precision in GRAPH_VARIANTS and precision != REFERENCE_PRECISION and backend in ("auto", "onnxruntime"):
        artifacts.require_precision(precision)  # one clear line, not a list of every backend's refusal
    if backend == "auto":
        return _auto(artifacts, device, checkpoint, threads, precision, verify)
    chosen = registry.entry(backend)
    if verify:
        _verify(chosen, artifacts, precision)
    why = "requested"
    if device == "auto":
        device, why = chosen.default_device()
    opened = chosen.open(artifacts, device, checkpoint=checkpoint, threads=threads, precision=precision)
    return opened, _label(opened) + f": {why}"
