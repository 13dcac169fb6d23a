"""Stage measurements: the graphs one by one, file IO and preprocessing, the
array kernels, and the whole zoom-out-zoom-in pipeline of a runtime.
Each adds rows to a :class:`~segvol_rt.bench.report.Report`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.bench.report import Report, Row
from segvol_rt.bench.timing import (
    LatencyStats,
    failure_reason,
    time_calls,
    time_interleaved,
)
from segvol_rt.io import spec as S

if TYPE_CHECKING:
    from segvol_rt.backends.base import Backend
    from segvol_rt.io.config import SegVolConfig
    from segvol_rt.io.tokenizer import ClipTokenizer
    from segvol_rt.runtime import SegVolRuntime

# -- stages ---------------------------------------------------------------------------


@dataclass
class Trial:
    """One contender of an interleaved comparison: ``run`` is timed,
    ``before`` runs untimed ahead of every run, ``record`` turns the timing
    into report rows (and returns the main row)."""

    label: str
    run: Callable[[], Any]
    record: Callable[[Report, LatencyStats], Row]
    before: Callable[[], Any] | None = None


@dataclass
class Settings:
    """Warm-up and timed calls: ``repeat``/``warmup`` for single graph calls,
    kernels and file IO; the ``heavy_*`` pair (default: the same) for whole
    pipelines and batch-8 encoder calls, which take seconds on a CPU."""

    repeat: int = 5
    warmup: int = 1
    heavy_repeat: int | None = None
    heavy_warmup: int | None = None

    @property
    def pipeline_repeat(self) -> int:
        return self.repeat if self.heavy_repeat is None else self.heavy_repeat

    @property
    def pipeline_warmup(self) -> int:
        return self.warmup if self.heavy_warmup is None else self.heavy_warmup


def bench_graphs(report: Report, case: str, label: str, backend: Backend, config: SegVolConfig, tokenizer: ClipTokenizer,
                 settings: Settings, template: str) -> None:
    """Image encoder (batch 1 and 8), text encoder (tokenize + encode one
    prompt), prompt decoder (one text + box prompt) on one backend.

    Inputs live where the backend's arrays do (``backend.xp``: device memory
    for the GPU backends), so the rows time the engines, not host copies."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    window = tuple(config.spatial_size)
    max_b = int(backend.specs[S.IMAGE_ENCODER].ranges["B"][2])
    for b in sorted({1, min(8, max_b)}):
        x = xp.asarray(rng.random((b, 1, *window), dtype=np.float32))
        # batch 8 takes pipeline-sized time; the batch-1 calls before it warmed the session up
        r, w = (settings.repeat, settings.warmup) if b == 1 else (settings.pipeline_repeat, settings.pipeline_warmup)
        t = time_calls(functools.partial(backend.encode_image, x), r, w)
        report.add(case, label, f"image encoder, batch {b}", t, batch=b)
        del x
    t = time_calls(lambda: tokenizer.encode_names(["liver"], template), settings.repeat, settings.warmup)
    report.add(case, label, "tokenize one prompt", t)
    t = time_calls(lambda: backend.encode_text(tokenizer.encode_names(["liver"], template)), settings.repeat, settings.warmup)
    report.add(case, label, "text: tokenize + text encoder", t)
    emb = backend.encode_image(xp.asarray(rng.random((1, 1, *window), dtype=np.float32)))
    coords, labels, text = (xp.asarray(a) for a in decoder_feeds(config))
    t = time_calls(lambda: backend.decode(emb, coords, labels, text), settings.repeat, settings.warmup)
    report.add(case, label, "decoder (text + box), batch 1", t)


