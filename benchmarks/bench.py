#!/usr/bin/env python
"""Side-by-side latency benchmark: segvol-rt's backends against SegVol run
the way the official inference demo runs it.

What runs, per case and backend (every backend that can run here):

* stages: read (nibabel alone, segvol-rt's reader) and preprocess; image
  encoder at batch 1 and 8; text encoder versus the artifacts' table lookup;
  prompt decoder; the pipeline's array kernels (numpy, and CuPy on a GPU);
  zoom-out-zoom-in with its per-stage split (encode, decode, upsample, blend);
  mask writing;
* backends: ``ort-cpu``, ``ort-cuda``, ``openvino-cpu`` and ``tensorrt`` where present;
  ``torch-pipeline`` (our torch model as a backend of the segvol-rt pipeline)
  and ``torch-official`` (our torch model called as the official demo calls
  SegVol: fp32 eager, one window at a time, the whole model and the text
  encoder re-run per window and per target, resizes on the host;
  ``segvol_rt.export.reference.official``);
* cases: ``synthetic``, a phantom scan whose preprocessed crop is the
  official demo's 200x352x480 (scaled for smaller windows), with 1 and 5
  targets; ``raw``, a 512x512x200 int16 ``.nii.gz`` read from disk, timed as
  a whole ``segvol-rt infer`` process from start to the written mask;
  ``real``, the CT of ``../shared/data/ct/example_ct_sm.nii.gz`` when present.

The model (``--config``): ``official`` is SegVol's full size (180.9 M
parameters) with random weights, ``tiny`` a few-kB model of the same
architecture, ``demo`` the shipped demo model. Random models get a decoder
edit that makes the coarse prediction a fixed box (``segvol_rt.export.reference.bench_model.blob_model``)
so each target runs 6 zoom-in windows on the synthetic case, as in the
reference figures; the targets then share their ROI, which the runtime's
window cache exploits - the ``no shared windows`` rows show the cost when
they share nothing. Models are exported once into ``--cache-dir``.

Every comparison is a ratio of two medians measured in this run on this
machine; targets are reported, never asserted. Results: a markdown table on
stdout (and ``--markdown``) and JSON (``--json``) with the machine, GPU,
versions, shapes, p50/p90/min and window counts.

Run time on a 2-core CPU (see benchmarks/README.md): ``--config tiny`` about
1-2 minutes; ``--config official --quick`` about 10 minutes;
``--config official`` (1 and 5 targets, all cases) 1.5-2 hours, dominated
by full-size image encoder calls of about 3-7 s per window. First use of
``official`` adds the export (a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import available
from segvol_rt.app.bench import (
    BACKEND_CHOICES,
    capped_backend,
    note_backends,
    open_backends,
    torch_device,
)
from segvol_rt.bench.machine import machine_info
from segvol_rt.bench.report import Report
from segvol_rt.bench.scans import requests_for, scaled_crop, synthetic_scan, write_scan
from segvol_rt.bench.stages import (
    Settings,
    bench_graphs,
    bench_io,
    bench_kernels,
    bench_text_lookup,
    decoder_feeds,
    pipeline_trial,
    run_trials,
)
from segvol_rt.bench.timing import failure_reason, synchronize, time_calls
from segvol_rt.errors import SegVolError
from segvol_rt.export.reference.bench import (
    OfficialStyleModel,
    bench_official_graphs,
    official_trial,
)
from segvol_rt.export.reference.bench_model import default_cache_dir, prepare_bench_model
from segvol_rt.io.artifacts import PRECISIONS

CASES = ("synthetic", "raw", "real")
BACKENDS = (*BACKEND_CHOICES, "torch-official")
GPU_BACKENDS = ("ort-cuda", "tensorrt")
REPO = Path(__file__).resolve().parents[1]
REAL_CT = Path(os.environ.get("SEGVOL_RT_SHARED", REPO.parent / "shared")) / "data" / "ct" / "example_ct_sm.nii.gz"

# Targets of the issue (reported, never asserted).
CPU_SPEEDUP = 2.0  # ORT CPU pipeline vs torch reference, same scan
GPU_SPEEDUP = {1: 10.0, 5: 25.0}  # GPU pipeline vs official-style torch on the GPU
ENCODER_B8_MS = 1.3  # per window
INFER_PROCESS_MS = 1500.0  # 512x512x200 .nii.gz, one target, whole process
PREPROCESS_OVER_READ = 1.5

# The equivalent of `segvol-rt infer` through the API, for when the command is
# not there: read, load, preprocess, segment one target, write the mask.
API_INFER = """
import sys
from segvol_rt.io.nifti import read_scan, write_mask
from segvol_rt.runtime import SegVolRuntime
artifacts, scan_path, out, backend, device, text, box, precision, threads = sys.argv[1:10]
rt = SegVolRuntime.load(artifacts, backend=backend, device=device, precision=precision or None,
                        threads=int(threads) if threads else None)
