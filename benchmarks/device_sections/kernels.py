"""Kernels against their NumPy twins, on what the pipeline really runs.

Bitwise where the twins promise it (data free of subnormals), sigmoid in ulp
against float64 (each side <= 3 ulp), subnormal inputs as documented in
segvol_rt/ops/cuda.py (flushed on the device), a uint8 volume over 2**31
elements against a known box. Each device call runs three times and must
give the same bits each time; the device is synchronised after every check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from device_sections.common import Context, Env, bitwise, error, sigmoid_ulp


def _flush(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float32, copy=True)
    sub = (a != 0) & (np.abs(a) < np.finfo(np.float32).tiny)
    a[sub] = np.copysign(np.float32(0), a[sub])
    return a


def workload(small: bool, seed: int = 0) -> dict[str, Any]:
    """Host arrays: a CT (Fortran order, as nibabel hands it over), crop logits,
    8 windows of the model's size, a low-res prediction."""
    rng = np.random.default_rng(seed)
    ct_shape = (64, 64, 40) if small else (512, 512, 400)
    window = (8, 32, 32) if small else (32, 256, 256)
    roi = tuple(int(w * 1.5) for w in window)
    ct = rng.normal(-300, 400, ct_shape).astype(np.float32).round()
    ct = np.asfortranarray(ct)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in roi), indexing="ij")
    logits = ((0.3 - (zz**2 + yy**2 + xx**2)) * 20 + rng.normal(0, 0.5, roi)).astype(np.float32)
    starts = [(d, h, w) for d in (0, roi[0] - window[0]) for h in (0, roi[1] - window[1]) for w in (0, roi[2] - window[2])]
    return {"ct": ct, "ct_int16": np.asfortranarray(ct.astype(np.int16)), "window": window, "roi": roi,
            "logits": logits, "windows": rng.standard_normal((8, *window)).astype(np.float32), "starts": starts,
            "low": (rng.standard_normal(tuple(w // 4 for w in window)) * 4).astype(np.float32),
            "u8": rng.integers(0, 255, window, dtype=np.uint8)}


def cases(w: dict[str, Any]) -> list[tuple[str, Callable[..., Any], Callable[..., Any], tuple[str, ...]]]:
    """(name, device call, twin call, input names): compared bitwise."""
    from segvol_rt import ops
    from segvol_rt.ops import cuda as g

    roi, win, starts = w["roi"], w["window"], w["starts"]
    stats = ops.foreground_stats(w["ct"])
    crop = tuple(s // 2 for s in w["ct"].shape)

    def blend_divide(m: Any, windows: Any) -> Any:
        total, count = m.zeros(roi, np.float32), m.zeros(roi, np.float32)
        m.blend_accumulate(total, count, windows, starts)
        return m.blend_divide(total, count)

    def paste(m: Any, xp: Any, src: Any, dtype: Any) -> Any:
        dst = xp.zeros(tuple(r + 6 for r in roi), dtype)
        return m.paste(dst, src, (3, 2, 4))

    return [
        ("blend 8 windows + divide", lambda a: blend_divide(_Ops(g), a), lambda a: blend_divide(_Ops(ops), a), ("windows",)),
        ("blend_windows_box", lambda a: g.blend_windows_box(a, starts, roi, (1, 2, 3, roi[0] - 1, roi[1] - 2, roi[2] - 3)),
         lambda a: ops.blend_windows_box(a, starts, roi, (1, 2, 3, roi[0] - 1, roi[1] - 2, roi[2] - 3)), ("windows",)),
        ("paste-back float32", lambda a: paste(g, _xp(a), a, np.float32), lambda a: paste(ops, np, a, np.float32), ("logits",)),
        ("paste-back uint8", lambda a: paste(g, _xp(a), a, np.uint8), lambda a: paste(ops, np, a, np.uint8), ("u8",)),
        ("bounding_box Fortran bool view", lambda a: g.bounding_box((a > 0).T), lambda a: ops.bounding_box((a > 0).T), ("logits",)),
        ("positive_box logits", g.positive_box, ops.positive_box, ("logits",)),
        ("resize trilinear uint8", lambda a: g.resize(a, roi, "trilinear"), lambda a: ops.resize(a, roi, "trilinear"), ("u8",)),
        ("resize trilinear int16 CT", lambda a: g.resize(a, win, "trilinear"), lambda a: ops.resize(a, win, "trilinear"),
         ("ct_int16",)),
        ("resize nearest-exact crop->zoom-out", lambda a: g.resize(a, win, "nearest-exact", (2, 3, 4) + crop),
         lambda a: ops.resize(a, win, "nearest-exact", (2, 3, 4) + crop), ("ct",)),
        ("upsample_then_nearest", lambda a: g.upsample_then_nearest(a, win, roi),
         lambda a: ops.upsample_then_nearest(a, win, roi), ("low",)),
        ("foreground_stats CT", g.foreground_stats, ops.foreground_stats, ("ct",)),
        ("foreground_stats int16 CT", g.foreground_stats, ops.foreground_stats, ("ct_int16",)),
        ("normalize_min_max CT", lambda a: g.normalize_min_max(a, stats), lambda a: ops.normalize_min_max(a, stats), ("ct",)),
        ("select_ranks threshold", lambda a: g.select_ranks(a.reshape(-1), [0, 7, 1000], threshold=0.25),
         lambda a: _ranks(a, [0, 7, 1000], 0.25), ("logits",)),
        ("scan_mask perm+flips", lambda a: g.scan_mask(a, roi[::-1], (2, 1, 0), (True, False, True), (0, 0, 0)),
         lambda a: ops.scan_mask(a, roi[::-1], (2, 1, 0), (True, False, True), (0, 0, 0)), ("logits",)),
    ]


class _Ops:
    """``ops`` or ``ops.cuda`` with ``zeros`` of the matching array module."""

    def __init__(self, module: Any):
        self.m = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.m, name)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        from segvol_rt.ops import cuda as g

        xp = g.device().xp if self.m is g else np
        return xp.zeros(shape, dtype)


def _xp(a: Any) -> Any:
    from segvol_rt.ops import cuda as g

    return g.device().xp


def _ranks(a: np.ndarray, ranks: list[int], threshold: float) -> list[float]:
    v = np.sort(a.reshape(-1)[a.reshape(-1) > threshold])
    return [float(v[r]) for r in ranks]


def _host(env: Env, value: Any) -> Any:
    return env.get(value) if hasattr(value, "shape") else value


def check(env: Env, name: str, device_call: Callable[..., Any], twin: Callable[..., Any], host: list[np.ndarray]) -> dict[str, Any]:
    """Twin once; device three times (same bits each time), synchronised after each."""
    res: dict[str, Any] = {"name": name}
    try:
        t0 = time.perf_counter()
        ref = twin(*host)
        res["twin_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        runs = []
        for _ in range(3):
            dev = [env.put(a) for a in host]
            t0 = time.perf_counter()
            out = device_call(*dev)
            env.sync()
            res.setdefault("device_ms", round((time.perf_counter() - t0) * 1e3, 3))
            runs.append(_host(env, out))
        res.update(bitwise(runs[0], ref))
        res["deterministic"] = all(bitwise(r, runs[0]).get("ok") for r in runs[1:])
        res["ok"] = bool(res.get("ok")) and res["deterministic"]
    except Exception as exc:  # noqa: BLE001 - the next check still runs
        res.update(error(exc))
    return res


def run(ctx: Context) -> dict[str, Any]:
    from segvol_rt.ops import cuda as g

    env = Env(ctx.emulate)
    w = workload(ctx.small)
    out: dict[str, Any] = {"checks": []}
    with g.use(env.device):
        for name, dev, twin, names in cases(w):
            r = check(env, name, dev, twin, [w[k] for k in names])
            out["checks"].append(r)
            print(f"[kernels] {name}: ok={r.get('ok')}", flush=True)
        out["checks"].append(_sigmoid(env, w))
        out["checks"].append(_subnormals(env, w))
        out["checks"].append(_huge_volume(env, ctx))
    env.free()
    out["ok"] = all(c.get("ok") for c in out["checks"])
    return out


def _sigmoid(env: Env, w: dict[str, Any]) -> dict[str, Any]:
    from segvol_rt import ops
    from segvol_rt.ops import cuda as g

    try:
        x = np.concatenate([w["logits"].reshape(-1), np.linspace(-100, 30, 4097, dtype=np.float32)])
        got = env.get(g.sigmoid(env.put(x)))
        env.sync()
        return {"name": "sigmoid (ulp vs float64, each side)", **sigmoid_ulp(got, np.asarray(ops.sigmoid(x)), x)}
    except Exception as exc:  # noqa: BLE001
        return {"name": "sigmoid", **error(exc)}


def _subnormals(env: Env, w: dict[str, Any]) -> dict[str, Any]:
    """Subnormal inputs: float results equal the twin's on flushed inputs, flushed;
    masks equal the twin's on the raw inputs."""
    from segvol_rt import ops
    from segvol_rt.ops import cuda as g

    try:
        x = w["windows"].copy()
        x.reshape(-1)[::7] = np.float32(3.5e-42)
        starts, roi = w["starts"], w["roi"]
        blend = env.get(g.blend_windows(env.put(x), starts, roi))
        want = _flush(ops.blend_windows(_flush(x), starts, roi))
        logits = w["logits"].copy()
        logits.reshape(-1)[::5] = np.float32(2e-39)
        mask = env.get(g.positive_mask(env.put(logits)))
        env.sync()
        a, b = bitwise(blend, want), bitwise(mask, np.asarray(ops.positive_mask(logits)))
        return {"name": "subnormal inputs (flushed on the device)", "blend_vs_flushed_twin": a, "mask_vs_twin": b,
                "ok": bool(a["ok"] and b["ok"])}
    except Exception as exc:  # noqa: BLE001
        return {"name": "subnormal inputs", **error(exc)}


def _huge_volume(env: Env, ctx: Context) -> dict[str, Any]:
    """A uint8 volume over 2**31 elements (int64 indexing) against a known box."""
    name = "bounding_box uint8 > 2**31 elements"
    if ctx.small or env.cupy is None:
        return {"name": name, "ok": True, "skipped": "--small / emulated: 2.2 GB of device memory"}
    from segvol_rt.ops import cuda as g

    try:
        cp = env.cupy
        shape = (1300, 1300, 1300)  # 2.197e9 elements
        vol = cp.zeros(shape, cp.uint8)
        box = (1, 640, 1200, 1299, 1290, 1299)
        vol[box[0], box[1], box[2]] = 1
        vol[box[3], box[4], box[5]] = 7
        results = [g.bounding_box(vol) for _ in range(3)]
        env.sync()
        del vol
        env.free()
        return {"name": name, "got": results[0], "want": box, "ok": all(r == box for r in results)}
    except Exception as exc:  # noqa: BLE001
        return {"name": name, **error(exc)}
