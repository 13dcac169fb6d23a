"""PyTorch backend: the export's model run through the same three graph
wrappers the ONNX export traces (:mod:`segvol_rt.export.onnx`), so the token
formulation is the graphs' own. For comparison and debugging; needs the
``export`` extra.

The model comes from ``checkpoint`` when given, else from the checkpoint the
manifest records (``checkpoint.path``, absolute or relative to the artifacts
directory); its sha256 must match the manifest's when the manifest has one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.backends.base import Backend
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S

if TYPE_CHECKING:
    from segvol_rt.export.model.segvol import SegVol
    from segvol_rt.io.artifacts import Artifacts


def checkpoint_path(artifacts: Artifacts, checkpoint: str | os.PathLike[str] | None) -> Path:
    """The checkpoint to build the model from: ``checkpoint`` or the manifest's."""
    if checkpoint is None:
        entry = artifacts.manifest.get("checkpoint") or {}
        recorded = entry.get("path")
        if not recorded:
            raise SegVolError(
                f"the torch backend builds the model from the checkpoint ({entry.get('name', '?')}), and the manifest "
                "records no path to it: pass checkpoint=PATH (CLI: --checkpoint)"
            )
        path = Path(recorded)
        if not path.is_absolute():
            path = artifacts.root / path
    else:
        path = Path(checkpoint)
    if not path.is_file():
        raise SegVolError(f"checkpoint {path} not found; the torch backend builds the model from it")
    return path


class TorchBackend(Backend):
    """Runs the three graph wrappers on a PyTorch :class:`SegVol`.

    Args:
        artifacts: a loaded :class:`segvol_rt.io.artifacts.Artifacts`.
        device: ``"cpu"`` or ``"cuda"``.
        checkpoint: checkpoint path overriding the manifest's.
        model: an already built model (tests); skips the checkpoint.
    """

    name = "torch"

    def __init__(
        self,
        artifacts: Artifacts,
        device: str = "cpu",
        checkpoint: str | os.PathLike[str] | None = None,
        model: SegVol | None = None,
    ):
        super().__init__(artifacts.specs)
        torch = require("torch")
        if device not in ("cpu", "cuda"):
            raise SegVolError(f"device must be 'cpu' or 'cuda', not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise SegVolError(f"torch {torch.__version__} sees no CUDA device; use device='cpu'")
        from segvol_rt.export.onnx import graph_module

        if model is None:
            model = self._build(artifacts, checkpoint)
        self.device = device
        self.torch = torch
        self.model = model.to(device).eval()
        self.modules = {g: graph_module(self.model, g) for g in S.GRAPH_NAMES}

    @staticmethod
    def _build(artifacts: Artifacts, checkpoint: str | os.PathLike[str] | None) -> Any:
        from segvol_rt.export.checkpoint import build_model

        path = checkpoint_path(artifacts, checkpoint)
        model, ckpt = build_model(path)
        expected = (artifacts.manifest.get("checkpoint") or {}).get("sha256")
        if expected and ckpt.sha256 != expected:
            raise SegVolError(f"checkpoint {path} is not the one these artifacts were exported from (sha256 differs)")
        if ckpt.config != artifacts.config:
            raise SegVolError(f"checkpoint {path} has another architecture than these artifacts")
        return model

    def describe(self) -> str:
        return f"torch {self.torch.__version__} ({self.device}, fp32)"

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        torch = self.torch
        spec = self.specs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in spec.input_names]
        with torch.no_grad():
            out = self.modules[graph](*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.detach().cpu().numpy() for name, o in zip(spec.output_names, outs)}