scan = read_scan(scan_path)
rt.set_volume(scan.data, scan.affine)
seg = rt.segment(text=text, box=box)
write_mask(out, seg.mask, scan)
"""
DEFAULT_INFER_CMD = "{exe} infer {scan} --artifacts {artifacts} --text {text} --box {box} --out {out} --backend {backend} --device {device}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/bench.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", choices=("official", "tiny", "demo"), default="tiny", help="model size (default tiny)")
    p.add_argument("--artifacts", help="reuse this artifacts directory instead of the cached benchmark model")
    p.add_argument("--checkpoint", help="the checkpoint of --artifacts (for the torch rows)")
    p.add_argument("--cache-dir", default=None, help=f"where benchmark models and scans are kept (default {default_cache_dir()})")
    p.add_argument("--rebuild", action="store_true", help="export the benchmark model again")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--targets", nargs="+", type=int, default=None, help="target counts (default 1 5; --quick: 1)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls of graph, kernel and IO stages")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before those")
    p.add_argument("--pipeline-repeat", type=int, default=None, help="timed runs of whole pipelines and batch-8 encodes")
    p.add_argument("--pipeline-warmup", type=int, default=None, help="untimed runs before those")
    p.add_argument("--quick", action="store_true", help="fewer repeats, 1 target, no raw case, no unshared variant")
    p.add_argument("--pipelines-only", action="store_true",
                   help="only the zoom-out-zoom-in rows (no graph, kernel or IO stages): the quickest way to the key ratios")
    p.add_argument("--no-unshared", action="store_true", help="skip the 'no shared windows' multi-target variant")
    p.add_argument("--window-batch", type=int, nargs="*", default=[], metavar="N",
                   help="also time each backend's pipeline with at most N windows per image-encoder call "
                        "(e.g. 1: on a CPU, large batches are slower per window)")
    p.add_argument("--raw-shape", nargs=3, type=int, default=(512, 512, 200), metavar=("I", "J", "K"))
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="what the rows compute in: fp16 graphs on ONNX Runtime and TensorRT (needs artifacts from "
                        "`segvol-rt export --precision fp16`), bf16 on OpenVINO; rows that cannot are skipped "
                        "(default: fp32, the engines' on TensorRT); benchmarks/precision.py compares fp16 with fp32, "
                        "benchmarks/cpu_tier.py bf16 with fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of ONNX Runtime, OpenVINO and torch (default: all cores); e.g. 1 on a machine others share")
    p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--infer-cmd", default=DEFAULT_INFER_CMD,
                   help="the infer command line, with {exe} {scan} {artifacts} {text} {box} {out} {backend} {device}; "
                        "--precision and --threads, when given, are appended")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the JSON report here")
    p.add_argument("--markdown", help="write the markdown report here")
    return p.parse_args(argv)


def log(message: str) -> None:
    """Progress on stderr, stamped with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """Everything one benchmark run shares."""

    args: argparse.Namespace
    report: Report
    settings: Settings
    artifacts: Any
    checkpoint: Path | None
    work: Path
    backends: dict[str, Any] = field(default_factory=dict)
    official: Any = None  # OfficialStyleModel
    tokenizer: Any = None

    @property
    def config(self) -> Any:
        return self.artifacts.config

    def log(self, message: str) -> None:
        log(message)

    def save(self) -> None:
        """Write the reports so far (a long run leaves partial results)."""
        if self.args.json:
            self.report.write_json(self.args.json)
        if self.args.markdown:
            Path(self.args.markdown).write_text(self.report.markdown())


