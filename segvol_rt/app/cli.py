"""The ``segvol-rt`` command line: a thin typer layer over the public API.

Every command parses its options, calls the API and prints. What the user
sees when something goes wrong is one line on stderr, never a traceback:

* a :class:`~segvol_rt.errors.SegVolError` or a bad option (click's usage
  errors, without typer's box): ``error: ...``, exit code 2;
* SIGINT (Ctrl-C) and SIGTERM (:mod:`segvol_rt.app.signals`, installed by
  the console script before the imports, :mod:`segvol_rt.app.entry`): the
  handlers raise :class:`Interrupted`, so the staged outputs are removed on the
  way out (:mod:`segvol_rt.io.outputs`), then ``interrupted; nothing was
  written`` (exit 130) or ``terminated; ...`` (exit 143); a signal that
  arrives while an output set is being committed is handled once the set is
  complete, and one after the commit - up to the process's exit - says the
  outputs had been written;
* a closed stdout (``segvol-rt infer ... | head -1``) stops the printing only
  (:func:`segvol_rt.app.console.say`); the run completes and exits normally.
"""

from __future__ import annotations

import math
import signal
import sys
from typing import Any

import typer

from segvol_rt.app import signals
from segvol_rt.app.console import say, silence_stdout
from segvol_rt.errors import SegVolError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SegVol deployment SDK: export, build, infer, targets, bench, demo, serve.",
)