def bench_box(config: SegVolConfig) -> tuple[int, ...]:
    """The decoder benchmarks' box prompt: the middle half of the window, (d0, h0, w0, d1, h1, w1)."""
    return tuple(s // 4 for s in config.spatial_size) + tuple(3 * s // 4 for s in config.spatial_size)


def decoder_feeds(config: SegVolConfig, batch: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt tokens of a text + box target: box corners then the text token."""
    coords = np.array([*np.reshape(bench_box(config), (2, 3)), [0, 0, 0]], np.float32)
    labels = np.array([S.LABEL_BOX_MIN, S.LABEL_BOX_MAX, S.LABEL_TEXT], np.int32)
    text = np.random.default_rng(1).standard_normal((batch, config.embed_dim)).astype(np.float32)
    return np.repeat(coords[None], batch, 0), np.repeat(labels[None], batch, 0), text


def bench_text_lookup(report: Report, case: str, runtime: SegVolRuntime, settings: Settings) -> None:
    """A known target name from the artifacts' embedding table."""
    runtime.text_embeddings(["liver"])  # loads the table once
    t = time_calls(lambda: runtime.text_embeddings(["liver"]), settings.repeat, settings.warmup)
    report.add(case, "runtime", "text: table lookup", t)


def bench_io(report: Report, case: str, path: Path, spatial_size: Sequence[int], settings: Settings,
             out_dir: Path) -> dict[str, Any]:
    """Read (nibabel alone, and segvol-rt's reader), preprocess, read +
    preprocess, and mask writing (.nii.gz) of one scan file."""
    nib = require("nibabel")
    from segvol_rt.io.nifti import read_scan, write_mask
    from segvol_rt.pipeline.preprocess import preprocess

    r, w = settings.repeat, settings.warmup
    t = time_calls(lambda: np.asanyarray(nib.load(str(path)).dataobj), r, w)
    nib_row = report.add(case, "numpy", "read: nibabel alone", t)
    t = time_calls(lambda: read_scan(path), r, w)
    read_row = report.add(case, "numpy", "read: segvol-rt read_scan", t)
    scan = read_scan(path)
    t = time_calls(lambda: preprocess(scan.data, spatial_size), r, w)
    pre_row = report.add(case, "numpy", "preprocess", t)
    t = time_calls(lambda: preprocess(read_scan(path).data, spatial_size), r, w)
    both = report.add(case, "numpy", "read + preprocess", t)
    pre = preprocess(scan.data, spatial_size)
    mask = np.zeros(scan.shape, np.uint8, order="F")
    mask[tuple(slice(n // 3, 2 * n // 3) for n in scan.shape)] = 1
    target = out_dir / "bench_mask.nii.gz"
    t = time_calls(lambda: write_mask(target, mask, scan), r, w)
    report.add(case, "numpy", "write mask (.nii.gz)", t)
    report.ratio(f"{case}: preprocess / nibabel read", pre_row, nib_row, at_most=1.5,
                 note="target: preprocessing <= 1.5x just reading the file")
    report.ratio(f"{case}: read + preprocess / nibabel read", both, nib_row)
    report.ratio(f"{case}: preprocess / segvol-rt read", pre_row, read_row)
    return {"scan_shape": list(scan.shape), "crop_shape": list(pre.image.shape)}


def bench_kernels(report: Report, case: str, crop_image: Any, config: SegVolConfig, settings: Settings, xp_name: str = "numpy") -> None:
    """The array ops of the pipeline on ``crop_image`` (D, H, W): zoom-out
    resize, coarse upsample to the crop, ROI box, window upsample, blending."""
    from segvol_rt import ops

    xp = np if xp_name == "numpy" else require("cupy")
    img = xp.asarray(crop_image)
    window = tuple(config.spatial_size)
    low = xp.asarray(np.random.default_rng(0).standard_normal(config.low_res_size).astype(np.float32))
    starts = ops.window_starts(img.shape, window, 0.5)[:6]
    padded = [max(a, b) for a, b in zip(img.shape, window)]
    wins = xp.asarray(np.random.default_rng(1).standard_normal((len(starts), *window)).astype(np.float32))
    crop_logits = ops.upsample_then_nearest(low, window, img.shape)
    cases = [
        ("resize crop -> window (nearest-exact)", lambda: ops.resize(img, window, "nearest-exact")),
        ("upsample low-res -> window -> crop", lambda: ops.upsample_then_nearest(low, window, img.shape)),
        ("ROI box of crop logits", lambda: ops.positive_box(crop_logits)),
        ("upsample low-res -> window (trilinear)", lambda: ops.resize(low, window, "trilinear")),
        (f"blend {len(starts)} windows", lambda: ops.blend_windows(wins, starts, padded)),
        ("foreground stats + normalise crop", lambda: ops.normalize_min_max(img, ops.foreground_stats(img))),
    ]
    for name, fn in cases:
        report.add(case, f"kernels ({xp_name})", name, time_calls(fn, settings.repeat, settings.warmup))


_ZOOM_STAGES = ("encode_zoom_out", "decode_zoom_out", "upsample_zoom_out", "plan_windows", "encode_windows",
                "decode_windows", "blend", "postprocess", "text", "prompts")


def run_trials(report: Report, trials: Sequence[Trial], settings: Settings) -> list[Row | None]:
    """Interleaved pipeline-sized timing of ``trials``; rows for those that
    ran, a note for those that failed."""
    rows: list[Row | None] = []
    for trial, result in zip(trials, time_interleaved(trials, settings.pipeline_repeat, settings.pipeline_warmup)):
        if isinstance(result, BaseException):
            report.note(f"{trial.label} failed: {failure_reason(result)}")
            rows.append(None)
        else:
            rows.append(trial.record(report, result))
    return rows


def pipeline_trial(case: str, label: str, runtime: SegVolRuntime, targets: Sequence[Mapping[str, Any]],
                   shared_windows: bool = True) -> Trial:
    """Zoom-out-zoom-in of ``targets`` on the runtime's current volume, caches
    reset before every run; records one row for the whole call and one per
    stage (the runtime's own stage timers).

    ``shared_windows=False`` runs the targets one call each with the window
    cache cleared in between: what targets whose ROIs share no window cost."""
    stage_samples: dict[str, list[float]] = {}
    info: dict[str, Any] = {}

    def run() -> None:
        calls = [list(targets)] if shared_windows else [[t] for t in targets]
        segs: list[Any] = []
        encoded = 0
        stages: dict[str, float] = {}
        for chunk in calls:
            if not shared_windows:
                runtime.clear_window_cache()
            out = runtime.segment_many(chunk)
            encoded += int(runtime.stats.get("windows_encoded") or 0)
            for k, v in out[0].timings.items():  # one timings dict per call
                stages[k] = stages.get(k, 0.0) + v
            segs.extend(out)
        info.update(windows=sum(s.n_windows for s in segs), encoded=encoded, segs=segs)
        for k, v in stages.items():
            stage_samples.setdefault(k, []).append(v)

    def record(report: Report, t: LatencyStats) -> Row:
        n = len(targets)
        what = "zoom-out-zoom-in" + ("" if shared_windows else " (no shared windows)")
        row = report.add(case, label, f"{what}, {n} target{'s' * (n > 1)}", t, windows=info.get("windows"),
                         note=f"{info.get('encoded')} windows encoded")
        for k in _ZOOM_STAGES:
            if k in stage_samples:
                report.add(case, label, f"  {n}-target stage: {k}", LatencyStats(stage_samples[k][-len(t.samples):]))
        if all(s.no_foreground for s in info.get("segs") or []):
            report.note(f"{case}: the coarse pass found no foreground; zoom-in did not run")
        return row

    return Trial(f"{case}: {label}", run, record, before=runtime.clear_caches)


def bench_pipeline(report: Report, case: str, label: str, runtime: SegVolRuntime, targets: Sequence[Mapping[str, Any]],
                   settings: Settings, shared_windows: bool = True) -> Row | None:
    """:func:`pipeline_trial` timed on its own."""
    return run_trials(report, [pipeline_trial(case, label, runtime, targets, shared_windows)], settings)[0]


