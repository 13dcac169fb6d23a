"""The pipeline on identical inputs: the demo model on a phantom CT, the four
prompt kinds (text, box, points, text+box), against the CPU pipeline.

* ``hybrid``: the CPU ONNX Runtime graphs behind a backend that takes and
  returns CuPy arrays, so everything else (upload, preprocessing, kernels,
  window plan, blending, paste-back, mask) runs on the GPU: masks, logits,
  ROI, window count and crop must be bit-identical to the CPU pipeline. Needs
  no onnxruntime-gpu. Emulated: the fake cupy and the kernel emulator.
* ``ort-cuda``: ONNX Runtime's CUDA provider, fp32 with TF32 off
  (``NVIDIA_TF32_OVERRIDE=0`` from the driver, ``use_tf32=0``);
* ``ort-cuda-tf32``: fp32 with TF32 on, then the fp16 graphs.

For the CUDA runs: Dice against the CPU masks, logit differences, and
whether every differing voxel sits at a near-zero CPU logit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from device_sections.common import Context, bitwise, dice, error, load_support, memory_peaks, memory_reset
from segvol_rt.backends.base import Backend


def _prompts(shape: tuple[int, ...], box: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    lo, hi = box[:3], box[3:]
    mid = [(a + b) // 2 for a, b in zip(lo, hi)]
    edge = [min(s - 1, b + 2) for s, b in zip(shape, hi)]
    b = ",".join(map(str, box))
    return {
        "text": {"text": "liver"},
        "box": {"box": b},
        "points": {"points": f"{','.join(map(str, mid))};{','.join(map(str, edge))},0"},
        "text+box": {"text": "liver", "box": b},
    }


def _phantom(small: bool) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from segvol_rt.demo.phantom import make_phantom

    ph = make_phantom(0, (96, 96, 48) if small else (256, 256, 96))
    idx = np.argwhere(ph.mask("liver"))
    return ph.image, ph.affine, tuple(int(v) for v in [*idx.min(axis=0), *idx.max(axis=0)])


class HostGraphsBackend(Backend):
    """A CUDA-device backend whose graphs run on the CPU: feeds come down,
    outputs go up (the graphs' numerics are the CPU's, all else is the GPU's)."""

    device = "cuda"

    def __init__(self, inner: Backend, cp: Any):
        super().__init__(inner.specs)
        self.inner, self.name, self._cp = inner, inner.name, cp

    @property
    def xp(self) -> Any:
        return self._cp

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        host = {k: self._cp.asnumpy(v) for k, v in feeds.items()}
        return {k: self._cp.asarray(v) for k, v in self.inner._run(graph, host).items()}


def _segment_all(rt: Any, prompts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {k: rt.segment(**p, seed=11, keep_logits=True) for k, p in prompts.items()}


def run_hybrid(ctx: Context) -> dict[str, Any]:
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.runtime import SegVolRuntime

    art = Artifacts.load(ctx.artifacts)
    volume, affine, box = _phantom(ctx.small)
    prompts = _prompts(volume.shape, box)
    cpu = SegVolRuntime.load(ctx.artifacts, backend="onnxruntime", device="cpu")
    cpu.set_volume(volume, affine)
    want = _segment_all(cpu, prompts)
    if ctx.emulate:
        fake = load_support("fake_cupy")
        cp = fake.make()
        device, _ = fake.gpu_ops_device(cp)
        with fake.activated(cp, device):
            gpu = SegVolRuntime(art, fake.EmulatedCudaBackend(_plain_cpu(art), cp), "emulated cuda")
            got = _run_gpu(gpu, volume, affine, prompts)
    else:
        import cupy

        gpu = SegVolRuntime(art, HostGraphsBackend(_plain_cpu(art), cupy), "hybrid: CPU graphs, CuPy arrays")
        got = _run_gpu(gpu, volume, affine, prompts)
    out: dict[str, Any] = {"volume": list(volume.shape), "prompts": {}}
    for kind in prompts:
        out["prompts"][kind] = _identical(want[kind], got[kind], cpu, gpu)
    out["memory"] = memory_peaks()
    out["ok"] = all(r["ok"] for r in out["prompts"].values())
    return out


def _plain_cpu(art: Any) -> Any:
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(art, device="cpu")


def _run_gpu(gpu: Any, volume: np.ndarray, affine: np.ndarray, prompts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    gpu.set_volume(volume, affine)
    return _segment_all(gpu, prompts)


def _identical(a: Any, b: Any, cpu: Any, gpu: Any) -> dict[str, Any]:
    r = {"mask": bitwise(np.asarray(b.mask), np.asarray(a.mask)),
         "logits": bitwise(np.asarray(b.crop_logits), np.asarray(a.crop_logits)),
         "roi_same": a.roi == b.roi, "n_windows": [a.n_windows, b.n_windows],
         "crop_same": cpu.geometry.crop_box == gpu.geometry.crop_box}
    r["ok"] = bool(r["mask"]["ok"] and r["logits"]["ok"] and r["roi_same"] and a.n_windows == b.n_windows
                   and r["crop_same"])
    return r


def _cuda_variant(ctx: Context, precision: str, tf32: bool, volume: np.ndarray, affine: np.ndarray,
                  prompts: dict[str, dict[str, Any]], want: dict[str, Any]) -> dict[str, Any]:
    from segvol_rt.backends.ort_cuda import OrtCudaBackend
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.runtime import SegVolRuntime

    memory_reset()
    art = Artifacts.load(ctx.artifacts)
    gpu = SegVolRuntime(art, OrtCudaBackend(art, precision=precision, tf32=tf32), f"ort cuda {precision}")
    gpu.set_volume(volume, affine)
    out: dict[str, Any] = {"precision": precision, "tf32": tf32, "prompts": {}}
    limit = 0.999 if precision == "fp32" else 0.98
    for kind, p in prompts.items():
        try:
            b = gpu.segment(**p, seed=11, keep_logits=True)
            out["prompts"][kind] = _agreement(want[kind], b, gpu, limit)
        except Exception as exc:  # noqa: BLE001 - the other prompt kinds still run
            out["prompts"][kind] = error(exc)
    out["memory"] = memory_peaks()
    out["stats"] = {k: v for k, v in gpu.stats.items() if k.startswith("peak")}
    gpu.close()
    out["ok"] = all(r.get("ok") for r in out["prompts"].values())
    return out


def _agreement(a: Any, b: Any, gpu: Any, min_dice: float) -> dict[str, Any]:
    la, lb = np.asarray(a.crop_logits, np.float64), np.asarray(b.crop_logits, np.float64)
    scale = float(np.abs(la).max()) or 1.0
    near_zero = np.asarray(gpu.geometry.crop_to_scan(np.abs(la) < 1e-3 * scale, fill=True)).astype(bool)
    differ = np.asarray(a.mask) != np.asarray(b.mask)
    r = {"dice": dice(a.mask, b.mask), "differing_voxels": int(differ.sum()),
         "differing_not_near_zero": int((differ & ~near_zero).sum()),
         "max_abs_logit_diff": float(np.abs(la - lb).max()), "rel_logit_diff": float(np.abs(la - lb).max() / scale),
         "cpu_logit_absmax": scale, "roi_same": a.roi == b.roi}
    r["ok"] = bool(r["dice"] >= min_dice and (min_dice < 0.999 or r["differing_not_near_zero"] == 0))
    return r


def _reference(ctx: Context) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]], dict[str, Any]]:
    from segvol_rt.runtime import SegVolRuntime

    volume, affine, box = _phantom(ctx.small)
    prompts = _prompts(volume.shape, box)
    cpu = SegVolRuntime.load(ctx.artifacts, backend="onnxruntime", device="cpu")
    cpu.set_volume(volume, affine)
    return volume, affine, prompts, _segment_all(cpu, prompts)


def _variants(ctx: Context, variants: list[tuple[str, bool]]) -> dict[str, Any]:
    volume, affine, prompts, want = _reference(ctx)
    out: dict[str, Any] = {"volume": list(volume.shape), "variants": {}}
    for precision, tf32 in variants:
        key = f"{precision}{' tf32' if tf32 else ''}"
        try:
            out["variants"][key] = _cuda_variant(ctx, precision, tf32, volume, affine, prompts, want)
        except Exception as exc:  # noqa: BLE001
            out["variants"][key] = error(exc)
        print(f"[pipeline] {key}: ok={out['variants'][key].get('ok')}", flush=True)
    out["ok"] = all(v.get("ok") for v in out["variants"].values())
    return out


def run_ort_cuda(ctx: Context) -> dict[str, Any]:
    import os

    out = _variants(ctx, [("fp32", False)])
    out["NVIDIA_TF32_OVERRIDE"] = os.environ.get("NVIDIA_TF32_OVERRIDE")
    return out


def run_ort_cuda_tf32(ctx: Context) -> dict[str, Any]:
    return _variants(ctx, [("fp32", True), ("fp16", False)])


def run(ctx: Context) -> dict[str, Any]:
    return run_hybrid(ctx)