Interrupted = signals.Interrupted
_state = signals.state  # the commands set "interrupted": what an interruption leaves (build: its engines)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure ends in one stderr line and an exit code.

    The signal handlers are the CLI's for the call only (a caller in the same
    process gets its own back); a signal its parent ignores (a background job's
    SIGINT) stays ignored. The console script starts in
    :func:`segvol_rt.app.entry.main`, which installs them before this module is imported."""
    previous = signals.install()
    signals.start_run()
    try:
        code = _run(argv)
    finally:
        signals.restore(previous)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    from segvol_rt.io.outputs import held_signals

    try:
        code = app(args=argv, standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - each kind becomes one line and an exit code; bugs re-raise
        with held_signals():  # the line and the decision together: a signal now is handled once it is printed
            return signals.decided(_exit_code(exc))
    with held_signals():
        if _state["signal"] is not None:  # swallowed on the way (a failed optional import), yet the run completed
            return signals.decided(signals.report(_state["signal"], True))
        return signals.decided(code if isinstance(code, int) else 0)


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):
        raise exc
    if _state["signal"] is not None:
        return signals.report(_state["signal"], signals.outputs_written(exc))
    if isinstance(exc, (Interrupted, KeyboardInterrupt, typer.Abort)):
        return signals.report(getattr(exc, "signum", signal.SIGINT), signals.outputs_written(exc))
    if isinstance(exc, SegVolError):
        return _fail(str(exc), 2)
    if isinstance(exc, _NO_ARGS_IS_HELP):
        say(exc.ctx.get_help() if exc.ctx else str(exc))  # bare `segvol-rt`: the help, as before
        return 2
    if isinstance(exc, _CLICK.UsageError):
        where = exc.ctx.command_path if exc.ctx else "segvol-rt"
        return _fail(f"{exc.format_message()} (see `{where} --help`)", 2)
    if isinstance(exc, _CLICK.ClickException):
        return _fail(exc.format_message(), exc.exit_code)
    if isinstance(exc, BrokenPipeError):  # a stdout write outside console.say
        silence_stdout()
        return 0
    raise exc  # a bug in segvol-rt: the traceback is for its developers


class _NoSuchError(Exception):
    """Stands for an exception class this click version lacks (it is never raised)."""


# click's exceptions, from click itself or typer's vendored copy (typer >= 0.2x), wherever typer takes them
_CLICK: Any = sys.modules[typer.BadParameter.__module__]
_NO_ARGS_IS_HELP: Any = getattr(_CLICK, "NoArgsIsHelpError", _NoSuchError)  # click < 8.2 prints the help itself


def _fail(message: str, code: int) -> int:
    signals.stderr_line(f"error: {' '.join(message.split())}")
    return code


@app.callback()
def _root() -> None:
    """SegVol deployment SDK: export, build, infer, targets, bench, demo, serve."""


@app.command()
def version() -> None:
    """Print the segvol-rt version."""
    from segvol_rt._version import __version__

    say(__version__)


_PROMPT_HELP = (
    "Box and points are voxel indices (i, j, k) of SCAN as nibabel loads it - 3D Slicer's IJK - "
    "inclusive, 0-based. DICOM: the grid dcm2niix writes - i = column, j = rows - 1 - row, k = slice rank along the normal.\n\n"
    "Outputs: one target: a 0/1 mask, default SCAN stem + _segvol.nii.gz beside it (.dcm, a DICOM SEG, for DICOM input). "
    "Several targets: one multi-label file (label i = i-th target; where targets overlap the later one wins) and a "
    ".json sidecar naming the labels.\n\n"
    "Cohorts: several scans, a folder of NIfTI files and DICOM series, or --list, with --out-dir DIR: one model load, "
    "outputs DIR/<case>_segvol.nii.gz (.dcm for DICOM; <case> = file stem or SeriesInstanceUID) and the run report "
    "DIR/segvol-rt-run.json and .csv, rewritten after every case. A rerun skips the cases whose outputs are unchanged "
    "(--force redoes them). Exit status: 0 all cases ok, 1 some failed (one line each in the report), 2 usage error."
)

# option groups of `infer --help`
_P, _O, _E, _D, _V, _R = "Prompts", "Outputs", "Engine", "DICOM", "Evaluation", "Cohort"


@app.command(epilog=_PROMPT_HELP)
def infer(
    scans: list[str] | None = typer.Argument(None, metavar="SCAN...", show_default=False, hidden=True),
    text: list[str] | None = typer.Option(None, "--text", metavar="NAME", rich_help_panel=_P, help="Target name or free phrase; repeatable; 'all': every name of `segvol-rt targets`."),
    box: str | None = typer.Option(None, "--box", metavar="I0,J0,K0,I1,J1,K1", rich_help_panel=_P, help="Inclusive box in SCAN voxel indices; applies to every --text."),
    point: list[str] | None = typer.Option(None, "--point", metavar="I,J,K[,L]", rich_help_panel=_P, help="Point in SCAN voxel indices, label L 1 (default) or 0; repeatable."),
    seed: int = typer.Option(0, "--seed", metavar="N", rich_help_panel=_P, help="Seed of point sampling."),
    out: str | None = typer.Option(None, "--out", metavar="FILE", rich_help_panel=_O, help="Output mask: .nii, .nii.gz or .dcm (DICOM SEG, DICOM input)."),
    split: bool = typer.Option(False, "--split", metavar="", rich_help_panel=_O, help="One 0/1 file per target, <stem>_<name>.nii.gz."),
    probabilities: bool = typer.Option(False, "--probabilities", metavar="", rich_help_panel=_O, help="Also write float32 probability maps <stem>_prob[_<name>]."),
    statistics: bool = typer.Option(False, "--statistics", metavar="", rich_help_panel=_O, help="Volume (ml), HU mean/sd/min/max and bounding box per target, in the sidecar."),
    out_dir: str | None = typer.Option(None, "--out-dir", metavar="DIR", rich_help_panel=_R, help="Folder of a cohort's outputs and run report."),
    list_file: str | None = typer.Option(None, "--list", metavar="FILE", rich_help_panel=_R, help="Scans to segment, one path or DICOMweb URL a line."),
    force: bool = typer.Option(False, "--force", metavar="", rich_help_panel=_R, help="Redo the cases an earlier run finished."),
    artifacts: str | None = typer.Option(None, "--artifacts", metavar="DIR", rich_help_panel=_E, help="From `segvol-rt export`; default: the demo model (not for clinical use)."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME", rich_help_panel=_E, help="auto | onnxruntime | openvino | torch | tensorrt (openvino: CPU, by name only)."),
    device: str = typer.Option("auto", "--device", metavar="NAME", rich_help_panel=_E, help="auto | cpu | cuda."),
    precision: str | None = typer.Option(None, "--precision", metavar="NAME", rich_help_panel=_E, help="fp32 | fp16 | bf16: fp16 graphs (`export --precision fp16`), bf16 on OpenVINO where the CPU has it; default fp32, TensorRT: as built."),
    threads: int | None = typer.Option(None, "--threads", min=1, metavar="N", rich_help_panel=_E, help="CPU threads (default: all cores)."),
    cache_mb: float | None = typer.Option(None, "--cache-mb", min=0, metavar="MIB", rich_help_panel=_E, help="Bound of the window-embedding cache."),
    no_zoom_in: bool = typer.Option(False, "--no-zoom-in", metavar="", rich_help_panel=_E, help="Coarse (zoom-out) pass only."),
    window_prompts: str = typer.Option("official", "--window-prompts", metavar="MODE", rich_help_panel=_E, help="official (SegVol's, misplaced on scans smaller than a window) | aligned."),
    reorient: str | None = typer.Option(None, "--reorient", metavar="CODES", rich_help_panel=_E, help="Axis codes (e.g. RAS) to reorient to before the model, or 'stored'. Default: the model's declared orientation (the demo model: RAS); SegVol's weights declare none (SegVol does not reorient)."),
    server: str | None = typer.Option(None, "--server", metavar="URL", rich_help_panel=_E, help="Segment on a `segvol-rt serve` server ($SEGVOL_API_KEY)."),
    series: str | None = typer.Option(None, "--series", metavar="UID", rich_help_panel=_D, help="The SeriesInstanceUID, when a folder holds several CT series."),
    store: str | None = typer.Option(None, "--store", metavar="URL", rich_help_panel=_D, help="DICOMweb root: STOW-RS the SEGs, once written."),
    series_description: str | None = typer.Option(None, "--series-description", metavar="TEXT", rich_help_panel=_D, help="The SEG's SeriesDescription (default: the targets; at most 64 characters)."),
    dicomweb_auth: str | None = typer.Option(None, "--dicomweb-auth", metavar="USER:PASS", envvar="SEGVOL_RT_DICOMWEB_AUTH", show_envvar=False, rich_help_panel=_D, help="DICOMweb credentials (or $SEGVOL_RT_DICOMWEB_AUTH)."),
    prompt_from: str | None = typer.Option(None, "--prompt-from", metavar="LABEL:ID", rich_help_panel=_V, help="Prompts from a reference label, as the official demo."),
    prompt_box: bool = typer.Option(True, "--prompt-box/--no-prompt-box", metavar="", rich_help_panel=_V, help="With --prompt-from: the label's box."),
    prompt_points: bool = typer.Option(False, "--prompt-points", metavar="", rich_help_panel=_V, help="With --prompt-from: also sample points."),
    reference: str | None = typer.Option(None, "--reference", metavar="LABEL:ID", rich_help_panel=_V, help="Print the Dice against this label."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress or information lines."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Per-target details: ROI, windows, prompts."),
) -> int:
    """Segment CT scans by text, box and point prompts; write NIfTI masks or DICOM SEGs.

    SCAN: a .nii or .nii.gz file, a DICOM folder or file, or a DICOMweb series URL (https://HOST/dicom-web/studies/STUDY/series/SERIES). Several scans, or a folder of NIfTI files and DICOM series, make a cohort: give --out-dir."""  # noqa: E501 - one paragraph of the help
    from segvol_rt.app.infer import InferOptions
    from segvol_rt.app.infer_command import Engine, Inputs, infer_command

    opts = InferOptions(
        texts=tuple(text or ()), box=box, points=tuple(point or ()), out=out, split=split, probabilities=probabilities,
        zoom_in=not no_zoom_in, window_prompts=window_prompts, reorient=reorient, seed=seed, prompt_from=prompt_from,
        prompt_box=prompt_box, prompt_points=prompt_points, reference=reference, series=series, store=store,
        dicomweb_auth=dicomweb_auth, statistics=statistics, series_description=series_description,
    )
    engine = Engine(artifacts, backend, device, threads, _cache_bytes(cache_mb), precision, server)
    inputs = Inputs(tuple(scans or ()), list_file, out_dir, force, quiet, verbose)
    return infer_command(inputs, opts, engine, lambda line: _state.update(interrupted=line))


@app.command()
def targets(
    artifacts: str | None = typer.Option(None, "--artifacts", metavar="DIR", help="Read this artifacts directory's text table (default: the names every export writes)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="JSON for programs: codes (value, meaning) and RGB."),
) -> None:
    """List the target names the text table knows (no text encoder needed), with the SNOMED CT codes and colours of their DICOM SEG segments. Free phrases work too, through the text encoder."""
    import json

    from segvol_rt.app.targets import table_lines, target_rows

    rows = target_rows(artifacts)
    for line in [json.dumps(rows, indent=1)] if as_json else table_lines(rows):
        say(line)


@app.command()
def serve(
    artifacts: str = typer.Option(..., "--artifacts", metavar="DIR", rich_help_panel="Engine", help="Artifacts directory from `segvol-rt export` (its graphs are opened once and shared by all sessions)."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDR", rich_help_panel="Network", help="Address to serve on. Anything but loopback needs an API key."),
    http_port: int = typer.Option(8000, "--http-port", metavar="PORT", rich_help_panel="Network", help="Triton's HTTP port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", metavar="PORT", rich_help_panel="Network", help="Triton's gRPC port."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", metavar="PORT", rich_help_panel="Network", help="Serve Triton's metrics on this port (bound to --host); off by default."),
    max_sessions: int = typer.Option(16, "--max-sessions", metavar="N", rich_help_panel="Sessions", min=1, help="Sessions held at once; the least recently used idle one makes room."),
    session_ttl: float = typer.Option(900.0, "--session-ttl", metavar="S", rich_help_panel="Sessions", min=1, help="Seconds a session (or an unfinished upload) may stay idle before it is dropped."),
    instances: int = typer.Option(2, "--instances", metavar="N", rich_help_panel="Sessions", min=1, help="Requests run at once (on different sessions); one session's requests always run one at a time."),
    memory_mb: float = typer.Option(8192.0, "--memory-mb", metavar="MIB", rich_help_panel="Sessions", min=1, help="Memory bound across all sessions in MiB (volumes, images and each session's cache bounds)."),
    max_upload_mb: float = typer.Option(1024.0, "--max-upload-mb", metavar="MIB", rich_help_panel="Sessions", min=0.001, help="Largest compressed volume one session may upload, in MiB."),
    api_key: str | None = typer.Option(None, "--api-key", metavar="KEY", rich_help_panel="Network", envvar="SEGVOL_API_KEY", help="Key clients must send (Triton checks it on every endpoint but health); required off loopback. Default: $SEGVOL_API_KEY."),
    allow_path_root: str | None = typer.Option(None, "--allow-path-root", metavar="DIR", rich_help_panel="Network", help="Let clients open scans the server reads from under this folder (off by default)."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME", rich_help_panel="Engine", help="auto | onnxruntime | openvino | torch | tensorrt (openvino: CPU, by name only)."),
    device: str = typer.Option("auto", "--device", metavar="NAME", rich_help_panel="Engine", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(None, "--precision", metavar="NAME", rich_help_panel="Engine", help="fp32 | fp16 | bf16: what every session computes in (fp16: the graph variant, needs `export --precision fp16`; bf16: --backend openvino on CPUs that offer it; default: fp32)."),
    threads: int | None = typer.Option(None, "--threads", metavar="N", rich_help_panel="Engine", min=1, help="CPU threads of ONNX Runtime or OpenVINO per graph call (default: all cores)."),
    cache_mb: float = typer.Option(512.0, "--cache-mb", metavar="MIB", rich_help_panel="Sessions", min=0, help="Each session's window-embedding cache bound in MiB."),
) -> None:
    """Serve sessions on Triton Inference Server: upload a scan once, then segment prompt after prompt (needs the serve extra)."""
    import logging
    from pathlib import Path

    from segvol_rt.app.console import check_artifacts_dir, check_choices
    from segvol_rt.serve.server import ServeOptions
    from segvol_rt.serve.server import serve as run_server
    from segvol_rt.serve.sessions import SessionLimits

    check_choices(backend, device, precision)
    check_artifacts_dir(artifacts)
    limits = SessionLimits(max_sessions=max_sessions, ttl_s=session_ttl, memory_bytes=int(memory_mb * 2**20),
                           max_upload_bytes=int(max_upload_mb * 2**20), cache_bytes=_cache_bytes(cache_mb) or 0)
    opts = ServeOptions(artifacts=Path(artifacts), host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                        instances=instances, backend=backend, device=device, precision=precision, threads=threads, limits=limits,
                        api_key=api_key, allow_path_root=Path(allow_path_root) if allow_path_root else None)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("segvol_rt.serve").setLevel(logging.INFO)
    _state["interrupted"] = "the server stopped"
    run_server(opts, ready=lambda url: say(f"segvol-rt serving on {url} (models: segvol_open, segvol_segment, segvol_close)"))


def _cache_bytes(cache_mb: float | None) -> int | None:
    """``--cache-mb`` (MiB) in bytes for :meth:`SegVolRuntime.load`'s ``cache_bytes``."""
    if cache_mb is None:
        return None
    if not math.isfinite(cache_mb):
        raise SegVolError(f"--cache-mb must be a finite number of MiB, not {cache_mb}")
    return int(cache_mb * 2**20)


@app.command()
def demo(
    out: str = typer.Option("segvol-demo", "--out", metavar="PATH", help="Folder for the phantom, masks, results.json and preview.png."),
    make_phantom: str | None = typer.Option(None, "--make-phantom", metavar="FILE", help="Only write a phantom to this .nii.gz (and <stem>_labels.nii.gz), then exit."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Phantom seed."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME", help="auto | onnxruntime | openvino | torch | tensorrt (openvino: CPU, by name only)."),
    device: str = typer.Option("auto", "--device", metavar="NAME", help="auto | cpu | cuda."),
    artifacts: str | None = typer.Option(None, "--artifacts", metavar="DIR", help="Artifacts directory; default: the demo model (synthetic phantoms, not for clinical use), exported on first use."),
    window_prompts: str = typer.Option("aligned", "--window-prompts", metavar="MODE", help="aligned | official: zoom-in window prompts (see `infer --help`). Phantoms are often narrower than the demo model's window, where 'official' misplaces the window boxes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="Only the Dice table and errors."),
    threads: int | None = typer.Option(None, "--threads", metavar="N", min=1, help="CPU threads of ONNX Runtime (CPU), OpenVINO and torch (default: all cores)."),
    cache_mb: float | None = typer.Option(None, "--cache-mb", metavar="MIB", min=0, help="Bound of the runtime's window-embedding cache in MiB (default: the runtime's)."),
) -> None:
    """Run the pipeline on a synthetic phantom: Dice per organ (text, text+box; zoom-out vs zoom-in), masks and a PNG preview."""
    from segvol_rt.app.console import ConsoleReporter, check_choices, load_runtime, provenance_line
    from segvol_rt.app.demo import demo_steps, run_demo, write_phantom

    if make_phantom is not None:
        image, labels, phantom = write_phantom(make_phantom, seed)
        say(f"wrote {image} and {labels} (seed {seed}, shape {phantom.image.shape}, labels {phantom.label_names})")
        return
    check_choices(backend, device)
    cache_bytes = _cache_bytes(cache_mb)
    report = ConsoleReporter(quiet=quiet)
    report.stage("segmenting the phantom's organs", total=demo_steps())
    try:
        result = run_demo(out, lambda: load_runtime(artifacts, backend, device, report, threads, cache_bytes), seed,
                          say=report.note, advance=report.advance, window_prompts=window_prompts)
    finally:
        report.close()
    for line in result.table():
        say(line)
    report.note("Dice: scan space, 2|A&B|/(|A|+|B|) against the phantom's labels; time: both runs of both prompts;"
                f" zoom-in window prompts: {result.window_prompts}")
    for path in result.files:
        report.note(f"wrote {path}")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    report.note(f"time: {timings}; {provenance_line(result.provenance)}")


@app.command()
def export(
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", metavar="PATH", help="SegVol checkpoint: a .pth file or a Hugging Face directory; default: the shipped demo model."
    ),
    out: str = typer.Option(..., "--out", metavar="PATH", help="Artifacts directory to write (created; see --force)."),
    opset: int = typer.Option(17, "--opset", metavar="N", help="ONNX opset, at least 17."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", metavar="DIR", help="CLIP tokenizer directory (needed for a .pth: the official repo's config/clip)."),
    max_batch: int = typer.Option(8, "--max-batch", metavar="N", help="Largest batch of windows the graphs accept."),
    max_points: int = typer.Option(16, "--max-points", metavar="N", help="Largest number of point prompts per target."),
    skip_verify: bool = typer.Option(False, "--skip-verify", metavar="", help="Skip the ONNX Runtime vs torch parity checks."),
    force: bool = typer.Option(False, "--force", metavar="", help="Replace an existing artifacts directory at --out."),
    precision: str = typer.Option("fp32", "--precision", metavar="NAME", help="fp32 | fp16. fp16 also writes fp16 variants of the graphs (fp32 IO; norms, softmax and reductions kept fp32), verified against the fp32 ones; the fp32 graphs are always written."),
    voxel_orientation: str | None = typer.Option(None, "--voxel-orientation", metavar="CODES", help="Axis codes (e.g. RAS) of the voxel order the model was trained on: the runtime then reorients each scan to it. Default: the checkpoint config.json's segvol_rt_voxel_orientation (the demo model: RAS), else none (SegVol's weights: each scan's stored order)."),
) -> None:
    """Export a checkpoint to verified ONNX graphs, tokenizer files, text table and manifest."""
    import time

    from segvol_rt.export.exporter import ExportOptions, export_artifacts

    start = time.perf_counter()

    def progress(message: str) -> None:
        say(f"[{time.perf_counter() - start:7.1f}s] {message}")

    if checkpoint is None:
        from segvol_rt.demo.model import demo_checkpoint_dir

        checkpoint = str(demo_checkpoint_dir())
        say("no --checkpoint: exporting the demo model (synthetic phantoms, not for clinical use)")
    options = ExportOptions(opset=opset, max_batch=max_batch, max_points=max_points, verify=not skip_verify, precision=precision,
                            voxel_orientation=voxel_orientation)
    options.check()  # a bad --precision says so before the checkpoint is read
    result = export_artifacts(checkpoint, out, tokenizer=tokenizer, options=options, force=force, progress=progress)
    rows = [("file", "size", "operators", "parity (ORT vs torch)"), *result.table()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    say(f"\nwrote {result.out} in {time.perf_counter() - start:.1f}s")
    for row in rows:
        say("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@app.command()
def build(
    artifacts: str = typer.Option(..., "--artifacts", metavar="DIR", help="Artifacts directory written by `segvol-rt export`."),
    backend: str = typer.Option("tensorrt", "--backend", metavar="NAME", help="tensorrt: engines recorded in the manifest; openvino: the compiled models of all three graphs put into the model cache ($SEGVOL_RT_CACHE), so that no run compiles."),
    precision: str | None = typer.Option(None, "--precision", metavar="NAME", help="tensorrt: fp16 (default; from the fp16 graphs of `export --precision fp16`) or fp32, the graph variant the strongly typed engines are built from; openvino: fp32 (default) or bf16, what the runs will compute in."),
    max_batch: int | None = typer.Option(None, "--max-batch", metavar="N", help="Lower the windows-per-batch maximum (default: the exported one, 8; tensorrt)."),
    max_points: int | None = typer.Option(None, "--max-points", metavar="N", help="Lower the points-per-prompt maximum (default: the exported one, 16; tensorrt)."),
    timing_cache: str | None = typer.Option(None, "--timing-cache", metavar="FILE", help="TensorRT timing cache file to read and update."),
    workspace_gib: float | None = typer.Option(None, "--workspace-gib", metavar="GIB", help="TensorRT builder workspace limit in GiB (default: 4)."),
) -> None:
    """Build TensorRT engines for the three graphs, or fill OpenVINO's model cache with them."""
    from segvol_rt.io.artifacts import read_manifest

    if backend not in ("tensorrt", "openvino"):
        raise SegVolError(f"--backend {backend!r}: build makes tensorrt engines or the openvino model cache")
    read_manifest(artifacts)  # a missing directory or manifest says so, before the engine is looked for
    if backend == "openvino":
        given = [name for name, value in (("--max-batch", max_batch), ("--max-points", max_points),
                                          ("--timing-cache", timing_cache), ("--workspace-gib", workspace_gib)) if value is not None]
        if given:
            raise SegVolError(f"{', '.join(given)}: TensorRT options; --backend openvino takes --precision only")
        _build_openvino(artifacts, precision or "fp32")
    else:
        _build_tensorrt(artifacts, precision or "fp16", max_batch, max_points, timing_cache, workspace_gib)


def _build_tensorrt(artifacts: str, precision: str, max_batch: int | None, max_points: int | None,
                    timing_cache: str | None, workspace_gib: float | None) -> None:
    from pathlib import Path

    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    _state["interrupted"] = "the engines finished so far are kept and recorded in the manifest"
    options = BuildOptions(
        precision=precision,
        max_batch=max_batch,
        max_points=max_points,
        timing_cache=Path(timing_cache) if timing_cache else None,
        **({} if workspace_gib is None else {"workspace_gib": workspace_gib}),
    )
    records = build_engines(artifacts, options, log=say)
    for graph, record in records.items():
        say(f"{graph}: {record.file} ({record.precision}, TensorRT {record.tensorrt_version}, {record.gpu_name})")


def _build_openvino(artifacts: str, precision: str) -> None:
    from segvol_rt.app.build import build_openvino_cache

    _state["interrupted"] = "the graphs compiled so far stay in the model cache"
    done = build_openvino_cache(artifacts, precision)
    for g in done.graphs:
        say(f"{g.graph}: {'compiled' if g.compiled else 'in the cache already'} ({g.ran}) -> {g.folder}")
    say(f"OpenVINO model cache ready for --precision {done.precision} in {done.seconds:.1f}s: {done.cache_dir}")


@app.command()
def bench(
    artifacts: str | None = typer.Option(None, "--artifacts", metavar="DIR", help="Artifacts directory to time; default: the tiny benchmark model, exported once into the cache (needs the export extra)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", metavar="PATH", help="The checkpoint of --artifacts, for the torch rows (torch pipeline and official-style reference)."),
    model: str = typer.Option("tiny", "--model", metavar="NAME", help="Without --artifacts: tiny (random weights, built once) or demo (the shipped demo model)."),
    backend: list[str] | None = typer.Option(None, "--backend", metavar="NAME", help="ort-cpu | ort-cuda | openvino-cpu | tensorrt | torch-pipeline; repeatable (default: every one that can run)."),
    repeat: int = typer.Option(5, "--repeat", metavar="N", help="Timed calls per stage (the median, p90 and min are reported)."),
    warmup: int = typer.Option(1, "--warmup", metavar="N", help="Untimed calls before them."),
    json_out: str | None = typer.Option(None, "--json", metavar="FILE", help="Also write the report (machine, versions, every sample) as JSON."),
    threads: int | None = typer.Option(None, "--threads", metavar="N", min=1, help="CPU threads of ONNX Runtime, OpenVINO and torch (default: all cores)."),
    precision: str | None = typer.Option(None, "--precision", metavar="NAME", help="fp32 | fp16 | bf16: fp16 graphs on the ONNX Runtime and TensorRT rows, bf16 on the OpenVINO row; rows that cannot are skipped (default: fp32, the built engines' on TensorRT)."),
) -> None:
    """Time each stage on this machine in seconds: a small phantom scan, one target, every backend that can run.

    For the full side-by-side benchmark against the official-style PyTorch flow, run benchmarks/bench.py."""
    from segvol_rt.app.bench import BACKEND_CHOICES, quick_bench
    from segvol_rt.backends.select import check_names

    chosen = tuple(backend or BACKEND_CHOICES)
    unknown = sorted(set(chosen) - set(BACKEND_CHOICES))
    if unknown:
        raise SegVolError(f"unknown --backend {', '.join(unknown)}; choose from {', '.join(BACKEND_CHOICES)}")
    if model not in ("tiny", "demo"):
        raise SegVolError(f"unknown --model {model!r}; choose tiny or demo")
    check_names(precision=precision)
    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    log(f"precision: {precision or 'fp32 (ONNX Runtime, OpenVINO), as built (TensorRT)'}")
    report = quick_bench(artifacts, checkpoint, backends=chosen, repeat=repeat, warmup=warmup,
                         log=log, model_name=model, threads=threads, precision=precision)
    say(report.markdown())
    if json_out:
        typer.echo(f"wrote {report.write_json(json_out)}", err=True)


if __name__ == "__main__":
    main()
