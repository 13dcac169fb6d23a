"""``segvol-rt infer`` over a cohort: many scans, the model loaded once.

:func:`run_cohort` runs every case (:mod:`segvol_rt.app.cohort_cases`) through
:func:`segvol_rt.app.infer.run_infer` with one open runtime (the graphs are
opened once; the text embeddings stay cached across cases; each case's
volume, embeddings and window cache are released before the next, so memory
stays flat), writing each case's outputs under ``DIR`` as a single run would
(masks or DICOM SEGs, sidecars; ``--store`` stores each DICOM case's SEG, NIfTI cases are
only written), and the run report
(:mod:`segvol_rt.app.run_report`) after every case.

One case failing (a :class:`~segvol_rt.errors.SegVolError`: a truncated file,
a non-CT series, a failed store...) never stops the run: its one line goes to
the report and to stderr, and the next case starts. :func:`run_cohort`
returns the exit status: 0 when every case succeeded (resumed ones count as
succeeded), 1 when some failed. What is wrong before any case can start (the
options, the output folder, the model) raises, for the CLI's exit status 2.

Prompts: the ``--text`` targets apply to every case; box and point prompts
(scan voxel indices of one scan), ``--prompt-from``, ``--reference`` and
``--out`` are refused with several scans, as is ``--server``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from segvol_rt.app.cohort_cases import Case
from segvol_rt.app.cohort_progress import CohortProgress
from segvol_rt.app.infer import DEFAULT_SUFFIX, DicomInput, InferOptions, InferResult, plan_targets, run_infer
from segvol_rt.app.run_report import RunReport
from segvol_rt.errors import SegVolError
from segvol_rt.io.digests import sha256_file

# options that do not shape the outputs, or must never be written down
_NOT_SETTINGS = ("out", "series", "dicomweb_auth")


def check_cohort_options(opts: InferOptions, server: str | None) -> None:
    """The options a cohort refuses (see the module docstring); raises SegVolError."""
    refused = [name for name, given in (
        ("--box", opts.box is not None), ("--point", bool(opts.points)), ("--prompt-from", opts.prompt_from is not None),
        ("--reference", opts.reference is not None), ("--out", opts.out is not None), ("--series", opts.series is not None),
        ("--server", server is not None)) if given]
    if refused:
        raise SegVolError(f"{', '.join(refused)} cannot be used with several scans (a cohort): spatial prompts and "
                          "labels belong to one scan, --out names one output (use --out-dir), --series one series")
    if not opts.texts:
        raise SegVolError("a cohort is prompted by --text only; give --text NAME (repeatable, or --text all)")


def prepare_out_dir(out_dir: Path) -> Path:
    """``--out-dir``, created when missing; a file there is refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SegVolError(f"--out-dir {out_dir} is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegVolError(f"cannot create --out-dir {out_dir}: {exc.strerror or exc}") from exc
    return out_dir


def output_path(case: Case, out_dir: Path) -> Path:
    """``DIR/<case>_segvol.dcm`` (a DICOM SEG) for DICOM cases, ``DIR/<case>_segvol.nii.gz`` otherwise."""
    return out_dir / f"{case.name}{DEFAULT_SUFFIX}{'.dcm' if case.is_dicom else '.nii.gz'}"


def run_cohort(cases: Sequence[Case], opts: InferOptions, out_dir: Path, open_runtime: Callable[[], Any],
               progress: CohortProgress, force: bool = False) -> tuple[int, RunReport]:
    """Run every case (see the module docstring); returns (exit status, the report)."""
    from segvol_rt.app.console import provenance

    plan_targets(opts)  # option mistakes fail before the model loads
    rt = open_runtime()
    settings = {"options": {k: v for k, v in asdict(opts).items() if k not in _NOT_SETTINGS},
                "provenance": provenance(rt, opts.window_prompts)}
    report = RunReport(out_dir, settings, force)
    try:
        for case in cases:
            progress.start_case(case.name)
            old = report.reusable(case)
            entry = old if old is not None else run_case(case, opts, out_dir, rt, progress)
            report.record(entry, cases)
            _tell(progress, entry)
    finally:
        progress.finish()
    return (1 if report.summary()["failed"] else 0), report


def run_case(case: Case, opts: InferOptions, out_dir: Path, rt: Any, progress: CohortProgress) -> dict[str, Any]:
    """One case through :func:`run_infer`; its report entry, ``ok`` or ``failed`` with the error line."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"case": case.name, "input": case.source, "series": case.series, "status": "failed",
                             "error": None, "outputs": {}, "seconds": {}, "targets": [],
                             "input_signature": case.signature(), "resumed": False}
    try:
        if case.error is not None:
            raise SegVolError(case.error)
        # --store sends DICOM SEGs: a NIfTI case's mask is written, not stored
        case_opts = replace(opts, out=str(output_path(case, out_dir)), store=opts.store if case.is_dicom else None)
        result = run_infer(case.source, case_opts, lambda: rt, progress, dicom=_dicom(case))
        entry.update(status="ok", outputs=_digests(result.files, out_dir), seconds=result.timings,
                     targets=_targets(result))
    except (SegVolError, MemoryError) as exc:
        line = str(exc) if isinstance(exc, SegVolError) else "out of memory"
        entry.update(error=" ".join(line.split()), seconds={"total": time.perf_counter() - start})
    finally:
        rt.release_volume()  # the next case starts from an empty volume: memory stays flat
    return entry


def _dicom(case: Case) -> DicomInput | None:
    """The series the walk found, read without searching its folder again."""
    if case.info is None:
        return None
    from segvol_rt.io.dicom import scan_from_series

    info, notes = case.info, case.notes
    inputs = [("DICOM file", f) for f in case.files]
    return DicomInput(case.source, inputs, Path(case.source), lambda: scan_from_series(info, case.source, notes))


def _digests(files: Sequence[Path], out_dir: Path) -> dict[str, str]:
    return {str(Path(f).relative_to(out_dir)): sha256_file(Path(f)) for f in files}


def _targets(result: InferResult) -> list[dict[str, Any]]:
    out = []
    for label, res in enumerate(result.targets, start=1):
        entry: dict[str, Any] = {"name": res.plan.name, "label": label,
                                 "voxels": int((res.segmentation.mask != 0).sum())}
        if res.statistics is not None:
            entry["statistics"] = res.statistics
        out.append(entry)
    return out


def _tell(progress: CohortProgress, entry: dict[str, Any]) -> None:
    seconds = entry.get("seconds", {}).get("total", 0.0)
    if entry["status"] == "failed":
        progress.case_done(f"failed: {entry['error']}", failed=True)
    elif entry.get("resumed"):
        progress.case_done("resumed (outputs unchanged since the last run)")
    else:
        progress.case_done(f"ok, {len(entry['targets'])} target(s), {seconds:.1f}s")