# -- setup ------------------------------------------------------------------------------


def default_settings(args: argparse.Namespace, gpu: bool) -> Settings:
    """Repeats by model size and device: full-size windows take seconds on a CPU."""
    slow = args.config == "official" and not gpu
    if args.quick:
        base = (2, 1, 1, 0) if slow else (5, 1, 3, 1)
    elif gpu:
        base = (20, 3, 10, 2)
    else:
        base = (3, 1, 1, 0) if slow else (10, 2, 5, 1)
    given = (args.repeat, args.warmup, args.pipeline_repeat, args.pipeline_warmup)
    r, w, pr, pw = (g if g is not None else d for g, d in zip(given, base))
    return Settings(repeat=r, warmup=w, heavy_repeat=pr, heavy_warmup=pw)


def resolve_model(args: argparse.Namespace, log: Any) -> tuple[Path, Path | None, dict[str, Any]]:
    if args.artifacts:
        ckpt = Path(args.checkpoint) if args.checkpoint else None
        return Path(args.artifacts), ckpt, {"config": "given", "artifacts": args.artifacts}
    bm = prepare_bench_model(args.config, args.cache_dir, seed=args.seed, rebuild=args.rebuild, log=log)
    return bm.artifacts, bm.checkpoint, bm.info


def open_all(ctx: Context) -> None:
    """Open every requested backend that can run; build the torch model once
    for both torch modes."""
    labels = [b for b in ctx.args.backends if b in BACKEND_CHOICES]
    model = None
    wants_torch = {"torch-pipeline", "torch-official"} & set(ctx.args.backends)
    if wants_torch:
        if not available("torch"):
            ctx.log("skipping the torch rows: torch is not installed")
        elif ctx.checkpoint is None:
            ctx.log("skipping the torch rows: no checkpoint (--checkpoint)")
        else:
            from segvol_rt.export.checkpoint import build_model

            model, _ = build_model(ctx.checkpoint)
            device = torch_device(ctx.args.torch_device)
            model = model.to(device).eval()
            if "torch-official" in ctx.args.backends:
                ctx.official = OfficialStyleModel(model, ctx.tokenizer, ctx.artifacts.prompt_template, device)
    if model is None:
        labels = [b for b in labels if b != "torch-pipeline"]
    ctx.backends = open_backends(ctx.artifacts, labels, ctx.checkpoint, model, ctx.log, ctx.args.threads,
                                 ctx.args.precision)
    note_backends(ctx.report, ctx.backends)
    for n in ctx.args.window_batch:
        for label, backend in list(ctx.backends.items()):
            if " windows/call" not in label:
                ctx.backends[f"{label}, {n} windows/call"] = capped_backend(backend, n)


def prime(ctx: Context) -> None:
    """One call of each graph on each backend before anything is timed
    (session arenas, kernels, lazy initialisation)."""
    window = tuple(ctx.config.spatial_size)
    x = np.zeros((1, 1, *window), np.float32)
    ids = ctx.tokenizer.encode_names(["liver"], ctx.artifacts.prompt_template)
    for label, backend in list(ctx.backends.items()):
        if _capped(label):
            continue  # shares the sessions of the backend it caps
        ctx.log(f"priming {label}")
        if not guarded(ctx, f"priming {label}", _prime_backend, backend, ctx.config, x, ids):
            del ctx.backends[label]
    if ctx.official is not None:
        import torch

        ctx.log(f"priming torch official-style ({ctx.official.device})")
        ctx.official.phrase = "liver"
        ctx.official(torch.from_numpy(x), torch.zeros(1, ctx.config.embed_dim))
    synchronize()


