"""Preprocessing of a scan for SegVol, in the official order
(``data_process/demo_data_process.py``):

1. ForegroundNormalization on the scan-order array (percentile clip and
   z-score of the voxels above the mean; :func:`segvol_rt.ops.foreground_stats`);
2. DimTranspose: swap the first and last axes (scan (i, j, k) -> model (k, j, i));
3. MinMaxNormalization to [0, 1];
4. SpatialPad to at least the spatial size (zeros);
5. CropForeground: the box of voxels > 0;
6. zoom-out: the crop resized to the spatial size with nearest-exact.

Works on numpy or cupy arrays. Steps 1 and 3 run fused in one cache-blocked
pass (:func:`segvol_rt.ops.normalize_min_max`), in the memory layout of the
input, before the axis swap: elementwise maps commute with it, so no volume
is transposed in memory. The padding is never materialised: padded voxels are
0, never foreground, so the crop lies inside the unpadded volume and is a view
of it. Reorientation (off by default, as in the official pipeline, whose
Orientationd saw arrays without an affine) is a view as well.

Pass the scan as nibabel gives it (``np.asanyarray(img.dataobj)``, Fortran
order): the model-space volume is then C-contiguous, and windows cut from it
are cheap. See :mod:`segvol_rt.ops` for the float32 reproduction of the
official statistics and the one layout caveat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.io.volume_checks import affine_problem, statistics_limit
from segvol_rt.ops.boxes import int3
from segvol_rt.pipeline.geometry import Geometry, Reorient


@dataclass(frozen=True)
class Preprocessed:
    """A preprocessed scan.

    ``image``: crop space, (D, H, W) float32 in [0, 1] (a view into the
    normalised model-space volume); ``zoom_image``: ``spatial_size`` float32,
    the zoom-out model input; ``geometry``: the chain back to the scan;
    ``stats``: the foreground statistics used."""

    image: Any
    zoom_image: Any
    geometry: Geometry
    stats: ops.ForegroundStats


def _check_scan(data: Any) -> Any:
    """``data`` as float32: itself when it is float32, else a new array."""
    xp = ops.array_namespace(data)
    if getattr(data, "ndim", None) != 3:
        raise SegVolError(f"expected a 3D scan volume, got an array of shape {getattr(data, 'shape', None)}")
    if min(data.shape) < 1:
        raise SegVolError(f"the scan volume is empty (shape {tuple(data.shape)})")
    # the official LoadImage hands float32 to the transforms whatever the file stores
    return data if data.dtype == xp.float32 else data.astype(xp.float32)


def _check_spatial_size(spatial_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 3 or min(size) < 1:
        raise SegVolError(f"spatial_size must be three positive sizes, got {tuple(spatial_size)}")
    return int3(size)


def foreground_statistics(data: Any) -> ops.ForegroundStats:
    """:func:`segvol_rt.ops.foreground_stats` with its failures as user errors."""
    try:
        # float32 sums overflow on absurd values: said below, not warned about
        with np.errstate(over="ignore", invalid="ignore"):
            stats = ops.foreground_stats(data)
    except ValueError as exc:
        raise SegVolError(_overflow(data) or f"cannot normalise the scan: {exc}") from exc
    if not all(np.isfinite(v) for v in stats):
        raise SegVolError(_overflow(data) or f"cannot normalise the scan: statistics {tuple(stats)}")
    return stats


def _overflow(data: Any) -> str | None:
    """The message for finite values too large for the float32 statistics, else None."""
    lo, hi = float(data.min()), float(data.max())
    peak = max(abs(lo), abs(hi))
    if not np.isfinite(peak) or peak <= statistics_limit(int(data.size)):
        return None
    return (f"cannot normalise the scan: its values (up to {peak:.3g} in magnitude) overflow the float32 intensity "
            "statistics of the official pipeline; are they scaled right?")


def _no_foreground(extremes: tuple[float, float], stats: ops.ForegroundStats) -> str:
    """Why the normalised scan has no voxel > 0, in one line. (A constant
    volume fails earlier, in the statistics.) The usual cause: the voxels above
    the mean nearly all share one value - a binary 0/1 mask or a label map has
    them all at its top label - so the 0.05th and 99.95th percentiles agree
    and the clip maps every voxel to that value. ``extremes``: the scan's
    (min, max) before normalisation."""
    lo, hi = extremes
    if np.float32(stats.lower) == np.float32(stats.upper):
        return (f"the scan (values {lo:g} to {hi:g}) has no foreground after normalisation: its voxels above the mean "
                f"nearly all have the value {stats.upper:g}, so the official 0.05-99.95th percentile clip makes every voxel "
                "equal; is it a binary mask or a label map rather than a CT?")
    return f"the scan (values {lo:g} to {hi:g}) has no foreground after normalisation: its normalised intensities are all equal"


def _to_model(scan_volume: Any, orient: Reorient | None) -> Any:
    """Scan-space array -> model-space view (optional reorientation, axis swap)."""
    v = scan_volume if orient is None else orient.forward_volume(scan_volume)
    return ops.array_namespace(v).swapaxes(v, 0, 2)


def preprocess(
    data: Any,
    spatial_size: Sequence[int],
    reorient: str | None = None,
    affine: Any = None,
    overwrite_input: bool = False,
) -> Preprocessed:
    """Preprocess a scan volume ``data`` (scan axes (i, j, k), any real dtype,
    read as float32) for a model of ``spatial_size`` (D, H, W).

    ``reorient``: axis codes such as ``"RAS"`` to reorient to first (needs the
    scan's 4x4 ``affine``); None keeps the voxel axes, as the official demo.
    ``overwrite_input``: a writeable float32 ``data`` may be normalised in place
    (its values are then the normalised ones and ``image`` a view of it): no
    second scan-sized float32 array. Other dtypes are read into a new float32
    array, normalised in place either way.
    Raises SegVolError for an empty, constant or non-finite volume."""
    size = _check_spatial_size(spatial_size)
    checked = _check_scan(data)
    # a converted copy is ours to overwrite; a read-only array (np.frombuffer of bytes) is not
    scratch = checked is not data or (overwrite_input and getattr(checked.flags, "writeable", True))
    data = checked
    orient = None
    if reorient is not None:
        if affine is None:
            raise SegVolError("reorientation needs the scan's affine")
        problem = affine_problem(affine)
        if problem:  # said here, not as nibabel's "Unable to find out axis ... in start_ornt"
            raise SegVolError(f"cannot reorient to {reorient!r}: {problem}")
        orient = Reorient.from_affine(affine, data.shape, reorient)
    stats = foreground_statistics(data)
    extremes = (float(data.min()), float(data.max()))  # for the message below: the scan may be overwritten
    normalised = ops.normalize_min_max(data, stats, out=data if scratch else None)
    # CropForeground's voxels > 0, computed in memory order, then viewed in model axes
    box = ops.bounding_box(_to_model(normalised > 0, orient))
    if box is None:
        raise SegVolError(_no_foreground(extremes, stats))
    geometry = Geometry.build(data.shape, box, size, orient)
    model = _to_model(normalised, orient)
    image = model[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1]
    return Preprocessed(image, geometry.zoom.forward_volume(image), geometry, stats)
