"""What ``segvol-rt infer`` does once its options are parsed: one scan
(:func:`segvol_rt.app.infer.run_infer`, printed as before) or a cohort
(:func:`segvol_rt.app.cohort.run_cohort`: several scans, a folder given with
``--out-dir``, or ``--list``). Returns the command's exit status.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segvol_rt.app.console import ConsoleReporter, check_choices, load_runtime, provenance_line, say
from segvol_rt.app.infer import InferOptions, InferResult, run_infer
from segvol_rt.errors import SegVolError


@dataclass(frozen=True)
class Engine:
    """Which model runs where: ``--artifacts``, ``--backend``, ``--device``,
    ``--threads``, ``--cache-mb`` (in bytes), ``--precision``, ``--server``."""

    artifacts: str | None = None
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    cache_bytes: int | None = None
    precision: str | None = None
    server: str | None = None


@dataclass(frozen=True)
class Inputs:
    """The scans and how the run reports: scan arguments, ``--list``, ``--out-dir``,
    ``--force``, ``-q``, ``-v``."""

    scans: tuple[str, ...] = ()
    list_file: str | None = None
    out_dir: str | None = None
    force: bool = False
    quiet: bool = False
    verbose: bool = False

    @property
    def cohort(self) -> bool:
        return self.out_dir is not None or self.list_file is not None or len(self.scans) > 1


def infer_command(inputs: Inputs, opts: InferOptions, engine: Engine, on_interrupt: Callable[[str], None]) -> int:
    """Run ``segvol-rt infer``; ``on_interrupt`` receives what an interrupted run leaves."""
    check_choices(engine.backend, engine.device, engine.precision)
    if inputs.force and not inputs.cohort:
        raise SegVolError("--force redoes the cases of a cohort run; it needs --out-dir")
    if inputs.cohort:
        return _cohort(inputs, opts, engine, on_interrupt)
    if not inputs.scans:
        raise SegVolError("no scan: give SCAN, several scans with --out-dir, or --list FILE")
    return _single(inputs, opts, engine)


def _cohort(inputs: Inputs, opts: InferOptions, engine: Engine, on_interrupt: Callable[[str], None]) -> int:
    from segvol_rt.app.cohort import check_cohort_options, prepare_out_dir, run_cohort
    from segvol_rt.app.cohort_cases import find_cases, read_list
    from segvol_rt.app.cohort_progress import CohortProgress

    if inputs.out_dir is None:
        raise SegVolError("several scans need --out-dir DIR (--out names the output of one scan)")
    check_cohort_options(opts, engine.server)
    out_dir = Path(inputs.out_dir)
    sources = list(inputs.scans) + (read_list(inputs.list_file) if inputs.list_file else [])
    cases = find_cases(sources, out_dir)
    prepare_out_dir(out_dir)
    progress = CohortProgress(len(cases), inputs.quiet)
    quiet_load = ConsoleReporter(quiet=inputs.quiet)
    on_interrupt(f"the finished cases are in {out_dir / 'segvol-rt-run.json'}; run again to resume")
    code, report = run_cohort(cases, opts, out_dir, lambda: _local_runtime(engine, quiet_load), progress, inputs.force)
    s = report.summary()
    if not inputs.quiet:
        say(f"{s['ok']} of {len(cases)} case(s) ok ({s['resumed']} resumed), {s['failed']} failed; report {report.path}")
    return code


def _local_runtime(engine: Engine, report: ConsoleReporter) -> Any:
    return load_runtime(engine.artifacts, engine.backend, engine.device, report, engine.threads, engine.cache_bytes,
                        engine.precision)


def _single(inputs: Inputs, opts: InferOptions, engine: Engine) -> int:
    if len(inputs.scans) != 1:
        raise SegVolError("several scans need --out-dir DIR")
    report = ConsoleReporter(quiet=inputs.quiet)
    remote: list[Any] = []  # the served session, closed at the end
    if engine.server is not None:
        from segvol_rt.app.remote import check_remote_options

        check_remote_options(opts, engine.artifacts)
        server = engine.server
        open_runtime: Callable[[], Any] = lambda: _remote_runtime(server, remote)  # noqa: E731
    else:
        open_runtime = lambda: _local_runtime(engine, report)  # noqa: E731
    try:
        result = run_infer(inputs.scans[0], opts, open_runtime, report)
    finally:
        report.close()
        for rt in remote:
            rt.close()
    _print_single(result, report, inputs.verbose)
    return 0


def _print_single(result: InferResult, report: ConsoleReporter, verbose: bool) -> None:
    for res in result.targets:
        seg = res.segmentation
        zoom = f"{seg.n_windows} zoom-in window(s)" if seg.zoom_in_applied else "zoom-out only"
        report.note(f"{res.plan.name}: {int(seg.mask.sum())} voxels, {zoom}")
        if verbose:
            stats = res.stats(result.geometry)
            report.note(f"  prompt {seg.prompt}; ROI (crop) {stats['roi_crop']}, ROI (scan) {stats['roi_scan']}")
        if res.statistics is not None and res.statistics["voxels"]:
            st = res.statistics
            report.note(f"  {st['volume_ml']:.2f} ml, mean {st['mean']:.1f} sd {st['std']:.1f} "
                        f"(min {st['min']:.0f}, max {st['max']:.0f}) HU")
        if res.evaluation is not None:
            for line in res.evaluation.lines():
                say(f"{res.plan.name}: {line}")
    for path in result.files:
        report.note(f"wrote {path}")
    report.note(f"{result.timing_line(detailed=verbose)}; {provenance_line(result.provenance)}")


def _remote_runtime(url: str, opened: list[Any]) -> Any:
    """``infer --server``: a runtime stand-in over a session on the server (:mod:`segvol_rt.app.remote`)."""
    from segvol_rt.app.remote import RemoteRuntime

    rt = RemoteRuntime(url, api_key=os.environ.get("SEGVOL_API_KEY"))
    opened.append(rt)
    return rt