def guarded(ctx: Context, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Run ``fn(*args, **kwargs)``; a failure becomes a note in the report (and
    a log line), not the end of the run - untested machines may lack a piece."""
    try:
        fn(*args, **kwargs)
        return True
    except Exception as exc:  # noqa: BLE001 - one broken backend must not lose the other rows
        reason = failure_reason(exc)
        ctx.log(f"FAILED {what}: {reason}")
        ctx.report.note(f"{what} failed: {reason}")
        return False


def _prime_backend(backend: Any, config: Any, x: np.ndarray, ids: np.ndarray) -> None:
    xp = backend.xp
    coords, labels, text = (xp.asarray(a) for a in decoder_feeds(config))
    emb = backend.encode_image(xp.asarray(x))
    backend.decode(emb, coords, labels, text)
    backend.encode_text(ids)


def runtimes_for(ctx: Context, data: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    from segvol_rt.runtime import SegVolRuntime

    out = {}
    for label, backend in ctx.backends.items():
        rt = SegVolRuntime(ctx.artifacts, backend, label)
        rt.set_volume(data, affine)
        out[label] = rt
    return out


# -- cases ------------------------------------------------------------------------------


def synthetic_case(ctx: Context) -> None:
    """Phantom scan whose crop is the official demo's (scaled to the window)."""
    cfg = ctx.config
    crop = scaled_crop(cfg.spatial_size)
    scan_shape = crop[::-1]
    case = "synthetic " + "x".join(map(str, crop))
    ctx.log(f"{case}: making the scan {scan_shape}")
    ph, image = synthetic_scan(scan_shape, ctx.args.seed)
    data = np.asfortranarray(image, dtype=np.float32)
    rts = runtimes_for(ctx, data, ph.affine)
    some = next(iter(rts.values()), None)
    got = list(some.crop_image.shape) if some else None
    ctx.report.cases[case] = {"scan_shape": list(scan_shape), "crop_shape": got, "window": list(cfg.spatial_size),
                              "note": "phantom, air replaced by noise so the crop is the whole scan"}
    if got is not None and tuple(got) != tuple(crop):
        ctx.report.note(f"{case}: the crop came out {got}, not {list(crop)}")
    targets = sorted(set(ctx.args.targets))
    s = ctx.settings
    first, rest = targets[:1], targets[1:]
    # the headline comparison first, so a slow run has it early
    for n in first:
        run_targets(ctx, case, rts, some, scan_shape, n, s)
    for label, backend in ctx.backends.items():
        if _capped(label) or ctx.args.pipelines_only:
            continue
        ctx.log(f"{case}: {label}: graphs")
        guarded(ctx, f"{case}: {label}: graphs", bench_graphs,
                ctx.report, case, label, backend, cfg, ctx.tokenizer, s, ctx.artifacts.prompt_template)
        ctx.save()
    if ctx.official is not None and not ctx.args.pipelines_only:
        ctx.log(f"{case}: torch official-style: per-window pieces")
        guarded(ctx, f"{case}: official-style pieces", bench_official_graphs, ctx.report, case, ctx.official, cfg, s)
    if some is not None and not ctx.args.pipelines_only:
        bench_text_lookup(ctx.report, case, some, s)
        ctx.log(f"{case}: kernels")
        bench_kernels(ctx.report, case, some.crop_image, cfg, s, "numpy")
        if any(l in GPU_BACKENDS for l in ctx.backends) and available("cupy"):
            guarded(ctx, f"{case}: cupy kernels", bench_kernels, ctx.report, case, some.crop_image, cfg, s, "cupy")
    ctx.save()
    for n in rest:
        run_targets(ctx, case, rts, some, scan_shape, n, s)
    if targets[-1] > 1 and not (ctx.args.quick or ctx.args.no_unshared):
        n = targets[-1]
        ctx.log(f"{case}: {n} targets, no shared windows, interleaved")
        trials = [pipeline_trial(case, label, rt, requests_for(scan_shape, n), shared_windows=False)
                  for label, rt in rts.items()]
        run_trials(ctx.report, trials, s)
        ctx.save()
    pipeline_ratios(ctx, case, targets)
    for rt in rts.values():
        rt.release_volume()  # the backends stay open


def run_targets(ctx: Context, case: str, rts: dict[str, Any], some: Any, scan_shape: Sequence[int], n: int,
                s: Settings) -> None:
    """Zoom-out-zoom-in of ``n`` targets on every backend and the official-style
    flow, timed in interleaved rounds (all contenders see the same machine load)."""
    targets = requests_for(scan_shape, n)
    trials = [pipeline_trial(case, label, rt, targets) for label, rt in rts.items()]
    if ctx.official is not None and some is not None:
        trials.append(official_trial(case, ctx.official, some, targets))
    ctx.log(f"{case}: {n} target(s), interleaved: " + ", ".join(t.label.split(": ", 1)[1] for t in trials))
    run_trials(ctx.report, trials, s)
    ctx.save()


def pipeline_ratios(ctx: Context, case: str, targets: Sequence[int]) -> None:
    """Per target count: the official-style torch flow over each backend on the
    same device, and the split of that gap into engine (torch pipeline over
    each engine) and flow (official-style over torch pipeline)."""
    rep = ctx.report
    off_gpu = ctx.official is not None and ctx.official.device == "cuda"
    tp = next((label for label in ctx.backends if label.startswith("torch-pipeline")), None)
    for n in targets:
        stage = f"zoom-out-zoom-in, {n} target{'s' * (n > 1)}"
        off = next((r for r in reversed(rep.rows) if r.case == case and r.stage == stage
                    and r.backend.startswith("torch official")), None)
        for label in ctx.backends:
            if label == tp or off is None or _on_gpu(label) != off_gpu:
                continue
            base = label.split(",")[0]
            target = CPU_SPEEDUP if base == "ort-cpu" else GPU_SPEEDUP.get(n) if base in GPU_BACKENDS else None
            rep.ratio(f"{case}: {off.backend} / {label}, {stage}", off, rep.find(case, label, stage), target=target)
        if tp is None:
            continue
        for label in ctx.backends:
            if label != tp and _on_gpu(label) == _on_gpu(tp):
                rep.ratio(f"{case}: {tp} / {label}, {stage} (engine alone)", rep.find(case, tp, stage),
                          rep.find(case, label, stage))
        if off is not None and _on_gpu(tp) == off_gpu:
            rep.ratio(f"{case}: {off.backend} / {tp}, {stage} (flow alone)", off, rep.find(case, tp, stage))
    for label in GPU_BACKENDS:
        rep.check(f"{label}: image encoder batch 8, per window", rep.find(case, label, "image encoder, batch 8"),
                  ENCODER_B8_MS, per_item=True)


def _on_gpu(label: str) -> bool:
    base = label.split(",")[0]
    return base in GPU_BACKENDS or base.endswith("(cuda)")


def _capped(label: str) -> bool:
    return label.endswith(" windows/call")


def raw_case(ctx: Context) -> None:
    """A raw int16 .nii.gz: read / preprocess / write, and the whole infer process."""
    shape = tuple(ctx.args.raw_shape)
    case = "raw " + "x".join(map(str, shape)) + " .nii.gz"
    path = ctx.work / f"raw_{'x'.join(map(str, shape))}_seed{ctx.args.seed}.nii.gz"
    if not path.is_file():
        ctx.log(f"{case}: writing {path}")
        ph, _ = synthetic_scan(shape, ctx.args.seed, fill_air=False)
        write_scan(path, ph)
    ctx.log(f"{case}: read / preprocess / write")
    io = bench_io(ctx.report, case, path, ctx.config.spatial_size, ctx.settings, ctx.work)
    ctx.report.cases[case] = {**io, "window": list(ctx.config.spatial_size), "note": "phantom, int16, gzip"}
    ctx.save()
    target = requests_for(shape, 1)[0]
    exe, how = infer_command(ctx)
    ctx.report.cases[case]["infer"] = how
    for label in ctx.backends:
        name, device = BACKEND_CHOICES.get(label, (None, None))
        if name is None or name == "torch":
            continue  # the torch backend needs the checkpoint; its numbers come from the in-process rows
        out = ctx.work / "infer_mask.nii.gz"
        cmd = build_infer(ctx, exe, path, out, name, device, target)
        ctx.log(f"{case}: {label}: {how} as a subprocess")
        try:
            t = time_calls(lambda cmd=cmd: run_process(cmd), ctx.settings.pipeline_repeat, ctx.settings.pipeline_warmup)
        except SegVolError as exc:
            ctx.report.note(f"{case}: {label}: the infer process failed: {exc}")
            continue
        row = ctx.report.add(case, label, "infer process: start to written mask, 1 target", t, note=how)
        if label in GPU_BACKENDS:
            ctx.report.check(f"{label}: infer 512x512x200 .nii.gz, 1 target, whole process", row, INFER_PROCESS_MS)
        ctx.save()
    for label, backend in ctx.backends.items():
        guarded(ctx, f"{case}: {label}: in process", in_process, ctx, case, label, backend, path, target)


def in_process(ctx: Context, case: str, label: str, backend: Any, path: Path, target: dict[str, Any]) -> None:
    """Read, preprocess, zoom-out-zoom-in and write in this process (loaded backend)."""
    from segvol_rt.io.nifti import read_scan, write_mask
    from segvol_rt.runtime import SegVolRuntime

    rt = SegVolRuntime(ctx.artifacts, backend, label)
    out = ctx.work / "inprocess_mask.nii.gz"
    windows = []

    def run() -> None:
        scan = read_scan(path)
        rt.set_volume(scan.data, scan.affine)
        seg = rt.segment(**target)
        windows.append(seg.n_windows)
        write_mask(out, seg.mask, scan)

    ctx.log(f"{case}: {label}: in-process read to write")
    t = time_calls(run, ctx.settings.pipeline_repeat, ctx.settings.pipeline_warmup)
    ctx.report.add(case, label, "read + preprocess + zoom-out-zoom-in + write, 1 target (in process)", t,
                   windows=windows[-1], note="backend already loaded")
    rt.release_volume()
    ctx.save()


def real_case(ctx: Context) -> None:
    """The real CT of ../shared (skipped when absent): 1 target, every backend."""
    if not REAL_CT.is_file():
        ctx.report.note(f"real CT case skipped: {REAL_CT} not present")
        return
    from segvol_rt.io.nifti import read_scan

    scan = read_scan(REAL_CT)
    case = f"real CT {REAL_CT.name}"
    rts = runtimes_for(ctx, scan.data, scan.affine)
    some = next(iter(rts.values()), None)
    ctx.report.cases[case] = {"scan_shape": list(scan.shape), "crop_shape": list(some.crop_image.shape) if some else None,
                              "window": list(ctx.config.spatial_size), "note": "abdominal CT, int16"}
    run_targets(ctx, case, rts, some, scan.shape, 1, ctx.settings)
    pipeline_ratios(ctx, case, [1])
    for rt in rts.values():
        rt.release_volume()


# -- the infer process ----------------------------------------------------------------


def infer_command(ctx: Context) -> tuple[str | None, str]:
    """(segvol-rt executable, description) when ``segvol-rt infer`` exists, else (None, API note)."""
    exe = shutil.which("segvol-rt") or str(Path(sys.executable).with_name("segvol-rt"))
    if Path(exe).is_file():
        probe = subprocess.run([exe, "infer", "--help"], capture_output=True, text=True)
        if probe.returncode == 0:
            return exe, "segvol-rt infer"
    ctx.report.note("`segvol-rt infer` is not available in this install: the infer process rows time the same "
                    "API calls (load, read, preprocess, segment, write) in a fresh Python process instead")
    return None, "API-equivalent process (python -c)"


def build_infer(ctx: Context, exe: str | None, scan: Path, out: Path, backend: str, device: str,
                target: dict[str, Any]) -> list[str]:
    """The infer process's command, at the precision and threads of the in-process rows."""
    precision, threads = ctx.args.precision, ctx.args.threads
    if exe is None:
        return [sys.executable, "-c", API_INFER, str(ctx.artifacts.root), str(scan), str(out), backend, device,
                target["text"], target["box"], precision or "", str(threads or "")]
    line = ctx.args.infer_cmd.format(exe=exe, scan=scan, artifacts=ctx.artifacts.root, text=f"'{target['text']}'",
                                     box=target["box"], out=out, backend=backend, device=device)
    import shlex

    engine = (["--precision", precision] if precision else []) + (["--threads", str(threads)] if threads else [])
    return shlex.split(line) + engine


def run_process(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SegVolError(f"exit code {proc.returncode}: {last}")


# -- main -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.targets is None:
        args.targets = [1] if args.quick else [1, 5]
    if args.quick and "raw" in args.cases and args.config == "official":
        args.cases = [c for c in args.cases if c != "raw"]
    from segvol_rt.io.artifacts import Artifacts

    report = Report(f"segvol-rt benchmark, config {args.config}")
    report.meta.update(machine_info())
    if args.threads and available("torch"):
        import torch

        torch.set_num_threads(args.threads)  # before any torch work, the export included
    try:
        artifacts_dir, checkpoint, model_info = resolve_model(args, log)
        arts = Artifacts.load(artifacts_dir)
        arts.verify()
    except SegVolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, report, Settings(), arts, checkpoint, work)
    ctx.tokenizer = arts.tokenizer()
    open_all(ctx)
    gpu = any(l in GPU_BACKENDS for l in ctx.backends) or (ctx.official is not None and ctx.official.device == "cuda")
    ctx.settings = default_settings(args, gpu)
    cfg = arts.config
    report.meta["model"] = {**model_info, "window": list(cfg.spatial_size), "patch": list(cfg.patch_size),
                            "embed_dim": cfg.embed_dim, "encoder_depth": cfg.encoder_depth,
                            "max_batch": int(arts.specs["image_encoder"].ranges["B"][2])}
    report.meta["settings"] = {"repeat": ctx.settings.repeat, "warmup": ctx.settings.warmup,
                               "pipeline_repeat": ctx.settings.pipeline_repeat,
                               "pipeline_warmup": ctx.settings.pipeline_warmup, "quick": args.quick,
                               "targets": args.targets, "cases": args.cases, "threads": args.threads,
                               "backends": {label: b.describe() for label, b in ctx.backends.items()}}
    if ctx.official is not None:
        torch = sys.modules["torch"]
        report.meta["settings"]["backends"]["torch-official"] = (
            f"torch {torch.__version__} ({ctx.official.device}, fp32 eager, {torch.get_num_threads()} CPU threads)")
    if not ctx.backends and ctx.official is None:
        print("error: no backend can run on this machine", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    prime(ctx)
    for case in args.cases:
        {"synthetic": synthetic_case, "raw": raw_case, "real": real_case}[case](ctx)
    report.meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    with contextlib.suppress(OSError):  # no load average on this platform
        report.meta["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    ctx.save()
    print(report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
