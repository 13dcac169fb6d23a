"""Sigmoid, the official positive-voxel rule and bounding boxes of masks.

Volumes are 3D ``(D, H, W)``; the boxes returned are inclusive
(:data:`segvol_rt.ops.boxes.InclusiveBox`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segvol_rt.ops.boxes import InclusiveBox, check_volume
from segvol_rt.ops.dispatch import array_namespace, cuda_twin, host_values

# -- sigmoid, masks, boxes ------------------------------------------------------

# torch.sigmoid(x) > 0.5 in float32 exactly when x > 3 * 2**-25: below that,
# exp(-x) rounds to 1 - 2**-24 or above and 1 + exp(-x) rounds to 2.
# (Checked against torch on every float32 near the boundary.)
_POSITIVE_LOGIT = float(3 * 2.0**-25)


@cuda_twin
def sigmoid(x: Any) -> Any:
    """float32 logistic function ``1 / (1 + exp(-x))``, the formula torch uses;
    numpy's float32 exp may differ from torch's by 1 ulp, so threshold logits
    with :func:`positive_mask`, not this."""
    xp = array_namespace(x)
    y = xp.negative(xp.asarray(x, dtype=xp.float32))
    # exp(-x) overflows to inf for logits below about -88.7, and 1 / (1 + inf)
    # is the correct 0.0: the overflow is expected, not worth a RuntimeWarning
    with np.errstate(over="ignore"):
        xp.exp(y, out=y)
    y += xp.float32(1)
    xp.reciprocal(y, out=y)
    return y


@cuda_twin
def positive_mask(logits: Any) -> Any:
    """bool ``torch.sigmoid(logits) > 0.5`` in float32 (the official prediction rule).

    Not the same as ``logits > 0``: for positive logits up to 3 * 2**-25 the
    float32 sigmoid is exactly 0.5. torch's float32 exp rounds correctly there,
    so the rule is the threshold compare below, without computing a sigmoid."""
    xp = array_namespace(logits)
    return xp.asarray(logits) > xp.float32(_POSITIVE_LOGIT)


def _extent(flags: Any) -> tuple[int, int]:
    idx = host_values(array_namespace(flags).flatnonzero(flags))
    return int(idx[0]), int(idx[-1])


@cuda_twin
def bounding_box(mask: Any) -> InclusiveBox | None:
    """Inclusive bounding box ``(d0, h0, w0, d1, h1, w1)`` of nonzero voxels, or None."""
    check_volume(mask)
    if mask.dtype != bool:
        mask = mask != 0
    along_d = mask.any(axis=(1, 2))
    if not bool(along_d.any()):
        return None
    d0, d1 = _extent(along_d)
    plane = mask[d0 : d1 + 1].any(axis=0)
    h0, h1 = _extent(plane.any(axis=1))
    w0, w1 = _extent(plane.any(axis=0))
    return (d0, h0, w0, d1, h1, w1)


@cuda_twin
def positive_box(logits: Any) -> InclusiveBox | None:
    """Inclusive bounding box of ``sigmoid(logits) > 0.5`` (official ROI source), or None."""
    return bounding_box(positive_mask(logits))


