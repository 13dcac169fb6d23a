"""``segvol-rt infer --server URL``: the usual command, with the model on a
``segvol-rt serve`` server.

:class:`RemoteRuntime` stands in for :class:`~segvol_rt.runtime.SegVolRuntime`
in :func:`segvol_rt.app.infer.run_infer`: the scan is read and the outputs are
written here, as in a local run (same files, sidecar and geometry); the
volume is uploaded once and each target is one request in its session.
What only a local runtime can give is refused up front (:func:`check_remote_options`):
probability maps (float volumes), evaluation against a label (crop-space
logits) and reorientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from segvol_rt.app.infer import InferOptions
from segvol_rt.errors import SegVolError
from segvol_rt.types import Request, Segmentation


def check_remote_options(opts: InferOptions, artifacts: str | None) -> None:
    """Options a served run cannot honour, refused before any file is read."""
    refused = [name for name, given in (
        ("--probabilities", opts.probabilities), ("--prompt-from", opts.prompt_from is not None),
        ("--reference", opts.reference is not None), ("--reorient", opts.reorient is not None),
        ("--artifacts", artifacts is not None),
    ) if given]
    if refused:
        raise SegVolError(f"{', '.join(refused)}: not available with --server (the server returns masks of its own model); "
                          "run without --server for these")


class RemoteRuntime:
    """The part of the SegVolRuntime surface ``run_infer`` uses, over a session."""

    def __init__(self, url: str, api_key: str | None = None):
        from segvol_rt.client import SegVolClient

        self.client = SegVolClient(url, api_key=api_key)
        self.session: Any = None
        self.timings: dict[str, float] = {}
        self.backend_reason = f"segvol-rt server {self.client.url}"
        self.backend = SimpleNamespace(name="server", device="?", precision=None, threads=None)
        self.provenance: dict[str, Any] = {}  # the server's, once a session is open

    def set_volume(self, volume: np.ndarray, affine: np.ndarray, reorient: str | None = None,
                   overwrite_input: bool = False) -> None:
        """Open a server session on ``volume`` (uploaded; ``overwrite_input`` is the
        local runtime's and changes nothing here: the server preprocesses its own copy)."""
        if reorient is not None:
            raise SegVolError("--reorient is not available with --server")
        self.session = self.client.open_session(volume, affine)
        prov = self.session.provenance
        upload = self.session.upload
        self.timings["upload"] = upload.seconds if upload is not None else 0.0
        self.backend = SimpleNamespace(name=f"{prov.get('backend')} (served)", device=prov.get("device"),
                                       precision=prov.get("precision"), threads=prov.get("threads"))
        from segvol_rt._version import __version__

        # as a local run records it, with the served backend named as served
        self.provenance = {**prov, "segvol_rt_version": __version__, "backend": self.backend.name}
        self.backend_reason = f"segvol-rt server {self.client.url}: {prov.get('backend')} on {prov.get('device')}"

    @property
    def geometry(self) -> Any:
        return self.session.geometry

    @property
    def stats(self) -> dict[str, Any]:
        return {"timings": dict(self.timings)}

    def segment_many(self, requests: Sequence[Request]) -> list[Segmentation]:
        out = []
        for req in requests:
            if req.probabilities or req.keep_logits or req.on_device:
                raise SegVolError("probabilities, logits and device arrays are not served")
            seg = self.session.segment(req.text, req.box, req.points, zoom_in=req.zoom_in, seed=req.seed,
                                       window_prompts=req.window_prompts)
            for stage, sec in seg.timings.items():
                self.timings[stage] = self.timings.get(stage, 0.0) + sec
            out.append(seg)
        return out

    def close(self) -> None:
        """Close the session (if one was opened) and the connection."""
        try:
            if self.session is not None and not self.session.closed:
                self.session.close()
        finally:
            self.client.close()
