"""One device session's checks of the GPU path: run on a machine with a CUDA GPU and CuPy.

    python benchmarks/device_check.py --out $OUT [--artifacts DIR] [--small]

1. **tests**: the GPU parametrisations of tests/kernels/test_kernels.py and
   the compile tests (pytest, in a subprocess);
2. **twins**: every kernel (through segvol_rt.ops.cuda) against its NumPy twin
   at realistic sizes - a CT scan, its crop, zoom-out and window volumes -
   with max errors and mismatch counts (exact everywhere but sigmoid);
3. **timing**: each GPU op at those sizes (CUDA events, warm-up, median of
   repeats) with its effective bandwidth, the NumPy twin's time on the host,
   and torch's CUDA ``F.interpolate`` where torch is installed (speed and
   agreement, for reference: torch's CUDA rounding is not the reference);
4. **pipeline** (``--artifacts``): SegVolRuntime with ONNX Runtime on CUDA
   (``--precision``: the fp32 graphs or their fp16 variants from
   ``segvol-rt export --precision fp16``) against the fp32 graphs on the CPU,
   on one synthetic phantom: Dice, differing voxels, timings. Skipped with the
   reason when any piece is missing.

For part 4 the CUDA build of onnxruntime must be importable first: on the
lent H200 follow ../shared/device/README.md (the chunked onnxruntime-gpu
wheel, then ``export PYTHONPATH=/tmp/ortsite:$PYTHONPATH``); the artifacts
directory travels with the tree (``carry``), so it must be small (tiny model).

Writes ``device_check.json`` and ``device_check.md`` to ``--out`` (default
$OUT). Needs numpy and cupy; torch, onnxruntime-gpu and the runtime are
optional. ``--emulate`` runs everything on the CPU emulator of the kernels
(tests/support/kernel_emu.py) to check this script without a GPU.
Sized to finish within ~5 minutes on an H200 (``--small``: seconds).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# -- setup -------------------------------------------------------------------------


def _kernels_importable() -> bool:
    try:
        importlib.import_module("segvol_rt.kernels").source_text("common.cuh")
        return True
    except Exception:  # noqa: BLE001
        for name in [m for m in sys.modules if m == "segvol_rt" or m.startswith("segvol_rt.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        return False


def ensure_importable(log: list[str]) -> None:
    """``segvol_rt`` with its ``segvol_rt.kernels`` package (the top-level kernels/
    folder) for this process and the pytest subprocess: as installed, else an
    offline editable install, else a link segvol_rt/kernels -> ../kernels in
    this (throw-away) copy of the tree."""
    sys.path.insert(0, str(ROOT))
    if _kernels_importable():
        return
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        capture_output=True, text=True,
    )
    if run.returncode == 0 and _kernels_importable():
        log.append("installed segvol-rt editable (offline) to import segvol_rt.kernels")
        return
    link = ROOT / "segvol_rt" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels", target_is_directory=True)
    log.append(f"editable install failed ({run.stderr.strip()[-200:]}); linked {link} -> ../kernels")
    if not _kernels_importable():
        raise SystemExit("cannot import segvol_rt.kernels")


class Env:
    """The device under test: cupy + real kernels, or numpy + the CPU emulator."""

    def __init__(self, emulate: bool):
        from segvol_rt.ops import cuda as gpu_ops

        self.emulated = emulate
        if emulate:
            spec = importlib.util.spec_from_file_location("kernel_emu", ROOT / "tests" / "support" / "kernel_emu.py")
            emu = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(emu)
            self.cupy = None
            self.device = emu.backend(poison=True)
        else:
            import cupy

            from segvol_rt import kernels

            self.cupy = cupy
            self.device = gpu_ops.Device(xp=cupy, kernel=kernels.function, to_host=cupy.asnumpy, poison=True)
        self.xp = self.device.xp

    def put(self, a: np.ndarray) -> Any:
        return self.xp.array(a, copy=True, order="K")

    def get(self, a: Any) -> np.ndarray:
        return np.asarray(self.device.to_host(a))

    def sync(self) -> None:
        if self.cupy is not None:
            self.cupy.cuda.Stream.null.synchronize()

    def time_ms(self, fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
        """Per-call milliseconds: CUDA events around each call (host round trips
        inside an op count), or wall time when emulated."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            if self.cupy is None:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
                continue
            start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(self.cupy.cuda.get_elapsed_time(start, end))
        return times


