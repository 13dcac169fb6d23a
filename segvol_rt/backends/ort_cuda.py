"""ONNX Runtime CUDA backend with IO binding on CuPy memory.

Inputs and outputs stay on the GPU: each run binds the CuPy input arrays
(``bind_input(..., device_type="cuda", buffer_ptr=...)``) and outputs
preallocated from the graph spec (``bind_output``), then calls
``run_with_iobinding``. ``xp`` is cupy; nothing goes through the host
between graphs.

Synchronisation: ONNX Runtime's CUDA provider runs on its own stream, which
cannot wait on a CuPy event. So before each run we block the host until the
caller's current CuPy stream (where the inputs were written) has finished.
``run_with_iobinding`` returns only after ORT has synchronised its own stream
(ORT's default at the end of ``Run``; we never set the run option
``disable_synchronize_execution_providers``), so outputs are complete and
safe to read on any stream, and the inputs are no longer read. Outputs are
allocated on the caller's stream; ORT's intermediates live in ORT's own
memory arena, separate from CuPy's pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.backends.base import Backend
from segvol_rt.backends.cuda_common import (
    device_inputs,
    empty_outputs,
    output_shapes,
    require_cupy,
)
from segvol_rt.backends.onnxruntime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    SessionMemory,
    check_session_io,
    cuda_problem,
    open_session,
    session_options,
)
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import Artifacts


def bind_io(
    binding: Any,
    spec: S.GraphSpec,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    device_type: str,
    device_id: int,
    address: Callable[[Any], int],
) -> None:
    """Bind contiguous ``inputs`` and preallocated ``outputs`` (arrays with
    ``shape``) of ``spec`` to an ORT ``IOBinding`` by raw address.

    ``address`` gives an array's data pointer (``a.data.ptr`` for cupy,
    ``a.ctypes.data`` for numpy, which the CPU tests use with ``device_type="cpu"``).
    """
    for t in spec.inputs:
        arr = inputs[t.name]
        binding.bind_input(t.name, device_type, device_id, np.dtype(t.dtype).type, list(arr.shape), address(arr))
    for t in spec.outputs:
        arr = outputs[t.name]
        binding.bind_output(t.name, device_type, device_id, np.dtype(t.dtype).type, list(arr.shape), address(arr))


def run_bound(
    session: Any,
    spec: S.GraphSpec,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    device_type: str,
    device_id: int,
    address: Callable[[Any], int],
) -> None:
    """One ``run_with_iobinding`` of ``session`` writing into ``outputs``."""
    binding = session.io_binding()
    bind_io(binding, spec, inputs, outputs, device_type=device_type, device_id=device_id, address=address)
    session.run_with_iobinding(binding)


def cuda_provider_options(device_id: int, tf32: bool = False) -> dict[str, str]:
    """Options of the CUDA provider. ``tf32``: let cuBLAS/cuDNN round fp32
    matrix inputs to TF32 (ONNX Runtime's default is on; ours is off, so fp32
    graphs keep fp32 parity with the CPU, rtol ~1e-5; TF32 is asked for, then
    measured, never chosen silently). For cuDNN paths the provider option may
    not cover, ``NVIDIA_TF32_OVERRIDE=0`` in the environment turns TF32 off
    process-wide."""
    return {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}


def cuda_session(path: Path, device_id: int, options: Any = None, *, tf32: bool = False) -> Any:
    """An ``InferenceSession`` on the CUDA provider (:func:`cuda_provider_options`);
    a clear error when the installed onnxruntime has no working CUDA provider."""
    ort = require("onnxruntime")
    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 finds CUDA/cuDNN from the nvidia-* wheels this way.
        ort.preload_dlls()
    problem = cuda_problem(ort)
    if problem:
        raise SegVolError(f"onnxruntime on CUDA is not available: {problem}")
    if options is None:
        # ONNX Runtime's own memory defaults: the CPU measurements behind
        # SESSION_MEMORY say nothing about the CUDA provider's allocator
        options = session_options(ort, memory=SessionMemory())
    providers: list[Any] = [(CUDA_PROVIDER, cuda_provider_options(device_id, tf32)), CPU_PROVIDER]
    session = open_session(ort, path, path.stem, options, providers)
    if session.get_providers()[0] != CUDA_PROVIDER:
        raise SegVolError(
            f"onnxruntime could not start {CUDA_PROVIDER} for {path.name} (providers: {session.get_providers()}); "
            "no CUDA device, or the CUDA/cuDNN libraries onnxruntime-gpu needs are missing"
        )
    return session


class OrtCudaBackend(Backend):
    """The three ONNX graphs on ONNX Runtime's CUDA provider, CuPy in and out.

    Args:
        artifacts: the exported artifacts.
        device_id: CUDA device to run on.
        session_options: an ``onnxruntime.SessionOptions`` (default: all graph
            optimisations, errors-only logging).
        precision: ``"fp32"`` or ``"fp16"``: the graph variant to run (same IO).
        tf32: allow TF32 for fp32 matrix work (faster, ~1e-3 relative error;
            off by default for fp32 parity: :func:`cuda_provider_options`).
    """

    name = "onnxruntime"
    device = "cuda"
    _bind_device = "cuda"  # ORT device type of the bound buffers (tests bind host memory as "cpu")

    def __init__(self, artifacts: Artifacts, device_id: int = 0, session_options: Any = None, precision: str = "fp32",
                 tf32: bool = False):
        super().__init__(artifacts.specs)
        self._cp = require_cupy(device_id)
        artifacts.require_precision(precision)
        self.precision = precision
        self.tf32 = tf32
        self.device_id = device_id
        self._device = self._cp.cuda.Device(device_id)
        paths = {g: artifacts.graph_path(g, precision) for g in S.GRAPH_NAMES}
        self._sessions = {g: cuda_session(paths[g], device_id, session_options, tf32=tf32) for g in S.GRAPH_NAMES}
        for graph, session in self._sessions.items():
            check_session_io(session, self.specs[graph], paths[graph], self.specs)

    @classmethod
    def load(cls, root: str | Path, **kwargs: Any) -> OrtCudaBackend:
        return cls(Artifacts.load(root), **kwargs)

    @property
    def xp(self) -> Any:
        return self._cp

    def describe(self) -> str:
        tf32 = ", TF32 on" if self.tf32 and self.precision == "fp32" else ""
        return f"onnxruntime (cuda:{self.device_id}, IO binding, {self.precision}{tf32})"

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        cp, spec = self._cp, self.specs[graph]
        with self._device:
            inputs = device_inputs(cp, spec, feeds)
            outputs = empty_outputs(cp, spec, output_shapes(spec, inputs))
            # ORT's stream cannot wait on a CuPy event: the inputs (and their
            # conversions just queued) must be complete before ORT starts.
            cp.cuda.get_current_stream().synchronize()
            run_bound(
                self._sessions[graph],
                spec,
                inputs,
                outputs,
                device_type=self._bind_device,
                device_id=self.device_id,
                address=lambda a: a.data.ptr,
            )
        return outputs

    def close(self) -> None:
        self._sessions = {}
