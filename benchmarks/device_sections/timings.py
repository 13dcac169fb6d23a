"""Timings and memory: CUDA events, 2 warm-ups then 10 timed runs, median and
p90, peak GPU memory per row (torch's max_memory_allocated, CuPy's pool, the
device-wide figure; pools freed between rows).

* the image encoder at batch 1 and 8: ORT CUDA fp32 with TF32 off, on, fp16;
* zoom-out-zoom-in on the official demo's 200x352x480 crop for 1 and 5
  targets, and a follow-up prompt (caches warm), with the runtime's own stage clocks;
* the official-style torch pipeline (``REFERENCE_MODULE``) on the same GPU in
  the same run, so every ratio to ../shared/reference/anchors.md is side by side.

The full-size model has random weights and is built and exported here
(torch is on the device; the export does not travel). ``--small``: the tiny
config; emulated: everything on the CPU (wall clock), to keep this code honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from device_sections.common import BENCH_MODEL_MODULE, Context, error, memory_peaks, memory_reset, reference_module

REPEAT, WARMUP = 10, 2


def _timed(what: str, fn: Callable[[], Any], before: Callable[[], Any] | None = None, repeat: int = REPEAT,
           warmup: int = WARMUP) -> dict[str, Any]:
    from device_sections.common import synchronize, time_ms

    memory_reset()
    try:
        if before is None:
            row = time_ms(fn, repeat, warmup)
        else:
            def once() -> None:
                before()
                synchronize()
                fn()
            row = time_ms(once, repeat, warmup)
            row["note"] = "includes clearing the caches before each run"
        row.update(what=what, memory=memory_peaks())
    except Exception as exc:  # noqa: BLE001 - the next row still runs
        row = {"what": what, **error(exc)}
    print(f"[timings] {what}: {row.get('median_ms', row.get('error'))}", flush=True)
    return row


def _reps(ctx: Context) -> int:
    return 3 if ctx.small else REPEAT


def prepare_model(ctx: Context) -> Any:
    """The benchmark model (``official`` size, ``tiny`` under --small), built and
    exported once into the work folder; the driver starts this in the
    background at the beginning of the run, so the timings find it made."""
    bench = reference_module(BENCH_MODEL_MODULE)
    return bench.prepare_bench_model("tiny" if ctx.small else "official", ctx.work / "bench_models",
                                     log=lambda m: print(f"[model] {m}", flush=True))


def _model(ctx: Context) -> Any:
    t0 = time.perf_counter()
    model = prepare_model(ctx)
    return model, round(time.perf_counter() - t0, 1)


def _backends(ctx: Context, art: Any) -> dict[str, Any]:
    if ctx.emulate:
        from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend

        return {"ort-cpu fp32": OnnxRuntimeBackend(art, device="cpu")}
    from segvol_rt.backends.ort_cuda import OrtCudaBackend

    return {"ort-cuda fp32 (TF32 off)": OrtCudaBackend(art, precision="fp32", tf32=False),
            "ort-cuda fp32 (TF32 on)": OrtCudaBackend(art, precision="fp32", tf32=True),
            "ort-cuda fp16": OrtCudaBackend(art, precision="fp16")}


def run(ctx: Context) -> dict[str, Any]:
    from segvol_rt.io.artifacts import Artifacts

    out: dict[str, Any] = {"rows": [], "repeat": REPEAT, "warmup": WARMUP}
    model, seconds = _model(ctx)
    out["model"] = {"config": model.name, "export_seconds": seconds, "info": model.info}
    art = Artifacts.load(model.artifacts)
    backends = _backends(ctx, art)
    window = tuple(art.config.spatial_size)
    for label, backend in backends.items():
        for batch in (1, 8):
            x = np.random.default_rng(batch).random((batch, 1, *window), dtype=np.float32)
            feed = backend.xp.asarray(x)
            out["rows"].append(_timed(f"image encoder {label}, batch {batch}", lambda b=backend, f=feed: b.encode_image(f),
                                      repeat=_reps(ctx), warmup=WARMUP))
    out["rows"] += _pipelines(ctx, art, backends)
    out["rows"] += _official(ctx, model, art)
    out["ok"] = all("error" not in r for r in out["rows"])
    return out


def _scan(art: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from segvol_rt.bench.scans import scaled_crop, synthetic_scan

    crop = scaled_crop(art.config.spatial_size)
    scan_shape = crop[::-1]
    ph, image = synthetic_scan(scan_shape, 0)
    return np.asfortranarray(image, dtype=np.float32), ph.affine, scan_shape


def _pipelines(ctx: Context, art: Any, backends: dict[str, Any]) -> list[dict[str, Any]]:
    from segvol_rt.bench.scans import requests_for
    from segvol_rt.runtime import Request, SegVolRuntime

    data, affine, scan_shape = _scan(art)
    rows = []
    for label, backend in backends.items():
        rt = SegVolRuntime(art, backend, label)
        rt.set_volume(data, affine)
        for n in (1, 5):
            targets = [Request(**t) for t in requests_for(scan_shape, n)]
            row = _timed(f"zoom-out-zoom-in {label}, {n} target(s), crop {list(rt.crop_image.shape)}",
                         lambda rt=rt, t=targets: rt.segment_many(t), before=rt.clear_caches, repeat=_reps(ctx))
            row["stages_s_last_run"] = rt.segment_many(targets)[0].timings
            rows.append(row)
        follow = Request(**requests_for(scan_shape, 2)[1])
        rows.append(_timed(f"follow-up prompt {label} (caches warm)", lambda rt=rt, f=follow: rt.segment_many([f]),
                           repeat=_reps(ctx)))
        rt.release_volume()
    return rows


def _official(ctx: Context, model: Any, art: Any) -> list[dict[str, Any]]:
    """The official-style torch flow (fp32 eager, one window at a time, the text
    encoder re-run per window) on the same crop and zoom-out images."""
    try:
        import torch

        from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
        from segvol_rt.bench.scans import requests_for
        from segvol_rt.export.checkpoint import build_model
        from segvol_rt.runtime import SegVolRuntime

        ref = reference_module()
        device = "cuda" if torch.cuda.is_available() and not ctx.emulate else "cpu"
        net, _ = build_model(model.checkpoint)
        net = net.to(device).eval()
        wrapper = ref.OfficialStyleModel(net, art.tokenizer(), art.prompt_template, device)
        data, affine, scan_shape = _scan(art)
        rt = SegVolRuntime(art, OnnxRuntimeBackend(art, device="cpu"), "geometry only")
        rt.set_volume(data, affine)
        rows = []
        for n in (1, 5):
            trial = ref.official_trial("official", wrapper, rt, requests_for(scan_shape, n))
            quick = ctx.small or device == "cpu"  # seconds per run on a CPU
            rows.append(_timed(f"official-style torch pipeline ({device}, fp32), {n} target(s)", trial.run,
                               repeat=1 if quick else REPEAT, warmup=0 if quick else WARMUP))
        rows[-1]["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        return rows
    except Exception as exc:  # noqa: BLE001
        return [{"what": "official-style torch pipeline", **error(exc)}]