def environment(env: Env) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__, "emulated": env.emulated}
    if env.cupy is not None:
        cp = env.cupy
        props = cp.cuda.runtime.getDeviceProperties(0)
        info.update(
            cupy=cp.__version__,
            gpu=props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
            compute_capability=f"{props['major']}.{props['minor']}",
            sms=int(props["multiProcessorCount"]),
            cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
            cuda_driver=cp.cuda.runtime.driverGetVersion(),
        )
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        info["torch"] = None
    return info


# -- workload --------------------------------------------------------------------------


def workload(small: bool, seed: int = 0) -> dict[str, Any]:
    """Realistic arrays (host numpy): a CT scan (I, J, K) Fortran-ordered as
    nibabel loads it, its crop (D, H, W), low-res logits and windows."""
    rng = np.random.default_rng(seed)
    scan_shape = (96, 96, 40) if small else (512, 512, 200)
    crop_shape = (36, 70, 66) if small else (190, 380, 400)
    window = (8, 32, 32) if small else (32, 256, 256)
    low = tuple(s // 4 for s in window)
    i, j, k = (np.linspace(-1, 1, n, dtype=np.float32) for n in scan_shape)
    body = (i[:, None, None] ** 2 + j[None, :, None] ** 2 * 1.3) < 0.8
    ct = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 20, scan_shape).astype(np.float32)
    ct[: scan_shape[0] // 3, scan_shape[1] // 3 : scan_shape[1] // 2] += 600  # "bone"
    ct = np.asfortranarray(ct.round())
    crop = rng.standard_normal(crop_shape).astype(np.float32)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in crop_shape), indexing="ij")
    crop_logits = (0.3 - (zz**2 + yy**2 + xx**2)) * 20 + rng.normal(0, 0.5, crop_shape).astype(np.float32)
    roi = (crop_shape[0] // 4, crop_shape[1] // 5, crop_shape[2] // 6)
    roi_shape = (crop_shape[0] // 2, crop_shape[1] // 2, crop_shape[2] // 2)
    from segvol_rt import ops

    pads = ops.pad_for_windows(roi_shape, window)
    padded = tuple(r + a + b for r, (a, b) in zip(roi_shape, pads))
    starts = ops.window_starts(roi_shape, window, 0.5)
    return {
        "ct": ct,
        "crop": crop,
        "crop_logits": crop_logits.astype(np.float32),
        "low_res": rng.standard_normal(low).astype(np.float32) * 4,
        "window": window,
        "cube": (rng.random(window) < 0.5).astype(np.uint8),
        "windows": rng.standard_normal((len(starts), *window)).astype(np.float32),
        "starts": starts,
        "padded": padded,
        "unpad_box": tuple(a for a, _ in pads) + tuple(n - b for n, (_, b) in zip(padded, pads)),
        "roi_start": roi,
        "roi_logits": rng.standard_normal(roi_shape).astype(np.float32),
        "scan_shape": scan_shape,
        "origin": (-3, -5, 7),
    }


def cases(w: dict[str, Any]) -> list[dict[str, Any]]:
    """name, GPU call (on device arrays), NumPy twin call, bytes moved, exactness."""
    from segvol_rt import ops
    from segvol_rt.ops import cuda as gpu_ops

    crop_box = (2, 3, 4) + tuple(w["crop"].shape)  # the foreground box inside the padded scan
    n_crop = int(np.prod(w["crop"].shape))
    n_win = int(np.prod(w["window"]))
    n_scan = int(np.prod(w["scan_shape"]))
    stats = ops.foreground_stats(w["ct"])
    scan = w["scan_shape"]
    return [
        dict(name="resize nearest-exact crop->zoom-out", arrays=("crop",),
             gpu=lambda a: gpu_ops.resize(a, w["window"], "nearest-exact", crop_box),
             ref=lambda a: ops.resize(a, w["window"], "nearest-exact", crop_box), bytes=8 * n_win,
             torch=("nearest-exact", w["window"])),
        dict(name="resize nearest uint8 zoom-out->crop", arrays=("cube",),
             gpu=lambda a: gpu_ops.resize(a, w["crop"].shape, "nearest"),
             ref=lambda a: ops.resize(a, w["crop"].shape, "nearest"), bytes=2 * n_crop),
        dict(name="resize trilinear low-res->window", arrays=("low_res",),
             gpu=lambda a: gpu_ops.resize(a, w["window"], "trilinear"),
             ref=lambda a: ops.resize(a, w["window"], "trilinear"), bytes=4 * n_win,
             torch=("trilinear", w["window"])),
        dict(name="upsample_then_nearest low-res->window->crop", arrays=("low_res",),
             gpu=lambda a: gpu_ops.upsample_then_nearest(a, w["window"], w["crop"].shape),
             ref=lambda a: ops.upsample_then_nearest(a, w["window"], w["crop"].shape), bytes=4 * n_crop),
        dict(name="positive_box crop logits", arrays=("crop_logits",), gpu=gpu_ops.positive_box,
             ref=ops.positive_box, bytes=4 * n_crop),
        dict(name="bounding_box uint8 mask", arrays=("cube",), gpu=gpu_ops.bounding_box,
             ref=ops.bounding_box, bytes=n_win),
        dict(name="foreground_stats scan", arrays=("ct",), gpu=gpu_ops.foreground_stats,
             ref=ops.foreground_stats, bytes=4 * 4 * n_scan, reps=5),
        dict(name="normalize_min_max scan", arrays=("ct",), gpu=lambda a: gpu_ops.normalize_min_max(a, stats),
             ref=lambda a: ops.normalize_min_max(a, stats), bytes=3 * 4 * n_scan),
        dict(name="sigmoid crop logits (tolerance 4e-7 rel)", arrays=("crop_logits",), gpu=gpu_ops.sigmoid,
             ref=ops.sigmoid, bytes=8 * n_crop, exact=False),
        dict(name="blend_windows ROI (padded)", arrays=("windows",),
             gpu=lambda a: gpu_ops.blend_windows(a, w["starts"], w["padded"]),
             ref=lambda a: ops.blend_windows(a, w["starts"], w["padded"]),
             bytes=4 * (int(np.prod(w["padded"])) + w["windows"].size)),
        dict(name="blend_windows_box ROI (unpadded)", arrays=("windows",),
             gpu=lambda a: gpu_ops.blend_windows_box(a, w["starts"], w["padded"], w["unpad_box"]),
             ref=lambda a: ops.blend_windows_box(a, w["starts"], w["padded"], w["unpad_box"]),
             bytes=4 * (int(np.prod(w["padded"])) + w["windows"].size)),
        dict(name="scan_mask crop+ROI -> scan (perm 2,1,0)", arrays=("crop_logits", "roi_logits"),
             gpu=lambda a, r: gpu_ops.scan_mask(a, scan, (2, 1, 0), (False,) * 3, w["origin"], r, w["roi_start"]),
             ref=lambda a, r: ops.scan_mask(a, scan, (2, 1, 0), (False,) * 3, w["origin"], r, w["roi_start"]),
             bytes=n_scan + 4 * n_crop),
        dict(name="scan_mask with flips (perm 2,1,0, flip D,W)", arrays=("crop_logits",),
             gpu=lambda a: gpu_ops.scan_mask(a, scan, (2, 1, 0), (True, False, True), w["origin"]),
             ref=lambda a: ops.scan_mask(a, scan, (2, 1, 0), (True, False, True), w["origin"]),
             bytes=n_scan + 4 * n_crop),
    ]


# -- checks ----------------------------------------------------------------------------------


def compare(got: Any, ref: Any, exact: bool) -> dict[str, Any]:
    if ref is None or isinstance(ref, tuple) and not hasattr(ref, "dtype"):
        ok = got == ref
        return {"ok": bool(ok), "got": str(got), "ref": str(ref)}
    g, r = np.asarray(got), np.asarray(ref)
    if g.shape != r.shape or g.dtype != r.dtype:
        return {"ok": False, "why": f"shape/dtype {g.shape} {g.dtype} vs {r.shape} {r.dtype}"}
    both_nan = np.isnan(g) & np.isnan(r) if g.dtype.kind == "f" else np.zeros(g.shape, bool)
    diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
    diff[both_nan] = 0
    mismatches = int(np.count_nonzero(diff) + np.count_nonzero(np.isnan(diff)))
    out = {"mismatches": mismatches, "max_abs_err": float(np.nanmax(diff)) if diff.size else 0.0}
    if exact:
        out["ok"] = mismatches == 0
    else:
        rel = diff / np.maximum(np.abs(r.astype(np.float64)), 1e-30)
        out["max_rel_err"] = float(np.nanmax(rel))
        out["ok"] = bool(out["max_rel_err"] <= 4e-7 and not np.isnan(diff).any())
    return out


def torch_reference(env: Env, case: dict[str, Any], host: list[np.ndarray], gpu_out: Any) -> dict[str, Any] | None:
    """torch CUDA F.interpolate on the same input: time and agreement (informative)."""
    if env.cupy is None or "torch" not in case:
        return None
    try:
        import torch
        import torch.nn.functional as F

        if not torch.cuda.is_available():
            return None
        mode, size = case["torch"]
        x = torch.from_numpy(np.ascontiguousarray(host[0])).cuda()
        if mode != "trilinear":
            d0, h0, w0 = 2, 3, 4
            x = x[d0:, h0:, w0:].contiguous()
        kw = {"align_corners": False} if mode == "trilinear" else {}
        fn = lambda: F.interpolate(x[None, None], size=tuple(size), mode=mode, **kw)  # noqa: E731
        times = env.time_ms(fn, 10, 3)
        ours = env.get(gpu_out)
        theirs = fn()[0, 0].cpu().numpy()
        diff = np.abs(ours.astype(np.float64) - theirs)
        return {"median_ms": statistics.median(times), "mismatches_vs_ours": int(np.count_nonzero(diff)),
                "max_abs_diff_vs_ours": float(diff.max())}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_cases(env: Env, small: bool) -> list[dict[str, Any]]:
    from segvol_rt.ops import cuda as gpu_ops

    w = workload(small)
    results = []
    with gpu_ops.use(env.device):
        for case in cases(w):
            res: dict[str, Any] = {"name": case["name"]}
            try:
                host = [w[k] for k in case["arrays"]]
                dev = [env.put(a) for a in host]
                t0 = time.perf_counter()
                ref = case["ref"](*host)
                res["numpy_twin_ms"] = (time.perf_counter() - t0) * 1e3
                got = case["gpu"](*dev)
                res.update(compare(got if not hasattr(got, "shape") else env.get(got), ref, case.get("exact", True)))
                reps = 3 if small or env.emulated else case.get("reps", 20)
                times = env.time_ms(lambda case=case, dev=dev: case["gpu"](*dev), reps, 1 if small or env.emulated else 3)
                med = statistics.median(times)
                res.update(median_ms=med, min_ms=min(times), reps=reps)
                res["GBps"] = case["bytes"] / (med * 1e-3) / 1e9 if med > 0 else None
                res["speedup_vs_numpy"] = res["numpy_twin_ms"] / med if med > 0 else None
                res["torch_cuda"] = torch_reference(env, case, host, got if hasattr(got, "shape") else None)
            except Exception as exc:  # noqa: BLE001
                res.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])
            results.append(res)
            print(f"[twins] {res['name']}: ok={res.get('ok')} median_ms={res.get('median_ms')}", flush=True)
    return results


