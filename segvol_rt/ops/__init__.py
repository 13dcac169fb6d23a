"""Array operations of the pipeline, one definition each.

The NumPy functions here are the reference; they are written against the
array namespace of their input, so most of them also run on cupy arrays, and
those with a CUDA kernel dispatch to their twin in :mod:`segvol_rt.ops.cuda`
on cupy input (:mod:`segvol_rt.ops.dispatch`; the tests list every pair).

Volumes are 3D arrays in model space, axis order ``(D, H, W)``. Modules:

* :mod:`~segvol_rt.ops.boxes`: the inclusive and half-open box types, shape checks;
* :mod:`~segvol_rt.ops.interpolate`: torch ``F.interpolate`` exactly (nearest, nearest-exact, trilinear);
* :mod:`~segvol_rt.ops.masks`: sigmoid, the positive-voxel rule, bounding boxes;
* :mod:`~segvol_rt.ops.numpy1`: numpy 1.x float32 statistics, bit for bit;
* :mod:`~segvol_rt.ops.intensity`: the official foreground and min-max normalisation;
* :mod:`~segvol_rt.ops.windows`: MONAI's sliding-window plan and blending;
* :mod:`~segvol_rt.ops.assemble`: the zoom-in paste and the scan-space mask;
* :mod:`~segvol_rt.ops.arrays`: host/device transfers;
* :mod:`~segvol_rt.ops.cuda`: the CUDA twins (cupy, imported only for cupy input).
"""

from segvol_rt.ops.assemble import check_scan_mapping, paste, scan_mask
from segvol_rt.ops.boxes import (
    HalfOpenBox,
    InclusiveBox,
    box_bounds,
    check_volume,
    to_half_open,
    to_inclusive,
)
from segvol_rt.ops.dispatch import array_namespace, is_cupy
from segvol_rt.ops.intensity import (
    ForegroundStats,
    foreground_stats,
    min_max,
    normalize,
    normalize_min_max,
)
from segvol_rt.ops.interpolate import (
    MODES,
    LinearTable,
    linear_source_index,
    nearest_source_index,
    resize,
    upsample_then_nearest,
    upsample_then_nearest_positive,
)
from segvol_rt.ops.masks import bounding_box, positive_box, positive_mask, sigmoid
from segvol_rt.ops.windows import (
    blend_accumulate,
    blend_divide,
    blend_windows,
    blend_windows_box,
    pad_for_windows,
    unpad,
    window_starts,
)

__all__ = [
    "MODES", "ForegroundStats", "HalfOpenBox", "InclusiveBox", "LinearTable",
    "array_namespace", "blend_accumulate", "blend_divide", "blend_windows", "blend_windows_box",
    "bounding_box", "box_bounds", "check_scan_mapping", "check_volume", "foreground_stats",
    "is_cupy", "linear_source_index", "min_max", "nearest_source_index", "normalize",
    "normalize_min_max", "pad_for_windows", "paste", "positive_box", "positive_mask", "resize",
    "scan_mask", "sigmoid", "to_half_open", "to_inclusive", "unpad", "upsample_then_nearest",
    "upsample_then_nearest_positive",
    "window_starts",
]
