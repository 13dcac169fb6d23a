"""NumPy twins of the fused GPU steps that :mod:`segvol_rt.ops` has no function for:
incremental window blending, the blend of a box only, paste, and the final
scan-space mask. On cupy inputs each calls its kernel twin in
:mod:`segvol_rt.gpu_ops` (same arguments, same result, bit for bit).

Volumes are (D, H, W) float32 in crop (or padded-ROI) space unless stated;
boxes are half-open ``(d0, h0, w0, d1, h1, w1)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import ops


def _slices(start: Sequence[int], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    return tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, shape))  # type: ignore[return-value]


def blend_accumulate(total: Any, count: Any, windows: Any, starts: Sequence[Sequence[int]]) -> None:
    """Add a batch of window logits ``(n, wd, wh, ww)`` at ``starts`` into the
    float32 ``total`` and ``count`` volumes in place, window after window (MONAI's
    constant blending, for windows that arrive in batches). Windows must lie
    inside the volume."""
    twin = ops._gpu_twin("blend_accumulate", total)
    if twin is not None:
        return twin(total, count, windows, starts)
    xp = ops.array_namespace(total)
    wshape = windows.shape[1:]
    for window, start in zip(windows, starts):
        region = _slices(start, wshape)
        total[region] += window
        count[region] += xp.float32(1)
    return None


def blend_divide(total: Any, count: Any) -> Any:
    """``total / count`` as a new float32 volume; NaN where ``count`` is 0."""
    twin = ops._gpu_twin("blend_divide", total)
    if twin is not None:
        return twin(total, count)
    xp = ops.array_namespace(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = xp.float32(np.nan)
    return out


def blend_windows_box(windows: Any, starts: Sequence[Sequence[int]], out_shape: Sequence[int], box: ops.Box) -> Any:
    """``ops.blend_windows(windows, starts, out_shape)`` restricted to the half-open
    ``box`` - on the GPU only the box is computed (the ROI without its window
    padding: blend and unpad in one pass)."""
    twin = ops._gpu_twin("blend_windows_box", windows)
    if twin is not None:
        return twin(windows, starts, out_shape, box)
    start, stop = ops._box_bounds(tuple(int(s) for s in out_shape), box)
    full = ops.blend_windows(windows, starts, out_shape)
    return full[tuple(slice(a, b) for a, b in zip(start, stop))].copy()


def paste(dst: Any, src: Any, start: Sequence[int]) -> Any:
    """``dst[start:start + src.shape] = src`` in place; returns ``dst``
    (the zoom-in ROI logits into the crop logits)."""
    twin = ops._gpu_twin("paste", dst)
    if twin is not None:
        return twin(dst, src, start)
    ops._box_bounds(dst.shape, tuple(start) + tuple(int(a) + int(b) for a, b in zip(start, src.shape)))
    dst[_slices(start, src.shape)] = src
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
        ops._box_bounds(crop_shape, tuple(roi_start) + tuple(int(a) + int(b) for a, b in zip(roi_start, roi_logits.shape)))


def scan_mapping(geometry: Any) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[int, int, int]]:
    """``(perm, flips, origin)`` of :func:`scan_mask` for a
    :class:`segvol_rt.geometry.Geometry`: its optional reorientation (nibabel
    ornt: scan axis i -> oriented axis ``ornt[i][0]``, reversed when
    ``ornt[i][1] < 0``), the swap (model axis a = oriented axis 2 - a) and the
    crop start in model space (padding folded in)."""
    ornt = geometry.reorient.ornt if geometry.reorient is not None else ((0, 1), (1, 1), (2, 1))
    scan_axis = {int(axis): i for i, (axis, _) in enumerate(ornt)}
    perm = tuple(scan_axis[2 - a] for a in range(3))
    flips = tuple(bool(ornt[i][1] < 0) for i in perm)
    origin = tuple(int(v) for v in geometry.crop_box[:3])
    return perm, flips, origin  # type: ignore[return-value]


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

    ``crop_logits`` (D, H, W) are crop-space logits; ``roi_logits``, when given,
    replace them in the box at ``roi_start`` (the zoom-in paste). The crop sits
    at ``origin`` in model space (the crop start minus the padding before it;
    negative when the crop starts in the padding). Model axis ``a`` is scan axis
    ``perm[a]``, reversed when ``flips[a]``:
    ``m[a] = scan_shape[perm[a]] - 1 - s[perm[a]] if flips[a] else s[perm[a]]``
    - the official swap (D, H, W) = (k, j, i) is ``perm = (2, 1, 0)``, no flips;
    an optional RAS reorientation adds its permutation and flips
    (:func:`scan_mapping` reads all three off a Geometry). Scan voxels
    outside the crop (padding, background) are 0. Equals
    ``geometry.crop_to_scan(positive_mask(logits with the ROI pasted))``."""
    twin = ops._gpu_twin("scan_mask", crop_logits)
    if twin is not None:
        return twin(crop_logits, scan_shape, perm, flips, origin, roi_logits, roi_start)
    check_scan_mapping(crop_logits.shape, scan_shape, perm, flips, origin, roi_logits, roi_start)
    # thresholded before the paste (same voxels), so the logits are never copied
    positive = np.asarray(ops.positive_mask(np.asarray(crop_logits, dtype=np.float32)))  # a new array
    if roi_logits is not None:
        positive[_slices(roi_start, roi_logits.shape)] = ops.positive_mask(np.asarray(roi_logits, dtype=np.float32))
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
