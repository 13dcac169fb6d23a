"""The ``segvol-rt`` command line: a thin typer layer over the public API.

Every command parses its options, calls the API and prints. What the user
sees when something goes wrong is one line on stderr, never a traceback:

* a :class:`~segvol_rt.errors.SegVolError` or a bad option (click's usage
  errors, without typer's box): ``error: ...``, exit code 2;
* SIGINT (Ctrl-C) and SIGTERM: the handlers raise :class:`Interrupted`, so
  the staged outputs are removed on the way out (:mod:`segvol_rt.io.outputs`),
  then ``interrupted; nothing was written`` (exit 130) or ``terminated; ...``
  (exit 143); a signal that arrives while an output set is being committed is
  handled once the set is complete, and the line says so;
* a closed stdout (``segvol-rt infer ... | head -1``) stops the printing only
  (:func:`segvol_rt.app.console.say`); the run completes and exits normally.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from types import FrameType
from typing import Any

import typer

from segvol_rt.app.console import say, silence_stdout
from segvol_rt.errors import SegVolError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SegVol deployment SDK: export, build, infer, bench, demo.",
)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised by the CLI's handlers (not a KeyboardInterrupt,
    which click and typer would turn into an exit of their own)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    # Recorded too: a library may turn the exception into its own (pybind11
    # reports one raised during an import as "ImportError: initialization failed").
    _state["signal"] = signum
    raise Interrupted(signum)


_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it
# what a command leaves when interrupted (build: its engines), and the signal received, if any
_state: dict[str, Any] = {"interrupted": "nothing was written", "signal": None}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every failure ends in one stderr line and an exit code.

    The signal handlers are the CLI's for the call only (a caller in the same
    process gets its own back); a signal its parent ignores (a background job's
    SIGINT) stays ignored."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _EXIT_CODES:
            handler = signal.getsignal(signum)
            if handler is not signal.SIG_IGN and handler is not None:
                previous[signum] = signal.signal(signum, _raise_interrupted)
    _state.update(signal=None, interrupted="nothing was written")
    try:
        code = _run(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - each kind becomes one line and an exit code; bugs re-raise
        return _exit_code(exc)
    if _state["signal"] is not None:  # swallowed on the way (a failed optional import), yet the run completed
        return _interrupted(_state["signal"], True)
    return code if isinstance(code, int) else 0


def _exit_code(exc: BaseException) -> int:
    from segvol_rt.io.outputs import written

    if isinstance(exc, SystemExit):
        raise exc
    if _state["signal"] is not None:
        return _interrupted(_state["signal"], written(exc))
    if isinstance(exc, (Interrupted, KeyboardInterrupt, typer.Abort)):
        return _interrupted(getattr(exc, "signum", signal.SIGINT), written(exc))
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
    _stderr_line(f"error: {' '.join(message.split())}")
    return code


def _interrupted(signum: int, outputs_written: bool) -> int:
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    _stderr_line(f"{what}; {'the outputs had been written' if outputs_written else _state['interrupted']}")
    return _EXIT_CODES.get(signal.Signals(signum), 130)


def _stderr_line(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed too: the exit code still tells
        print(line, file=sys.stderr, flush=True)


@app.callback()
def _root() -> None:
    """SegVol deployment SDK: export, build, infer, bench, demo."""


@app.command()
def version() -> None:
    """Print the segvol-rt version."""
    from segvol_rt import __version__

    say(__version__)


_PROMPT_HELP = (
    "Box and points are voxel indices (i, j, k) of SCAN as nibabel loads it - 3D Slicer's IJK - "
    "inclusive, 0-based. DICOM: the grid dcm2niix writes - i = column, j = rows - 1 - row, k = slice rank along the normal."
)


@app.command(epilog=_PROMPT_HELP)
def infer(
    scan: str = typer.Argument(..., help="CT scan: .nii or .nii.gz, a DICOM folder or file, or a DICOMweb series URL (https://HOST/dicom-web/studies/STUDY/series/SERIES)."),
    text: list[str] | None = typer.Option(None, "--text", help="Target name or free phrase; repeat for several targets (one target each)."),
    box: str | None = typer.Option(None, "--box", help="i0,j0,k0,i1,j1,k1: inclusive box in SCAN voxel indices (IJK); applies to every --text."),
    point: list[str] | None = typer.Option(None, "--point", help="i,j,k[,label] in SCAN voxel indices (IJK), label 1 positive (default) or 0 negative; repeatable; applies to every --text."),
    out: str | None = typer.Option(None, "--out", help="Output mask (.nii/.nii.gz, or .dcm - a DICOM SEG - for DICOM input, its default); default SCAN stem + _segvol.nii.gz beside it. Several targets: a multi-label file (label i = i-th target; where targets overlap the later one wins) and a .json sidecar naming the labels."),
    split: bool = typer.Option(False, "--split", help="One 0/1 file per target, <out stem>_<name>.nii.gz, instead of a multi-label file."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write float32 probability maps <out stem>_prob[_<name>].nii.gz (with a .dcm --out: FRACTIONAL probability SEGs <out stem>_prob[_<name>].dcm)."),
    backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | torch | tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    no_zoom_in: bool = typer.Option(False, "--no-zoom-in", help="Coarse (zoom-out) pass only."),
    window_prompts: str = typer.Option("official", "--window-prompts", help="official | aligned. Zoom-in window boxes/points: 'official' reproduces SegVol, which misplaces them by the padding on scans smaller than a window (32x256x256 at full size) along an axis; 'aligned' places them where they belong. Same result on larger scans."),
    artifacts: str | None = typer.Option(None, "--artifacts", help="Artifacts directory from `segvol-rt export`; default: the demo model (synthetic phantoms, not for clinical use), exported on first use."),
    reorient: str | None = typer.Option(None, "--reorient", help="SegVol does not reorient: its weights see the stored voxel order. A model whose manifest declares a voxel orientation (the demo model: RAS) gets each scan reoriented to it. CODES such as RAS reorient to those; 'stored' keeps the stored order. Prompts and masks stay in SCAN's voxel grid either way."),
    seed: int = typer.Option(0, "--seed", help="Seed of point sampling (zoom-in windows, --prompt-points)."),
    prompt_from: str | None = typer.Option(None, "--prompt-from", help="Evaluation: LABEL.nii.gz:ID - derive the prompts from this reference label as the official demo does (zoom-out-space box of the resized label); also the --reference by default."),
    prompt_box: bool = typer.Option(True, "--prompt-box/--no-prompt-box", help="With --prompt-from: use the label's box."),
    prompt_points: bool = typer.Option(False, "--prompt-points", help="With --prompt-from: also sample points from the label (official select_points, 3 positive + 3 negative extra, seeded)."),
    reference: str | None = typer.Option(None, "--reference", help="LABEL.nii.gz:ID - print the Dice of the result, zoom-out only and with zoom-in (official formula, crop space) and in scan space."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and information lines (errors, warnings and Dice still print)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per-target details: ROI, windows, prompts."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads of ONNX Runtime (CPU) and torch (default: all cores)."),
    cache_mb: float | None = typer.Option(None, "--cache-mb", min=0, help="Bound of the runtime's window-embedding cache in MiB (default: the runtime's)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | fp16: the graph variant (fp16 needs `export --precision fp16`; TensorRT: the engines' precision). Default: fp32 on ONNX Runtime and torch, the built engines' on TensorRT."),
    series: str | None = typer.Option(None, "--series", help="DICOM input: the SeriesInstanceUID to segment, when the folder holds several CT series (the error lists them)."),
    store: str | None = typer.Option(None, "--store", help="DICOMweb service root (https://HOST/dicom-web): STOW-RS the SEG there, after it is written and validated locally."),
    series_description: str | None = typer.Option(None, "--series-description", help="DICOM SEG output: its SeriesDescription (default: 'segvol-rt: ' and the targets; at most 64 characters)."),
    dicomweb_auth: str | None = typer.Option(None, "--dicomweb-auth", envvar="SEGVOL_RT_DICOMWEB_AUTH", show_envvar=True, help="USER:PASSWORD for DICOMweb (never put credentials in a URL)."),
    server: str | None = typer.Option(None, "--server", help="URL of a `segvol-rt serve` server (http://HOST:PORT): the scan is uploaded there and segmented by its model; outputs are written here as usual (needs the client extra; API key from $SEGVOL_API_KEY)."),
) -> None:
    """Segment targets of a CT scan (NIfTI, DICOM folder or DICOMweb series) by text, box and/or point prompts; write NIfTI masks or DICOM SEGs (all of them or none)."""
    from segvol_rt.app.console import ConsoleReporter, check_choices, load_runtime, provenance_line
    from segvol_rt.app.infer import InferOptions, run_infer

    check_choices(backend, device, precision)
    cache_bytes = _cache_bytes(cache_mb)
    opts = InferOptions(
        texts=tuple(text or ()), box=box, points=tuple(point or ()), out=out, split=split,
        probabilities=probabilities, zoom_in=not no_zoom_in, window_prompts=window_prompts, reorient=reorient, seed=seed,
        prompt_from=prompt_from, prompt_box=prompt_box, prompt_points=prompt_points, reference=reference,
        series=series, store=store, dicomweb_auth=dicomweb_auth, series_description=series_description,
    )
    report = ConsoleReporter(quiet=quiet)
    remote: list[Any] = []  # the served session, closed at the end
    if server is not None:
        from segvol_rt.app.remote import check_remote_options

        check_remote_options(opts, artifacts)
    open_runtime = (lambda: _remote_runtime(server, remote)) if server is not None else (
        lambda: load_runtime(artifacts, backend, device, report, threads, cache_bytes, precision))
    try:
        result = run_infer(scan, opts, open_runtime, report)
    finally:
        report.close()
        for rt in remote:
            rt.close()
    for res in result.targets:
        seg = res.segmentation
        zoom = f"{seg.n_windows} zoom-in window(s)" if seg.zoom_in_applied else "zoom-out only"
        report.note(f"{res.plan.name}: {int(seg.mask.sum())} voxels, {zoom}")
        if verbose:
            stats = res.stats(result.geometry)
            report.note(f"  prompt {seg.prompt}; ROI (crop) {stats['roi_crop']}, ROI (scan) {stats['roi_scan']}")
        if res.evaluation is not None:
            for line in res.evaluation.lines():
                say(f"{res.plan.name}: {line}")
    for path in result.files:
        report.note(f"wrote {path}")
    report.note(f"{result.timing_line(detailed=verbose)}; {provenance_line(result.provenance)}")


def _remote_runtime(url: str, opened: list[Any]) -> Any:
    """``infer --server``: a runtime stand-in over a session on the server (:mod:`segvol_rt.app.remote`)."""
    import os

    from segvol_rt.app.remote import RemoteRuntime

    rt = RemoteRuntime(url, api_key=os.environ.get("SEGVOL_API_KEY"))
    opened.append(rt)
    return rt


@app.command()
def serve(
    artifacts: str = typer.Option(..., "--artifacts", help="Artifacts directory from `segvol-rt export` (its graphs are opened once and shared by all sessions)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on. Anything but loopback needs an API key."),
    http_port: int = typer.Option(8000, "--http-port", help="Triton's HTTP port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="Triton's gRPC port."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Triton's metrics on this port (bound to --host); off by default."),
    max_sessions: int = typer.Option(16, "--max-sessions", min=1, help="Sessions held at once; the least recently used idle one makes room."),
    session_ttl: float = typer.Option(900.0, "--session-ttl", min=1, help="Seconds a session (or an unfinished upload) may stay idle before it is dropped."),
    instances: int = typer.Option(2, "--instances", min=1, help="Requests run at once (on different sessions); one session's requests always run one at a time."),
    memory_mb: float = typer.Option(8192.0, "--memory-mb", min=1, help="Memory bound across all sessions in MiB (volumes, images and each session's cache bounds)."),
    max_upload_mb: float = typer.Option(1024.0, "--max-upload-mb", min=0.001, help="Largest compressed volume one session may upload, in MiB."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="SEGVOL_API_KEY", help="Key clients must send (Triton checks it on every endpoint but health); required off loopback. Default: $SEGVOL_API_KEY."),
    allow_path_root: str | None = typer.Option(None, "--allow-path-root", help="Let clients open scans the server reads from under this folder (off by default)."),
    backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | torch | tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | fp16: the graph variant every session runs (fp16 needs `export --precision fp16`; default: fp32 on ONNX Runtime)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads of ONNX Runtime per graph call (default: all cores)."),
    cache_mb: float = typer.Option(512.0, "--cache-mb", min=0, help="Each session's window-embedding cache bound in MiB."),
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
    out: str = typer.Option("segvol-demo", "--out", help="Folder for the phantom, masks, results.json and preview.png."),
    make_phantom: str | None = typer.Option(None, "--make-phantom", help="Only write a phantom to this .nii.gz (and <stem>_labels.nii.gz), then exit."),
    seed: int = typer.Option(0, "--seed", help="Phantom seed."),
    backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | torch | tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    artifacts: str | None = typer.Option(None, "--artifacts", help="Artifacts directory; default: the demo model (synthetic phantoms, not for clinical use), exported on first use."),
    window_prompts: str = typer.Option("aligned", "--window-prompts", help="aligned | official: zoom-in window prompts (see `infer --help`). Phantoms are often narrower than the demo model's window, where 'official' misplaces the window boxes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the Dice table and errors."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads of ONNX Runtime (CPU) and torch (default: all cores)."),
    cache_mb: float | None = typer.Option(None, "--cache-mb", min=0, help="Bound of the runtime's window-embedding cache in MiB (default: the runtime's)."),
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
        None, "--checkpoint", help="SegVol checkpoint: a .pth file or a Hugging Face directory; default: the shipped demo model."
    ),
    out: str = typer.Option(..., "--out", help="Artifacts directory to write (created; see --force)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset, at least 17."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="CLIP tokenizer directory (needed for a .pth: the official repo's config/clip)."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest batch of windows the graphs accept."),
    max_points: int = typer.Option(16, "--max-points", help="Largest number of point prompts per target."),
    skip_verify: bool = typer.Option(False, "--skip-verify", help="Skip the ONNX Runtime vs torch parity checks."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifacts directory at --out."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16. fp16 also writes fp16 variants of the graphs (fp32 IO; norms, softmax and reductions kept fp32), verified against the fp32 ones; the fp32 graphs are always written."),
    voxel_orientation: str | None = typer.Option(None, "--voxel-orientation", help="Axis codes (e.g. RAS) of the voxel order the model was trained on: the runtime then reorients each scan to it. Default: the checkpoint config.json's segvol_rt_voxel_orientation (the demo model: RAS), else none (SegVol's weights: each scan's stored order)."),
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
    artifacts: str = typer.Option(..., "--artifacts", help="Artifacts directory written by `segvol-rt export`."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 (from the fp16 graphs of `export --precision fp16`) or fp32: the graph variant the strongly typed engines are built from."),
    max_batch: int | None = typer.Option(None, "--max-batch", help="Lower the windows-per-batch maximum (default: the exported one, 8)."),
    max_points: int | None = typer.Option(None, "--max-points", help="Lower the points-per-prompt maximum (default: the exported one, 16)."),
    timing_cache: str | None = typer.Option(None, "--timing-cache", help="TensorRT timing cache file to read and update."),
    workspace_gib: float = typer.Option(4.0, "--workspace-gib", help="TensorRT builder workspace limit in GiB."),
) -> None:
    """Build TensorRT engines for the three graphs and record them in the manifest."""
    from pathlib import Path

    from segvol_rt.io.artifacts import read_manifest

    read_manifest(artifacts)  # a missing directory or manifest says so, before tensorrt is looked for
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    _state["interrupted"] = "the engines finished so far are kept and recorded in the manifest"
    options = BuildOptions(
        precision=precision,
        max_batch=max_batch,
        max_points=max_points,
        timing_cache=Path(timing_cache) if timing_cache else None,
        workspace_gib=workspace_gib,
    )
    records = build_engines(artifacts, options, log=say)
    for graph, record in records.items():
        say(f"{graph}: {record.file} ({record.precision}, TensorRT {record.tensorrt_version}, {record.gpu_name})")


@app.command()
def bench(
    artifacts: str | None = typer.Option(None, "--artifacts", help="Artifacts directory to time; default: the tiny benchmark model, exported once into the cache (needs the export extra)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="The checkpoint of --artifacts, for the torch rows (torch pipeline and official-style reference)."),
    model: str = typer.Option("tiny", "--model", help="Without --artifacts: tiny (random weights, built once) or demo (the shipped demo model)."),
    backend: list[str] | None = typer.Option(None, "--backend", help="ort-cpu | ort-cuda | tensorrt | torch-pipeline; repeatable (default: every one that can run)."),
    repeat: int = typer.Option(5, "--repeat", help="Timed calls per stage (the median, p90 and min are reported)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed calls before them."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report (machine, versions, every sample) as JSON."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads of ONNX Runtime and torch (default: all cores)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | fp16: the graph variant of the ONNX Runtime and TensorRT rows (default: fp32 on ONNX Runtime, the built engines' on TensorRT)."),
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
    log(f"precision: {precision or 'fp32 (ONNX Runtime), as built (TensorRT)'}")
    report = quick_bench(artifacts, checkpoint, backends=chosen, repeat=repeat, warmup=warmup,
                         log=log, model_name=model, threads=threads, precision=precision)
    say(report.markdown())
    if json_out:
        typer.echo(f"wrote {report.write_json(json_out)}", err=True)


if __name__ == "__main__":
    main()
