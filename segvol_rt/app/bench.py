"""The quick run behind ``segvol-rt bench``: per-stage latencies of each backend
that can run here, on a small phantom, one target. The full side-by-side
benchmark is ``benchmarks/bench.py``; it drives the same pieces.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from segvol_rt._optional import available, require
from segvol_rt.bench.machine import machine_info
from segvol_rt.bench.report import Report
from segvol_rt.bench.scans import requests_for, synthetic_scan, write_scan
from segvol_rt.bench.stages import (
    Settings,
    bench_graphs,
    bench_io,
    bench_kernels,
    bench_pipeline,
    bench_text_lookup,
)
from segvol_rt.errors import SegVolError
from segvol_rt.export.reference.bench import (
    OfficialStyleModel,
    bench_official,
    bench_official_graphs,
)
from segvol_rt.export.reference.bench_model import prepare_bench_model
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import GRAPH_VARIANTS

Log = Callable[[str], None]


# -- the quick run (`segvol-rt bench`) -------------------------------------------------


def _open(artifacts: Any, backend: str, device: str, checkpoint: Any = None, model: Any = None,
          threads: int | None = None, precision: str | None = None) -> Any:
    """A backend by name, or raise SegVolError saying why it cannot run.
    ``precision``: what it computes in (None: the backend's default; torch runs fp32 only)."""
    if backend == "torch":
        precision = None  # the torch rows are the fp32 reference
    if backend == "torch" and model is not None:
        from segvol_rt.backends.torch import TorchBackend

        return TorchBackend(artifacts, device=device, model=model)
    from segvol_rt.backends.select import open_backend

    opened, _ = open_backend(artifacts, backend=backend, device=device, checkpoint=checkpoint,
                             threads=threads, precision=precision)
    return opened


BACKEND_CHOICES = {
    # label: (backend name, device)
    "ort-cpu": ("onnxruntime", "cpu"),
    "ort-cuda": ("onnxruntime", "cuda"),
    "openvino-cpu": ("openvino", "cpu"),
    "tensorrt": ("tensorrt", "cuda"),
    "torch-pipeline": ("torch", "auto"),
}


def torch_device(requested: str = "auto") -> str:
    torch = require("torch")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def open_backends(artifacts: Any, labels: Sequence[str], checkpoint: Any, model: Any, log: Log,
                  threads: int | None = None, precision: str | None = None) -> dict[str, Any]:
    """Open each backend of ``labels`` that can run here; log why the others
    cannot. ``threads``: threads of the CPU backends (default: all cores);
    ``precision``: what every backend computes in (None: each one's default); a
    backend that cannot is skipped with its reason."""
    opened = {}
    for label in labels:
        name, device = BACKEND_CHOICES[label]
        try:
            if name == "torch":
                if model is None and checkpoint is None:
                    raise SegVolError("no checkpoint to build the torch model from")
                device = torch_device(device)
            backend = _open(artifacts, name, device, checkpoint, model, threads, precision)
        except SegVolError as exc:
            log(f"skipping {label}: {exc}")
            continue
        opened[f"{label}" if name != "torch" else f"torch-pipeline ({backend.device})"] = backend
    return opened


def note_backends(report: Report, opened: Mapping[str, Any]) -> None:
    """Note what each opened backend runs: engine, device, threads and the precision it computes in."""
    for label, backend in opened.items():
        report.note(f"{label}: {backend.describe()}")


def capped_backend(backend: Any, max_windows: int) -> Any:
    """A view of ``backend`` whose image encoder takes at most ``max_windows``
    windows per call: the runtime reads its batch limit from the specs, so
    this times the pipeline with smaller encoder batches on the same sessions."""
    from segvol_rt.backends.wrap import DelegatingBackend

    specs = dict(backend.specs)
    enc = specs[S.IMAGE_ENCODER]
    lo, _, hi = enc.ranges["B"]
    cap = max(lo, min(hi, int(max_windows)))
    specs[S.IMAGE_ENCODER] = dataclasses.replace(enc, ranges={**enc.ranges, "B": (lo, cap, cap)})

    class Capped(DelegatingBackend):
        def describe(self) -> str:
            return f"{backend.describe()}, at most {max_windows} window(s) per encoder call"

    capped = Capped(backend, specs)
    capped.window_batch = cap
    return capped


def quick_bench(
    artifacts: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    backends: Sequence[str] = tuple(BACKEND_CHOICES),
    repeat: int = 5,
    warmup: int = 1,
    scan_shape: Sequence[int] = (160, 160, 48),
    cache_dir: str | os.PathLike[str] | None = None,
    log: Log | None = None,
    model_name: str = "tiny",
    threads: int | None = None,
    precision: str | None = None,
) -> Report:
    """A run of seconds on whatever is installed: per-stage latencies of each
    backend that can run, on a small phantom scan, one target.

    The model: ``artifacts`` when given (with ``checkpoint`` for the torch
    rows), else ``model_name``: ``"tiny"`` (the tiny benchmark model, exported
    into the cache once; needs the ``export`` extra) or ``"demo"`` (the
    shipped demo model). ``threads``: CPU threads of ONNX Runtime, OpenVINO and
    torch (default: all cores); ``precision``: fp32, fp16 (the ONNX Runtime and
    TensorRT rows; needs artifacts from ``export --precision fp16``) or bf16 (the
    OpenVINO row, on CPUs that offer it); the rows of backends that do not compute
    in it are skipped with the reason."""
    import tempfile

    say = log or (lambda _m: None)
    from segvol_rt.io.artifacts import Artifacts

    model = None
    if threads and available("torch"):
        require("torch").set_num_threads(threads)
    artifacts, checkpoint = _quick_model(artifacts, checkpoint, model_name, cache_dir, say)
    arts = Artifacts.load(artifacts)
    arts.verify()
    if precision in GRAPH_VARIANTS:
        arts.require_precision(precision)  # one line naming `export --precision fp16`
    config = arts.config
    report = _quick_report(config, artifacts, repeat, warmup, threads, precision)
    settings = Settings(repeat=repeat, warmup=warmup)
    tokenizer = arts.tokenizer()
    with tempfile.TemporaryDirectory(prefix="segvol-rt-bench-") as tmp:
        tmpdir = Path(tmp)
        ph, image = synthetic_scan(scan_shape, fill_air=False)
        path = write_scan(tmpdir / "scan.nii.gz", ph)
        case = "phantom " + "x".join(str(s) for s in scan_shape)
        say(f"read / preprocess / write: {path.name}")
        report.cases[case] = bench_io(report, case, path, config.spatial_size, settings, tmpdir)
        report.cases[case]["window"] = list(config.spatial_size)
        opened = open_backends(arts, backends, checkpoint, model, say, threads, precision)
        if not opened:
            raise SegVolError("no backend can run on this machine")
        note_backends(report, opened)
        _quick_backends(report, case, opened, arts, path, image.shape, checkpoint, tokenizer, settings, say)
    _pipeline_ratios(report, case, list(opened))
    return report


def _quick_model(artifacts: Any, checkpoint: Any, model_name: str, cache_dir: Any, say: Log) -> tuple[Any, Any]:
    """``(artifacts, checkpoint)``: the given ones, or, without ``artifacts``, those
    of the bench model ``model_name`` (prepared into ``cache_dir`` once)."""
    if artifacts is None:
        if model_name == "tiny" and not available("torch"):
            raise SegVolError(
                "segvol-rt bench needs a model: pass --artifacts DIR (from segvol-rt export), use --model demo, "
                "or install the export extra to build the tiny benchmark model: pip install 'segvol-rt[export]'"
            )
        bm = prepare_bench_model(model_name, cache_dir, log=say)
        artifacts, checkpoint = bm.artifacts, bm.checkpoint
    return artifacts, checkpoint


def _quick_report(config: Any, artifacts: Any, repeat: int, warmup: int, threads: int | None,
                  precision: str | None) -> Report:
    """An empty quick-run report with the machine, the settings and the model's sizes."""
    report = Report("segvol-rt bench (quick)")
    report.meta.update(machine_info())
    report.meta["settings"] = {"repeat": repeat, "warmup": warmup, "artifacts": str(artifacts), "threads": threads,
                               "precision": precision}
    report.meta["model"] = {"window": list(config.spatial_size), "embed_dim": config.embed_dim,
                            "encoder_depth": config.encoder_depth}
    return report


def _quick_backends(report: Report, case: str, opened: Mapping[str, Any], arts: Any, path: Path,
                    scan_shape: Sequence[int], checkpoint: Any, tokenizer: Any, settings: Settings, say: Log) -> None:
    """Each opened backend's graphs and 1-target zoom-out-zoom-in on the scan at
    ``path`` (``scan_shape``: its image's (I, J, K) shape, for the target's prompts);
    with the first backend also the text lookup, the numpy kernels and (given a
    checkpoint and torch) the torch official-style reference."""
    from segvol_rt.runtime import SegVolRuntime

    config = arts.config
    targets = requests_for(scan_shape, 1)
    for label, backend in opened.items():
        say(f"{label}: graphs")
        bench_graphs(report, case, label, backend, config, tokenizer, settings, arts.prompt_template)
        rt = SegVolRuntime(arts, backend, label)
        rt.set_volume(path)
        say(f"{label}: zoom-out-zoom-in")
        bench_pipeline(report, case, label, rt, targets, settings)
        if label == next(iter(opened)):
            bench_text_lookup(report, case, rt, settings)
            say("kernels (numpy)")
            bench_kernels(report, case, rt.crop_image, config, settings, "numpy")
            report.cases[case]["crop_shape"] = list(rt.crop_image.shape)
        if label == next(iter(opened)) and checkpoint is not None and available("torch"):
            say("torch official-style reference")
            _quick_official(report, case, rt, checkpoint, tokenizer, arts.prompt_template, targets, settings)
        rt.close()


def _quick_official(report: Report, case: str, rt: Any, checkpoint: Any, tokenizer: Any, template: str,
                    targets: Sequence[Mapping[str, Any]], settings: Settings) -> None:
    from segvol_rt.export.checkpoint import build_model

    model, _ = build_model(checkpoint)
    device = torch_device()
    wrapper = OfficialStyleModel(model.to(device).eval(), tokenizer, template, device)
    bench_official_graphs(report, case, wrapper, rt.config, settings)
    bench_official(report, case, wrapper, rt, targets, settings)


def _pipeline_ratios(report: Report, case: str, labels: Sequence[str]) -> None:
    """Each backend's 1-target zoom-out-zoom-in against the official-style
    torch flow, and against the first backend."""
    stage = "zoom-out-zoom-in, 1 target"
    official = [r for r in report.rows if r.case == case and r.backend.startswith("torch official") and r.stage == stage]
    for label in labels:
        row = report.find(case, label, stage)
        if official:
            report.ratio(f"{case}: {official[-1].backend} / {label}, {stage}", official[-1], row)
        if label != labels[0]:
            report.ratio(f"{case}: {label} / {labels[0]}, {stage}", row, report.find(case, labels[0], stage))
