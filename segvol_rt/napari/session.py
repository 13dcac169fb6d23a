"""The napari widget's model, Qt-free: one scan, one model, the results per target.

:class:`Session` reads a scan the way ``segvol-rt infer`` does (a NIfTI file
or a DICOM series, :func:`segvol_rt.app.infer.dicom_input`), hands it to the
model once - a local :class:`~segvol_rt.runtime.SegVolRuntime` (the demo
model by default) or, with a server URL, a ``segvol-rt serve`` session
(:class:`~segvol_rt.app.remote.RemoteRuntime` over
:class:`~segvol_rt.client.SegVolClient`) - and segments
:class:`~segvol_rt.types.Request` s on it: the zoom-out embedding and the
window embeddings stay cached for every follow-up on that scan.

Each target (by name) keeps its results in order: a follow-up for the same
target supersedes the last one, :meth:`Session.undo` goes back one.
:meth:`Session.save` writes the current result of every target with the
CLI's writers (:func:`segvol_rt.app.infer.write_outputs`: staged, then
committed all together or not at all): ``.nii``/``.nii.gz`` one 0/1 mask per
target plus the JSON sidecar (``--split``), ``.dcm`` (a DICOM scan only) one
DICOM SEG with a segment per target.

Methods that read, load or segment are slow and run off the UI thread;
nothing here touches Qt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segvol_rt.app import infer as I
from segvol_rt.errors import SegVolError
from segvol_rt.io.scan import Scan
from segvol_rt.types import Request, Segmentation


@dataclass(frozen=True)
class ModelChoice:
    """Which model segments: ``server`` (a ``segvol-rt serve`` URL) if given, else the
    local runtime on ``artifacts`` (None: the demo model) with ``backend`` computing
    in ``precision`` (None: the backend's default), as ``SegVolRuntime.load`` takes them."""

    artifacts: str | None = None
    server: str | None = None
    backend: str = "auto"
    threads: int | None = None
    precision: str | None = None

    def describe(self) -> str:
        if self.server:
            return f"segvol-rt server {self.server}"
        computes = f" {self.precision}" if self.precision else ""
        return f"{self.artifacts or 'the demo model'} ({self.backend}{computes})"


def open_model(choice: ModelChoice) -> Any:
    """A local runtime, or a served one; both take ``set_volume`` and ``segment_many``."""
    if choice.server:
        from segvol_rt.app.remote import RemoteRuntime

        return RemoteRuntime(choice.server)
    from segvol_rt.app.console import check_artifacts_dir, demo_artifacts
    from segvol_rt.runtime import SegVolRuntime

    if choice.artifacts is not None:
        check_artifacts_dir(choice.artifacts)
    return SegVolRuntime.load(choice.artifacts or demo_artifacts(), backend=choice.backend, threads=choice.threads,
                              precision=choice.precision)


def target_names(choice: ModelChoice) -> list[str]:
    """The names a text prompt may complete to: the model's text table (local), else SegVol's vocabulary."""
    if not choice.server:
        from segvol_rt.app.console import demo_artifacts
        from segvol_rt.io.artifacts import Artifacts

        arts = Artifacts.load(Path(choice.artifacts) if choice.artifacts else demo_artifacts())
        if arts.has_text_table:
            return list(arts.text_table()[0])
    from segvol_rt.io import vocabulary

    return list(vocabulary.CATEGORIES)


class Session:
    """One scan on one model, and the results per target (see the module docstring)."""

    def __init__(self) -> None:
        self.choice: ModelChoice | None = None
        self.model: Any = None
        self.scan: Scan | None = None
        self.path: Path | None = None
        self.dicom: I.DicomInput | None = None
        self.history: dict[str, list[tuple[Request, Segmentation]]] = {}

    # -- the scan and the model ------------------------------------------------------
    def open(self, path: str | os.PathLike[str], choice: ModelChoice) -> Scan:
        """Read ``path`` (NIfTI file, DICOM folder or file) and give it to the model of
        ``choice`` (loaded, or reconnected, when the choice changed); forgets all results."""
        from segvol_rt.io.nifti import read_scan

        source = str(path)
        dicom = I.dicom_input(source, I.InferOptions())
        scan = read_scan(source) if dicom is None else dicom.read()
        if choice != self.choice or choice.server:  # a served session is per scan
            self.close()
            self.model = open_model(choice)
            self.choice = choice
        self.model.set_volume(scan.data, scan.affine)
        self.scan, self.path, self.dicom, self.history = scan, Path(source), dicom, {}
        return scan

    def close(self) -> None:
        """Close the model (a served session, the backend); the results stay."""
        model, self.model, self.choice = self.model, None, None
        if model is not None:
            model.close()

    # -- segmenting ------------------------------------------------------------------
    def segment(self, name: str, request: Request) -> Segmentation:
        """Segment ``request`` on the open scan as target ``name`` (its new current result)."""
        if self.scan is None or self.model is None:
            raise SegVolError("no scan: open a NIfTI file or a DICOM series first")
        from segvol_rt.pipeline import prompts as P

        box = None if request.box is None else P.parse_box(request.box)
        points = None if request.points is None else P.parse_points(request.points)
        P.validate_prompts(self.scan.shape, request.text, box, points)
        seg = self.model.segment_many([request])[0]
        self.history.setdefault(name, []).append((request, seg))
        return seg

    def current(self, name: str) -> Segmentation | None:
        runs = self.history.get(name)
        return runs[-1][1] if runs else None

    def undo(self, name: str) -> Segmentation | None:
        """Drop ``name``'s last result; its previous one (None when there is none left)."""
        runs = self.history.get(name)
        if not runs:
            raise SegVolError(f"nothing to undo for {name!r}")
        runs.pop()
        if not runs:
            del self.history[name]
        return self.current(name)

    # -- saving ----------------------------------------------------------------------
    def save(self, out: str | os.PathLike[str]) -> list[Path]:
        """Write every target's current result to ``out`` (see the module docstring);
        returns the files written."""
        if self.scan is None or self.path is None or not self.history:
            raise SegVolError("nothing to save: segment a target first")
        out_path = Path(out)
        split = not out_path.name.lower().endswith(".dcm")
        opts = I.InferOptions(texts=tuple(self.history), out=str(out_path), split=split)
        plans = _plans([(name, runs[-1][0]) for name, runs in self.history.items()])
        plan = I.output_plan(self.path, opts, plans, self.dicom)
        results = [I.TargetResult(p, self.history[p.name][-1][1]) for p in plans]
        return I.write_outputs(plan, results, self.scan, self.model, opts)


def _plans(items: Sequence[tuple[str, Request]]) -> list[I.TargetPlan]:
    """One plan per target, file-name slugs made unique (``liver``, ``liver_2``) as the CLI does."""
    seen: dict[str, int] = {}
    plans = []
    for name, request in items:
        base = I.slug(name)
        seen[base] = seen.get(base, 0) + 1
        plans.append(I.TargetPlan(name, base if seen[base] == 1 else f"{base}_{seen[base]}", request))
    return plans
