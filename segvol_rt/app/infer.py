"""``segvol-rt infer``: segment targets of one scan and write the masks.

The flow behind the command, so the CLI only parses and prints:
:func:`plan_targets` turns the options into scan-space requests (no file is
touched, so option mistakes fail at once); :func:`run_infer` reads and checks
the scan, validates every prompt and the output paths, loads the model,
segments target by target (zoom-out encoding and window embeddings are cached
across targets by the runtime), optionally evaluates against a reference label
(:mod:`segvol_rt.evaluation`) and only then writes, so a bad input leaves no
output file.

Outputs (scan space, the input's affine and header, see :func:`output_plan`):

* one target: ``--out`` (default ``<scan stem>_segvol.nii.gz`` beside the scan), uint8 0/1;
* several targets: one multi-label uint8 file, label ``i`` = the ``i``-th
  target (where targets overlap, the later target wins), plus a JSON sidecar
  ``<stem>.json`` naming the labels with per-target statistics; or with
  ``split``, one 0/1 file per target, ``<stem>_<name>.nii.gz`` (sidecar too);
* ``probabilities``: float32 sigmoid maps ``<stem>_prob[_<name>].nii.gz``;
* ``statistics``: per-target measurements (:mod:`segvol_rt.pipeline.measure`) in the sidecar,
  written for one target too.

The sidecar records the sha256 of every file it describes and the run's
provenance (:func:`segvol_rt.app.console.provenance`). The files of a run are
one output set (:mod:`segvol_rt.io.outputs`): checked before any work (no
output is an input - the scan or a label map, also through a symlink, a hard
link or ``..`` -; every name fits the file system), staged, then committed
all together or not at all.

Box and points are voxel indices ``(i, j, k)`` of the input file as nibabel
loads it (3D Slicer's IJK), inclusive; see :mod:`segvol_rt.pipeline.prompts`.

DICOM (:func:`dicom_input`): a folder or file is a DICOM series, read in
dcm2niix's voxel order (:mod:`segvol_rt.io.dicom`; prompts in that grid), a
``http(s)://.../studies/S/series/T`` URL is fetched over DICOMweb
(:mod:`segvol_rt.app.dicomweb`). Its headers are read and the series chosen
(``series``) before the output checks; an output ending in ``.dcm`` (the
default for DICOM input) is a DICOM SEG (:mod:`segvol_rt.io.dicom_seg`), one
segment per target (``split``: one SEG per target); ``store`` sends the
committed SEG files with STOW-RS, last.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt.app.console import Reporter, provenance
from segvol_rt.app.output_files import is_gz, is_seg, probability_bytes
from segvol_rt.errors import SegVolError
from segvol_rt.ops.boxes import InclusiveBox
from segvol_rt.pipeline import prompts as P
from segvol_rt.timing import StageClock
from segvol_rt.types import Request, Segmentation

if TYPE_CHECKING:
    from segvol_rt.io.scan import Scan
    from segvol_rt.pipeline.geometry import Geometry
    from segvol_rt.runtime import SegVolRuntime

DEFAULT_SUFFIX = "_segvol"
MAX_TARGETS = 255  # labels of a uint8 multi-label file


@dataclass(frozen=True)
class InferOptions:
    """Everything ``segvol-rt infer`` is asked, prompts as typed (scan space).

    ``prompt_from`` ("LABEL.nii.gz:ID") derives zoom-out-space prompts from a
    reference label as the official demo does (box: ``prompt_box``, points:
    ``prompt_points``); ``reference`` scores the result against a label
    (defaults to ``prompt_from``'s label)."""

    texts: tuple[str, ...] = ()
    box: str | None = None
    points: tuple[str, ...] = ()
    out: str | None = None
    split: bool = False
    probabilities: bool = False
    zoom_in: bool = True
    window_prompts: str = "official"
    reorient: str | None = None
    seed: int = 0
    prompt_from: str | None = None
    prompt_box: bool = True
    prompt_points: bool = False
    reference: str | None = None
    series: str | None = None  # DICOM input: the SeriesInstanceUID (segvol_rt.io.dicom)
    store: str | None = None  # DICOMweb service root to STOW-RS the SEG files to, after they are written
    dicomweb_auth: str | None = None  # USER:PASSWORD for DICOMweb (never in a URL)
    statistics: bool = False  # per-target volume, intensity and bounding box (segvol_rt.pipeline.measure)
    series_description: str | None = None  # DICOM SEG SeriesDescription (default: the targets)

    @property
    def evaluating(self) -> bool:
        return self.prompt_from is not None or self.reference is not None


@dataclass(frozen=True)
class TargetPlan:
    """One target: its display name, file-name slug and scan-space request."""

    name: str
    slug: str
    request: Request


# -- planning (no IO) ------------------------------------------------------------


def plan_targets(opts: InferOptions) -> list[TargetPlan]:
    """Validate the options and make one request per ``--text`` (box and points
    shared by all), or a single box/points target; raises SegVolError."""
    from segvol_rt.io.vocabulary import expand_all

    texts = expand_all([t.strip() for t in opts.texts])
    if any(not t for t in texts):
        raise SegVolError("--text is empty; give a target name or phrase")
    if opts.prompt_from is not None:
        return [_evaluation_target(opts, opts.prompt_from, texts)]
    box = P.parse_box(opts.box) if opts.box is not None else None
    points = P.parse_points(list(opts.points)) if opts.points else None
    if not texts and box is None and points is None:
        raise SegVolError(
            "no prompt: give --text NAME, --box i0,j0,k0,i1,j1,k1, --point i,j,k or --prompt-from LABEL:ID"
        )
    if len(texts) > MAX_TARGETS:
        raise SegVolError(f"{len(texts)} targets; a multi-label file holds at most {MAX_TARGETS}")
    if opts.reference is not None and len(texts) > 1:
        raise SegVolError("--reference scores one target; give a single --text")
    common: dict[str, Any] = dict(box=box, points=points, zoom_in=opts.zoom_in, probabilities=opts.probabilities, seed=opts.seed,
                  window_prompts=opts.window_prompts)
    if not texts:
        name = "+".join(k for k, v in (("box", box), ("points", points)) if v is not None)
        return _with_slugs([(name, Request(**common))])
    return _with_slugs([(t, Request(text=t, **common)) for t in texts])


def _evaluation_target(opts: InferOptions, spec: str, texts: list[str]) -> TargetPlan:
    if opts.box is not None or opts.points:
        raise SegVolError("--prompt-from derives the box and points from the label; drop --box/--point")
    if len(texts) > 1:
        raise SegVolError("--prompt-from makes one target; give at most one --text")
    if not (opts.prompt_box or opts.prompt_points):
        raise SegVolError("--prompt-from with --no-prompt-box needs --prompt-points")
    from segvol_rt.io.nifti import parse_label_spec

    parse_label_spec(spec)  # a malformed spec fails before any file is read
    text = texts[0] if texts else None
    name = text or f"label {parse_label_spec(spec)[1]}"
    req = Request(text=text, zoom_in=opts.zoom_in, probabilities=opts.probabilities, seed=opts.seed,
                  window_prompts=opts.window_prompts)
    return _with_slugs([(name, req)])[0]


def slug(name: str) -> str:
    """A file-name-safe form of a target name: ``"left kidney"`` -> ``left_kidney``."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return out or "target"


def _with_slugs(items: Sequence[tuple[str, Request]]) -> list[TargetPlan]:
    seen: dict[str, int] = {}
    plans = []
    for name, req in items:
        base = slug(name)
        seen[base] = seen.get(base, 0) + 1
        plans.append(TargetPlan(name, base if seen[base] == 1 else f"{base}_{seen[base]}", req))
    return plans


# -- output paths -------------------------------------------------------------------


def _split_name(path: Path) -> tuple[str, str]:
    """(stem, suffix) with ``.nii.gz`` as one suffix."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return path.stem, path.suffix


@dataclass
class OutputPlan:
    """Files to write: ``masks`` {file: target indices (0-based) it holds, in label
    order}, the JSON ``sidecar`` (or None), the probability maps per target, and
    the ``inputs`` (what, path) no output may be."""

    masks: dict[Path, list[int]]
    sidecar: Path | None
    probabilities: dict[int, Path] = field(default_factory=dict)
    inputs: list[tuple[str, Path]] = field(default_factory=list)
    source: str = ""  # the input as given (a DICOMweb URL has no path)

    def files(self) -> list[Path]:
        """Every output, in commit order: masks, probability maps, the sidecar last."""
        out = list(self.masks) + list(self.probabilities.values())
        return out + ([self.sidecar] if self.sidecar else [])


_NAME_HINT = "shorten --out or the --text (the target names name the --split and --probabilities files)"


def output_plan(scan_path: Path, opts: InferOptions, targets: Sequence[TargetPlan], dicom: DicomInput | None = None
                ) -> OutputPlan:
    """Where each output goes (see the module docstring); refuses the input itself.
    With a DICOM input (``dicom``), ``--out`` may be a ``.dcm`` SEG, the default."""
    if opts.out is not None:
        out = Path(opts.out)
        allowed = (".nii", ".nii.gz", ".dcm") if dicom is not None else (".nii", ".nii.gz")
        if not out.name.lower().endswith(allowed):
            raise SegVolError(f"--out {out} must end in {', '.join(allowed[:-1])} or {allowed[-1]}"
                              + ("" if dicom is not None else " (a .dcm SEG needs a DICOM input)"))
    elif dicom is not None:
        out = dicom.default_out
    else:
        out = scan_path.with_name(_split_name(scan_path)[0] + DEFAULT_SUFFIX + ".nii.gz")
    if opts.store is not None and not is_seg(out):
        raise SegVolError("--store sends a DICOM SEG; give --out ending in .dcm")
    stem, suffix = _split_name(out)
    beside = out.with_name
    many = len(targets) > 1
    if opts.split:
        masks = {beside(f"{stem}_{t.slug}{suffix}"): [i] for i, t in enumerate(targets)}
    else:
        masks = {out: list(range(len(targets)))}
    probs: dict[int, Path] = {}
    if opts.probabilities:
        for i, t in enumerate(targets):
            probs[i] = beside(f"{stem}_prob_{t.slug}{suffix}" if many else f"{stem}_prob{suffix}")
    inputs = input_paths(scan_path, opts) if dicom is None else dicom.inputs + input_paths(scan_path, opts)[1:]
    plan = OutputPlan(masks, beside(f"{stem}.json") if many or opts.split or opts.statistics else None, probs, inputs,
                      dicom.label if dicom is not None else str(scan_path))
    from segvol_rt.io.outputs import check_outputs

    check_outputs(plan.files(), plan.inputs, name_hint=_NAME_HINT)
    return plan


@dataclass
class DicomInput:
    """A DICOM series chosen before any work: where it is, its files (inputs no output
    may be), the default SEG path and how to read its pixels."""

    label: str  # the folder, file or URL as given
    inputs: list[tuple[str, Path]]  # every file of the folder; empty for a DICOMweb series
    default_out: Path
    read: Callable[[], Any]  # -> DicomScan (notes: skipped files, UID fallbacks)


def dicom_input(source: str, opts: InferOptions) -> DicomInput | None:
    """The DICOM series ``source`` names (a folder, a DICOM file or a DICOMweb
    series URL), its headers read and the series chosen; None for a NIfTI file."""
    from segvol_rt.app import dicomweb as W

    if W.is_url(source):
        url = W.parse_series_url(source)
        auth = W.parse_auth(opts.dicomweb_auth)
        from segvol_rt.io.dicom import read_datasets

        def fetch_and_read() -> Any:  # after the output checks: the fetch is the slow part
            return read_datasets(W.fetch_series(url, auth), str(url), opts.series)

        default = Path.cwd() / f"{slug(url.series)}{DEFAULT_SUFFIX}.dcm"
        return DicomInput(str(url), [], default, fetch_and_read)
    from segvol_rt.io.scans import is_dicom

    if not is_dicom(source):
        if opts.series is not None:
            raise SegVolError(f"--series selects a DICOM series, but {source} is not a DICOM folder or file")
        return None
    from segvol_rt.io import dicom as D

    disc = D.discover(source)
    info = D.choose_series(disc, opts.series, source)
    files = disc.inputs(info)  # every file read, of any series: none may be an output
    p = Path(source).resolve()  # "." or "/" has no name to build the default SEG's name from
    default = p.with_name(p.name + DEFAULT_SUFFIX + ".dcm") if p.is_dir() else p.with_name(p.stem + DEFAULT_SUFFIX + ".dcm")
    return DicomInput(source, files, default, lambda: D.scan_from_series(info, source, disc.notes))


def input_paths(scan_path: Path, opts: InferOptions) -> list[tuple[str, Path]]:
    """(what, path) of every file the run reads: the scan and the label maps."""
    from segvol_rt.io.nifti import parse_label_spec

    inputs = [("scan", Path(scan_path))]
    for option, spec in (("--reference", opts.reference), ("--prompt-from", opts.prompt_from)):
        if spec is not None:
            inputs.append((f"label map ({option})", parse_label_spec(spec)[0]))
    return inputs


# -- the run -------------------------------------------------------------------------


@dataclass
class TargetResult:
    """One target's outcome: plan, segmentation, optional evaluation."""

    plan: TargetPlan
    segmentation: Segmentation
    evaluation: Any = None
    statistics: dict[str, Any] | None = None  # segvol_rt.pipeline.measure.mask_statistics, when asked for

    def stats(self, geometry: Geometry) -> dict[str, Any]:
        seg = self.segmentation
        roi_scan = None
        if seg.roi is not None:
            hi = [h - 1 for h in seg.roi.hi]
            roi_scan = geometry.box((*seg.roi.lo, *hi), "crop", "scan")
        out = {
            "name": self.plan.name,
            "prompt": seg.prompt,
            "voxels": int(np.count_nonzero(seg.mask)),
            "roi_crop": None if seg.roi is None else list(seg.roi.official),
            "roi_scan": None if roi_scan is None else list(roi_scan),
            "windows": seg.n_windows,
            "zoom_in_applied": seg.zoom_in_applied,
            "no_foreground": seg.no_foreground,
        }
        if self.evaluation is not None:
            out.update(self.evaluation.as_dict())
        if self.statistics is not None:
            out["statistics"] = self.statistics
        return out


@dataclass
class InferResult:
    """What :func:`run_infer` did: per-target results, files written, seconds per stage."""

    targets: list[TargetResult]
    files: list[Path]
    timings: dict[str, float]
    backend: str
    geometry: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def timing_line(self, detailed: bool = False) -> str:
        """``time: read 0.12s, ...; total 1.0s``: the runtime's stages grouped, or all of them."""
        seconds = {k: v for k, v in self.timings.items() if k != "total"}
        if not detailed:
            grouped: dict[str, float] = {}
            for name, sec in seconds.items():
                group = _STAGE_GROUPS.get(name, name)
                grouped[group] = grouped.get(group, 0.0) + sec
            seconds = grouped
        parts = [f"{k} {v:.2f}s" for k, v in seconds.items()]
        return "time: " + ", ".join(parts) + f"; total {self.timings.get('total', 0.0):.2f}s"


# runtime stage -> the group the one-line summary shows
_STAGE_GROUPS = {
    "text": "prompts",
    "encode_zoom_out": "zoom-out", "decode_zoom_out": "zoom-out", "upsample_zoom_out": "zoom-out",
    "plan_windows": "zoom-in", "encode_windows": "zoom-in", "decode_windows": "zoom-in", "blend": "zoom-in",
    "paste": "zoom-in",
}


RuntimeFactory = Callable[[], Any]


def run_infer(scan_path: str | Path, opts: InferOptions, open_runtime: RuntimeFactory,
              report: Reporter | None = None, dicom: DicomInput | None = None) -> InferResult:
    """Segment ``scan_path`` as ``opts`` ask, with the runtime ``open_runtime()`` gives
    (a cohort passes its one open runtime, and ``dicom``, the series it found already)."""
    from segvol_rt.io.nifti import read_scan

    report = report or Reporter()
    start = time.perf_counter()
    clock = StageClock()
    targets = plan_targets(opts)
    if opts.store is not None:
        from segvol_rt.app.dicomweb import parse_auth, parse_store_url

        parse_store_url(opts.store)  # both before any work: the store comes last
        parse_auth(opts.dicomweb_auth)
    with clock.stage("read"):  # DICOM: headers read and the series chosen, no pixels yet
        dicom = dicom if dicom is not None else dicom_input(str(scan_path), opts)
    # a DICOMweb series has no local path; its default output is named after the series, in the current folder
    scan_path = Path(dicom.default_out) if dicom is not None and not dicom.inputs else Path(scan_path)
    outputs = output_plan(scan_path, opts, targets, dicom)  # path mistakes fail before any work
    _check_series_description(opts, outputs)
    report.stage("reading the scan")
    with clock.stage("read"):
        scan = read_scan(scan_path) if dicom is None else dicom.read()
    for note in scan.notes:  # header fixes that change the geometry, DICOM fallbacks, in our words
        report.warn(note)
    if opts.prompt_from is None:  # evaluation prompts come from the label, later
        for t in targets:
            P.validate_prompts(scan.shape, t.request.text, _box(t.request), _points(t.request))
    report.stage("loading the model")
    with clock.stage("load"):
        rt = open_runtime()
    before = dict(rt.stats["timings"])  # an open runtime (a cohort's) has earlier cases' seconds
    report.stage("preprocessing")
    # from here on only the statistics read voxel values (the writers need the header):
    # without them the runtime normalises the scan's own array, not a copy of it
    voxels = scan.data if opts.statistics else None
    rt.set_volume(scan.data, scan.affine, reorient=opts.reorient, overwrite_input=voxels is None)
    scan = scan.without_voxels()
    report.stage(f"segmenting {len(targets)} target(s)", total=len(targets))
    results = _segment(rt, scan, opts, targets, report, clock)
    if voxels is not None:
        with clock.stage("statistics"):
            _add_statistics(results, voxels, scan.affine)
    report.stage("writing", total=1)
    with clock.stage("write"):
        files = write_outputs(outputs, results, scan, rt, opts)
    if opts.store is not None:  # last: a store cannot be rolled back
        from segvol_rt.app import dicomweb as W

        report.stage("storing the SEG (STOW-RS)")
        with clock.stage("store"):
            segs = [p for p in files if is_seg(p)]
            stored = W.store(W.parse_store_url(opts.store), W.parse_auth(opts.dicomweb_auth), segs)
        report.note(f"stored {len(stored)} SEG instance(s) at {opts.store}")
    report.close()
    timings = _merge_timings(clock, rt, before)
    timings["total"] = time.perf_counter() - start
    return InferResult(results, files, timings, rt.backend_reason, rt.geometry, provenance(rt, opts.window_prompts))


def _add_statistics(results: Sequence[TargetResult], voxels: np.ndarray, affine: np.ndarray) -> None:
    """Each result's mask statistics over the scan's ``(I, J, K)`` voxel values."""
    from segvol_rt.pipeline.measure import mask_statistics

    for res in results:
        res.statistics = mask_statistics(np.asarray(res.segmentation.mask), voxels, affine)


def _box(req: Request) -> InclusiveBox | None:
    return None if req.box is None else P.parse_box(req.box)


def _points(req: Request) -> P.Points | None:
    return None if req.points is None else P.parse_points(req.points)


def _segment(rt: SegVolRuntime, scan: Scan, opts: InferOptions, targets: Sequence[TargetPlan], report: Reporter,
             clock: StageClock) -> list[TargetResult]:
    if not opts.evaluating:
        return _segment_batched(rt, opts, targets, report)
    from segvol_rt import evaluation as E

    source = None
    with clock.stage("reference"):
        reference = E.load_reference(opts.reference or opts.prompt_from or "", scan, rt.geometry)
        if opts.prompt_from is not None:
            same = opts.reference in (None, opts.prompt_from)
            source = reference if same else E.load_reference(opts.prompt_from, scan, rt.geometry)
    results = []
    for t in targets:
        if source is not None:
            box, points = E.official_prompts(source, opts.prompt_box, opts.prompt_points, opts.seed)
            run = E.zoom_space_runner(rt, t.request.text, box, points, opts.seed, opts.probabilities,
                                      opts.window_prompts)
        else:
            run = E.scan_space_runner(rt, t.request)
        evaluation = E.evaluate(run, reference, zoom_in=opts.zoom_in)
        results.append(_target_done(TargetResult(t, evaluation.final, evaluation), opts, report))
    return results


# targets per runtime call without evaluation: they share the decoder's batches (and the embeddings, as
# every call on one volume does); each holds a crop-sized float32 coarse volume during the call, hence a bound
TARGET_BATCH = 8


def _segment_batched(rt: SegVolRuntime, opts: InferOptions, targets: Sequence[TargetPlan],
                     report: Reporter) -> list[TargetResult]:
    results = []
    for start in range(0, len(targets), TARGET_BATCH):
        chunk = targets[start : start + TARGET_BATCH]
        # no crop logits kept: they are a float32 crop-sized volume per target
        for t, seg in zip(chunk, rt.segment_many([t.request for t in chunk])):
            results.append(_target_done(TargetResult(t, seg), opts, report))
    return results


def _target_done(res: TargetResult, opts: InferOptions, report: Reporter) -> TargetResult:
    if opts.zoom_in and res.segmentation.no_foreground:
        report.warn(f"{res.plan.name}: no foreground in the coarse pass; zoom-in skipped")
    report.advance(f"{res.plan.name}: {res.segmentation.n_windows} zoom-in window(s)")
    return res


def _merge_timings(clock: StageClock, rt: SegVolRuntime, before: dict[str, float]) -> dict[str, float]:
    """Own stages (read, load, reference, write) around the runtime's since ``before``
    (minus its array-wrapping 'read'), in pipeline order."""
    mine = clock.as_dict()
    theirs = {k: v - before.get(k, 0.0) for k, v in rt.stats["timings"].items()
              if k != "read" and v != before.get(k)}  # stages this case ran
    out: dict[str, float] = {k: mine[k] for k in ("read", "load", "reference") if k in mine}
    out.update(theirs)
    for key in ("statistics", "write", "store"):
        if key in mine:
            out[key] = mine[key]
    return out


# -- writing -----------------------------------------------------------------------------


def write_outputs(plan: OutputPlan, results: Sequence[TargetResult], scan: Scan, rt: SegVolRuntime,
                  opts: InferOptions) -> list[Path]:
    """Write masks, probability maps and the sidecar as one output set (all or
    nothing, :mod:`segvol_rt.io.outputs`); returns the files written."""
    from segvol_rt.io.nifti import json_bytes, mask_bytes
    from segvol_rt.io.outputs import OutputSet, check_outputs

    check_outputs(plan.files(), plan.inputs, name_hint=_NAME_HINT)  # again: the files may have changed meanwhile
    with OutputSet(plan.files()) as out:
        for path, indices in plan.masks.items():
            if is_seg(path):
                out.stage(path, seg_file(scan, [results[i] for i in indices], rt, opts))
                continue
            labels = np.zeros(scan.shape, dtype=np.uint8, order="F")
            for label, i in enumerate(indices, start=1):
                # where targets overlap the later one wins (documented in --help)
                labels[np.asarray(results[i].segmentation.mask) > 0] = label if len(indices) > 1 else 1
            out.stage(path, mask_bytes(labels, scan, is_gz(path)))
        for i, path in plan.probabilities.items():
            probs = results[i].segmentation.probabilities
            if probs is None:
                raise SegVolError("probabilities were asked for but not computed")  # a bug, kept one line
            if is_seg(path):  # a FRACTIONAL (probability) SEG
                out.stage(path, seg_file(scan, [results[i]], rt, opts, probs))
            else:
                out.stage(path, probability_bytes(probs, scan, is_gz(path)))
        if plan.sidecar is not None:
            doc = sidecar(plan, results, scan, rt, opts, {p.name: d for p, d in out.digests().items()})
            out.stage(plan.sidecar, json_bytes(doc, plan.sidecar))
        return out.commit()


def _check_series_description(opts: InferOptions, plan: OutputPlan) -> None:
    """``--series-description`` names a DICOM SEG output's series: refused without one, or empty."""
    if opts.series_description is None:
        return
    if not any(is_seg(p) for p in plan.masks):
        raise SegVolError("--series-description names a DICOM SEG's series: give a .dcm --out (DICOM input)")
    if not opts.series_description.strip():
        raise SegVolError("--series-description is empty")


def seg_file(scan: Scan, results: Sequence[TargetResult], rt: SegVolRuntime, opts: InferOptions,
              probabilities: Any = None) -> bytes:
    """A binary DICOM SEG, one segment per target (overlaps kept: segments are independent),
    or with ``probabilities`` (one target's ``(I, J, K)`` map) a FRACTIONAL one; read back and checked."""
    from segvol_rt.io.dicom_seg import Algorithm, seg_bytes

    prov = provenance(rt, opts.window_prompts)
    algo = Algorithm(prov["segvol_rt_version"], prov["checkpoint_sha256"])
    names = [r.plan.name for r in results]
    if probabilities is not None:
        return seg_bytes(scan, [np.asarray(probabilities, dtype=np.float32)], names, algo, fractional=True,
                         description=opts.series_description)
    masks = [np.asarray(r.segmentation.mask) > 0 for r in results]
    return seg_bytes(scan, masks, names, algo, description=opts.series_description)


def sidecar(plan: OutputPlan, results: Sequence[TargetResult], scan: Scan, rt: SegVolRuntime, opts: InferOptions,
            digests: dict[str, str] | None = None) -> dict:
    """The JSON sidecar: label names, per-target statistics and files, the
    sha256 of each file it describes (``files``: name -> hex) and the run's provenance."""
    file_of = {i: p.name for p, idx in plan.masks.items() for i in idx}
    targets = []
    for i, res in enumerate(results):
        entry = res.stats(rt.geometry)
        entry["file"] = file_of[i]
        if not opts.split:
            entry["label"] = i + 1
        if i in plan.probabilities:
            entry["probabilities"] = plan.probabilities[i].name
        targets.append(entry)
    doc: dict[str, Any] = {"scan": str(scan.path) if scan.path is not None else plan.source, "backend": rt.backend_reason,
                           "provenance": provenance(rt, opts.window_prompts)}
    if not opts.split:
        doc["labels"] = {str(i + 1): r.plan.name for i, r in enumerate(results)}
        dcm = any(is_seg(p) for p in plan.masks)
        doc["overlaps"] = ("one DICOM SEG segment per target (segment number = label); overlaps are kept" if dcm
                           else "where targets overlap, the later target's label wins")
    doc["targets"] = targets
    doc["files"] = {name: {"sha256": digest} for name, digest in (digests or {}).items()}
    return doc
