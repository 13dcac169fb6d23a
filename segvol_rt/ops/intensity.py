"""Intensity normalisation: the official ForegroundNormalization statistics and
transform, and MinMaxNormalization, float32 as numpy 1.x computed them
(statistics from :mod:`segvol_rt.ops.numpy1`). Volumes are 3D ``(D, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from segvol_rt.ops import numpy1 as N
from segvol_rt.ops.dispatch import array_namespace, cuda_twin, host_values, is_cupy


class ForegroundStats(NamedTuple):
    """Official ForegroundNormalization statistics of the voxels above the volume mean.

    ``lower``/``upper``: 0.05th/99.95th percentiles as numpy 1.x computed them
    (float64); ``mean``/``std``: float32 values (held as Python floats)."""

    lower: float
    upper: float
    mean: float
    std: float


def _memory_order(volume: Any) -> Any:
    """The elements of ``volume`` as a 1D float32 array in memory order (a view when contiguous)."""
    xp = array_namespace(volume)
    flat = volume.ravel(order="K")
    return flat if flat.dtype == xp.float32 else flat.astype(xp.float32)


@cuda_twin
def foreground_stats(volume: Any) -> ForegroundStats:
    """Official ForegroundNormalization statistics of the voxels above the volume mean:
    (0.05th percentile, 99.95th percentile, mean, std); see the module notes.

    Raises ValueError when no voxel lies above the mean (constant volume,
    NaN/inf); callers turn that into a user error."""
    flat = _memory_order(volume)
    if flat.shape[0] == 0:
        raise ValueError("empty volume")
    xp = array_namespace(flat)
    threshold = N.np1_mean(flat)
    if not np.isfinite(threshold):
        raise ValueError("volume contains NaN or infinite values")
    selected = flat[flat > xp.float32(threshold)]
    if selected.shape[0] == 0:
        raise ValueError("volume is constant: no voxel lies above its mean")
    lower, upper = N.percentiles_np1(selected)
    return ForegroundStats(lower, upper, float(N.np1_mean(selected)), float(N.np1_std(selected)))


def std_divisor(std: float) -> np.float32:
    # official: max(std, 1e-8); a float64 1e-8 divides a float32 array as float32
    return np.float32(std) if std > 1e-8 else np.float32(1e-8)


def normalize_into(src: Any, stats: ForegroundStats, out: Any) -> Any:
    xp = array_namespace(src)
    xp.clip(src, xp.float32(stats.lower), xp.float32(stats.upper), out=out)
    out -= xp.float32(stats.mean)
    out /= xp.float32(std_divisor(stats.std))
    return out


def _min_max_into(src: Any, low: Any, scale: Any, out: Any) -> Any:
    xp = array_namespace(src)
    xp.subtract(src, low, out=out)
    out /= scale
    return out


def _blocked(volume: Any, out: Any, fn: Callable[[Any, Any], Any]) -> Any:
    """Apply the elementwise ``fn(src, dst)`` slab by slab in memory order so
    chained in-place steps stay in cache; whole arrays on cupy or odd layouts."""
    src, dst = _flat_view(volume), _flat_view(out)
    # slabs pair up element by element only when both arrays share one memory order
    same_order = volume.flags.c_contiguous == out.flags.c_contiguous
    if src is None or dst is None or not same_order or is_cupy(volume):
        fn(volume, out)
        return out
    for s in range(0, src.shape[0], N.SLAB):
        fn(src[s : s + N.SLAB], dst[s : s + N.SLAB])
    return out


def _flat_view(a: Any) -> Any:
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if a.flags.f_contiguous:
        return a.T.reshape(-1)
    return None


def _float32_like(volume: Any, out: Any | None) -> Any:
    xp = array_namespace(volume)
    if out is None:
        layout = "F" if (volume.flags.f_contiguous and not volume.flags.c_contiguous) else "C"
        out = xp.empty(volume.shape, dtype=xp.float32, order=layout)
    if out.shape != volume.shape or out.dtype != xp.float32:
        raise ValueError(f"out must be float32 of shape {volume.shape}")
    return out


@cuda_twin
def normalize(volume: Any, stats: ForegroundStats | Sequence[float], out: Any | None = None) -> Any:
    """Clip to the percentiles and z-score with mean/std, float32 (official
    ForegroundNormalization's transform). ``out`` may be ``volume`` itself."""
    stats = ForegroundStats(*stats)
    out = _float32_like(volume, out)
    return _blocked(volume, out, lambda s, d: normalize_into(s, stats, d))


@cuda_twin
def min_max(volume: Any, out: Any | None = None) -> Any:
    """Official MinMaxNormalization to [0, 1]: ``(x - min) / max(max - min, 1e-8)``, float32.

    ``max(x - min)`` equals ``float32(max(x) - min)`` (rounding is monotonic),
    so both extremes come from one reduction each on the input."""
    xp = array_namespace(volume)
    low = xp.float32(volume.min())
    scale = min_max_scale(low, xp.float32(volume.max()))
    out = _float32_like(volume, out)
    return _blocked(volume, out, lambda s, d: _min_max_into(s, low, scale, d))


def min_max_scale(low: np.float32, high: np.float32) -> np.float32:
    span = np.float32(high - low)
    return span if span > 1e-8 else np.float32(1e-8)


@cuda_twin
def normalize_min_max(volume: Any, stats: ForegroundStats | Sequence[float], out: Any | None = None) -> Any:
    """``min_max(normalize(volume, stats))`` in one cache-blocked pass, bit-identical.

    The normalisation is monotonic in float32 (clip, subtract, divide by a
    positive number), so the extremes of its result are the normalised
    extremes of the input: no second pass over the volume to find them.
    ``out``: a float32 array of ``volume``'s shape to write into, ``volume``
    itself included (its extremes are read first); None: a new array."""
    xp = array_namespace(volume)
    stats = ForegroundStats(*stats)
    ends = xp.stack([xp.min(volume), xp.max(volume)]).astype(xp.float32)
    low, high = host_values(normalize_into(ends, stats, xp.empty_like(ends)))
    scale = min_max_scale(np.float32(low), np.float32(high))
    low32, scale32 = xp.float32(low), xp.float32(scale)

    def both(s: Any, d: Any) -> None:
        normalize_into(s, stats, d)
        _min_max_into(d, low32, scale32, d)

    return _blocked(volume, _float32_like(volume, out), both)