def compile_time(env: Env) -> dict[str, Any]:
    if env.cupy is None:
        return {"skipped": "emulated"}
    from segvol_rt import kernels

    t0 = time.perf_counter()
    try:
        kernels.compile_all()
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "seconds_first_compile_and_load": time.perf_counter() - t0,
            "kernels": sum(len(v) for v in kernels.NAME_EXPRESSIONS.values())}


def run_pytest(timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "tests/kernels/test_kernels.py", "tests/kernels/test_kernels_compile.py"]
    try:
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"pytest ran over {timeout} s"}
    tail = (run.stdout + run.stderr)[-4000:]
    summary = [line for line in tail.splitlines() if " passed" in line or " failed" in line or " error" in line]
    return {"ok": run.returncode == 0, "returncode": run.returncode, "summary": summary[-1] if summary else "",
            "tail": tail}


# -- pipeline ------------------------------------------------------------------------------------


def run_pipeline(artifacts: Path | None, small: bool, precision: str = "fp32") -> dict[str, Any]:
    """ORT on CUDA (``precision``) vs ORT fp32 on the CPU through SegVolRuntime, one phantom, one box prompt."""
    if artifacts is None:
        return {"skipped": "no --artifacts"}
    try:
        from segvol_rt.runtime import SegVolRuntime
    except Exception as exc:  # noqa: BLE001
        return {"skipped": f"segvol_rt.runtime not importable: {type(exc).__name__}: {exc}"}
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers = ort.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        return {"skipped": f"onnxruntime not importable: {exc}"}
    out: dict[str, Any] = {"providers": providers, "precision_cuda": precision}
    try:
        volume, affine, box, truth = _phantom(small)
        out["volume_shape"], out["box"] = list(volume.shape), list(box)
        masks = {}
        for device in ("cpu", "cuda"):
            t0 = time.perf_counter()
            rt = SegVolRuntime.load(artifacts, backend="onnxruntime", device=device,
                                    precision=precision if device == "cuda" else "fp32")
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rt.set_volume(volume, affine)
            set_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            seg = rt.segment(box=box)
            seg_s = time.perf_counter() - t0
            masks[device] = np.asarray(seg.mask)
            out[device] = {"backend": getattr(rt, "backend_reason", ""), "load_s": load_s, "set_volume_s": set_s,
                           "segment_s": seg_s, "voxels": int(masks[device].sum()), "timings": seg.timings,
                           "dice_vs_phantom_label": _dice(masks[device], truth) if truth is not None else None}
            rt.close()
        a, b = masks["cpu"].astype(bool), masks["cuda"].astype(bool)
        out["dice_cpu_vs_cuda"] = _dice(a, b)
        out["differing_voxels"] = int(np.count_nonzero(a != b))
        out["ok"] = out["dice_cpu_vs_cuda"] >= (0.99 if precision == "fp32" else 0.98)
    except Exception as exc:  # noqa: BLE001
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-3000:])
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def _phantom(small: bool) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray | None]:
    """A synthetic CT (segvol_rt.demo.phantom if present, else an ellipsoid) and a box
    prompt around one organ, in scan voxels."""
    shape = (96, 96, 48) if small else (256, 256, 96)
    try:
        from segvol_rt.demo.phantom import make_phantom

        ph = make_phantom(0, shape)
        name = next(iter(ph.label_names.values()))
        truth = ph.mask(name)
        volume, affine = ph.image.astype(np.float32), ph.affine
    except Exception:  # noqa: BLE001
        grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
        truth = (grid[0] - 0.2) ** 2 / 0.1 + grid[1] ** 2 / 0.08 + grid[2] ** 2 / 0.3 < 1
        volume = np.where(truth, 60.0, -100.0).astype(np.float32) + np.random.default_rng(0).normal(0, 10, shape).astype(np.float32)
        affine = np.eye(4)
    idx = np.argwhere(truth)
    box = tuple(int(v) for v in idx.min(axis=0)) + tuple(int(v) for v in idx.max(axis=0))
    return volume, affine, box, truth


