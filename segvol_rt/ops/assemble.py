"""The zoom-in paste and the final scan-space mask (fused on the GPU): crop-space
logits ``(D, H, W)`` back to a uint8 mask ``(I, J, K)`` on the scan grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segvol_rt.ops.boxes import box_bounds, placed_box, slices
from segvol_rt.ops.dispatch import cuda_twin
from segvol_rt.ops.masks import positive_mask


@cuda_twin
def paste(dst: Any, src: Any, start: Sequence[int]) -> Any:
    """``dst[start:start + src.shape] = src`` in place; returns ``dst``
    (the zoom-in ROI logits into the crop logits)."""
    box_bounds(dst.shape, placed_box(start, src.shape))
    dst[slices(start, src.shape)] = src
    return dst


def check_scan_mapping(
    crop_shape: Sequence[int],
    scan_shape: Sequence[int],
    perm: Sequence[int],
    flips: Sequence[bool],
    origin: Sequence[int],
    roi_logits: Any | None,
    roi_start: Sequence[int],
) -> None:
    """ValueError unless the arguments of :func:`scan_mask` fit together."""
    if len(crop_shape) != 3 or len(scan_shape) != 3 or len(flips) != 3 or len(origin) != 3:
        raise ValueError("crop logits, scan shape, flips and origin must all be 3D")
    if sorted(int(p) for p in perm) != [0, 1, 2]:
        raise ValueError(f"perm must be a permutation of (0, 1, 2), got {tuple(perm)}")
    if min(int(s) for s in scan_shape) < 1:
        raise ValueError(f"scan shape must be positive, got {tuple(scan_shape)}")
    if roi_logits is not None:
        box_bounds(crop_shape, placed_box(roi_start, roi_logits.shape))


@cuda_twin
def scan_mask(
    crop_logits: Any,
    scan_shape: Sequence[int],
    perm: Sequence[int],
    flips: Sequence[bool],
    origin: Sequence[int],
    roi_logits: Any | None = None,
    roi_start: Sequence[int] = (0, 0, 0),
) -> Any:
    """The final uint8 mask in scan space ``(I, J, K)``: 1 where ``sigmoid > 0.5``.

    ``crop_logits`` (D, H, W) are crop-space logits (on the host also their
    bool :func:`positive_mask`, already thresholded); ``roi_logits``, when given,
    replace them in the box at ``roi_start`` (the zoom-in paste). The crop sits
    at ``origin`` in model space (the crop start minus the padding before it;
    negative when the crop starts in the padding). Model axis ``a`` is scan axis
    ``perm[a]``, reversed when ``flips[a]``:
    ``m[a] = scan_shape[perm[a]] - 1 - s[perm[a]] if flips[a] else s[perm[a]]``
    - the official swap (D, H, W) = (k, j, i) is ``perm = (2, 1, 0)``, no flips;
    an optional RAS reorientation adds its permutation and flips
    (``Geometry.scan_mapping()`` reads all three off a geometry). Scan voxels
    outside the crop (padding, background) are 0. Equals
    ``geometry.crop_to_scan(positive_mask(logits with the ROI pasted))``."""
    check_scan_mapping(crop_logits.shape, scan_shape, perm, flips, origin, roi_logits, roi_start)
    # thresholded before the paste (same voxels), so the logits are never copied
    if crop_logits.dtype == np.bool_:
        positive = np.array(crop_logits)  # a copy: the ROI is written into it
    else:
        positive = np.asarray(positive_mask(np.asarray(crop_logits, dtype=np.float32)))  # a new array
    if roi_logits is not None:
        positive[slices(roi_start, roi_logits.shape)] = positive_mask(np.asarray(roi_logits, dtype=np.float32))
    model_shape = [int(scan_shape[p]) for p in perm]
    model = np.zeros(model_shape, dtype=np.uint8)
    lo = [max(int(o), 0) for o in origin]
    hi = [min(int(o) + c, m) for o, c, m in zip(origin, crop_logits.shape, model_shape)]
    if all(h > l for l, h in zip(lo, hi)):
        inner = tuple(slice(l - int(o), h - int(o)) for l, h, o in zip(lo, hi, origin))
        model[tuple(slice(l, h) for l, h in zip(lo, hi))] = positive[inner]
    flipped = tuple(a for a in range(3) if flips[a])
    if flipped:
        model = np.flip(model, axis=flipped)
    # a view in scan axes, as geometry.crop_to_scan gives: a transposing copy of a
    # scan-size volume costs seconds on the host, and writers take any layout
    return model.transpose(np.argsort(perm))
