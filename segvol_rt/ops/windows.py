"""Sliding windows (MONAI ``sliding_window_inference``, constant blending):
the window plan, whole and incremental blending, and unpadding.

Volumes are float32 ``(D, H, W)`` in padded-ROI space; window batches are
``(n, wd, wh, ww)``; starts are window corners in padded coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segvol_rt.ops.boxes import HalfOpenBox, box_bounds, slices
from segvol_rt.ops.dispatch import array_namespace, cuda_twin

# -- sliding windows (MONAI sliding_window_inference, constant blending) --------------


def pad_for_windows(image_size: Sequence[int], roi_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Per-axis (before, after) zero padding that makes each axis at least the
    window size: ``diff = max(roi - size, 0)``, ``before = diff // 2``."""
    pads = []
    for size, roi in zip(image_size, roi_size):
        diff = max(int(roi) - int(size), 0)
        pads.append((diff // 2, diff - diff // 2))
    return tuple(pads)


def _scan_interval(size: int, roi: int, overlap: float) -> int:
    if roi == size:
        return roi
    return max(int(roi * (1 - overlap)), 1)


def _axis_starts(size: int, roi: int, interval: int) -> list[int]:
    count = 1
    if interval > 0:
        candidates = [d for d in range(int(math.ceil(size / interval))) if d * interval + roi >= size]
        count = candidates[0] + 1 if candidates else 1
    return [min(i * interval, size - roi) for i in range(count)]


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
    """Window start corners in padded coordinates, in MONAI order (meshgrid "ij":
    the last axis varies fastest). ``image_size`` is the unpadded size.

    Per axis: ``interval = int(roi * (1 - overlap))`` (``roi`` if the padded
    size equals the window, at least 1); windows until ``d * interval + roi >=
    size``; starts clamped to ``size - roi``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    padded = [max(int(s), int(r)) for s, r in zip(image_size, roi_size)]
    axes = [_axis_starts(s, int(r), _scan_interval(s, int(r), overlap)) for s, r in zip(padded, roi_size)]
    return [(d, h, w) for d in axes[0] for h in axes[1] for w in axes[2]]


@cuda_twin
def blend_windows(windows: Any, starts: Sequence[Sequence[int]], out_shape: Sequence[int]) -> Any:
    """Constant-weight average of window logits ``(n, wd, wh, ww)`` placed at
    ``starts`` in a volume of ``out_shape`` (padded coordinates), float32.

    As MONAI: windows added in order into a zero float32 volume, a float32
    count of the windows covering each voxel, then sum / count. Voxels no
    window covers are 0 / 0 = NaN (a full window plan covers every voxel)."""
    xp = array_namespace(windows)
    if windows.ndim != 4 or len(starts) != windows.shape[0]:
        raise ValueError(f"expected (n, d, h, w) windows with n starts, got {windows.shape} and {len(starts)}")
    total = xp.zeros(tuple(int(s) for s in out_shape), dtype=xp.float32)
    count = xp.zeros_like(total)
    wd, wh, ww = windows.shape[1:]
    for window, (d, h, w) in zip(windows, starts):
        region = (slice(d, d + wd), slice(h, h + wh), slice(w, w + ww))
        total[region] += window
        count[region] += xp.float32(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total /= count
    return total


def unpad(volume: Any, pads: Sequence[tuple[int, int]]) -> Any:
    """Remove the :func:`pad_for_windows` padding again (a view)."""
    index = tuple(slice(b, n - a) for (b, a), n in zip(pads, volume.shape))
    return volume[index]


@cuda_twin
def blend_accumulate(total: Any, count: Any, windows: Any, starts: Sequence[Sequence[int]]) -> None:
    """Add a batch of window logits ``(n, wd, wh, ww)`` at ``starts`` into the
    float32 ``total`` and ``count`` volumes in place, window after window (MONAI's
    constant blending, for windows that arrive in batches). Windows must lie
    inside the volume."""
    xp = array_namespace(total)
    wshape = windows.shape[1:]
    for window, start in zip(windows, starts):
        region = slices(start, wshape)
        total[region] += window
        count[region] += xp.float32(1)
    return None


@cuda_twin
def blend_divide(total: Any, count: Any) -> Any:
    """``total / count`` as a new float32 volume; NaN where ``count`` is 0."""
    xp = array_namespace(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = xp.float32(np.nan)
    return out


@cuda_twin
def blend_windows_box(windows: Any, starts: Sequence[Sequence[int]], out_shape: Sequence[int], box: HalfOpenBox) -> Any:
    """``blend_windows(windows, starts, out_shape)`` restricted to the half-open
    ``box`` - on the GPU only the box is computed (the ROI without its window
    padding: blend and unpad in one pass)."""
    start, stop = box_bounds(tuple(int(s) for s in out_shape), box)
    full = blend_windows(windows, starts, out_shape)
    return full[tuple(slice(a, b) for a, b in zip(start, stop))].copy()