# -- report ------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = ["# segvol-rt device check", ""]
    env = report["environment"]
    lines += [f"- {k}: {v}" for k, v in env.items()] + [""]
    lines += ["## Compile", "", f"`{json.dumps(report['compile'])}`", ""]
    pt = report["pytest"]
    lines += ["## pytest (kernel + compile tests)", "", f"- ok: {pt.get('ok')} - {pt.get('summary', pt.get('error', pt.get('skipped', '')))}", ""]  # noqa: E501 - one markdown table row
    lines += ["## Kernels vs NumPy twins", "",
              "| op | ok | mismatches | max abs err | GPU median ms | GB/s | NumPy ms | speed-up | torch CUDA ms (diff vs ours) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["twins"]:
        t = r.get("torch_cuda") or {}
        tcol = f"{t['median_ms']:.3f} ({t['mismatches_vs_ours']} differ, max {t['max_abs_diff_vs_ours']:.2e})" if "median_ms" in t else t.get("error", "")  # noqa: E501 - one markdown table row
        lines.append(
            f"| {r['name']} | {r.get('ok')} | {r.get('mismatches', r.get('error', ''))} | {r.get('max_abs_err', '')} | "
            f"{_fmt(r.get('median_ms'))} | {_fmt(r.get('GBps'))} | {_fmt(r.get('numpy_twin_ms'))} | {_fmt(r.get('speedup_vs_numpy'))} | {tcol} |"  # noqa: E501 - one markdown table row
        )
    lines += ["", "## Pipeline (ORT CUDA vs CPU)", "", "```", json.dumps(report["pipeline"], indent=1, default=str)[:6000], "```", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and v is not None else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--small", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="graph variant of the CUDA pipeline run (fp16: artifacts from `segvol-rt export --precision fp16`)")
    parser.add_argument("--emulate", action="store_true", help="CPU emulator of the kernels (no GPU)")
    parser.add_argument("--no-pytest", action="store_true")
    parser.add_argument("--pytest-timeout", type=int, default=150)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    t_start = time.perf_counter()
    ensure_importable(notes)
    env = Env(args.emulate)
    report: dict[str, Any] = {"environment": environment(env), "notes": notes}
    report["compile"] = compile_time(env)
    print(f"[compile] {report['compile']}", flush=True)
    report["pytest"] = {"skipped": "--no-pytest"} if args.no_pytest else run_pytest(args.pytest_timeout)
    print(f"[pytest] {report['pytest'].get('summary', report['pytest'])}", flush=True)
    report["twins"] = run_cases(env, args.small)
    report["pipeline"] = run_pipeline(args.artifacts, args.small, args.precision)
    print(f"[pipeline] ok={report['pipeline'].get('ok')} {report['pipeline'].get('skipped', '')}", flush=True)
    report["seconds"] = time.perf_counter() - t_start
    report["ok"] = all(r.get("ok") for r in report["twins"]) and report["pytest"].get("ok", True) is not False
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "device_check.md").write_text(markdown(report))
    print(f"[done] ok={report['ok']} in {report['seconds']:.1f} s -> {out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
