"""Prompts: the user's box and points, the decoder's token layout and the
zoom-in window prompt rules of official SegVol.

Coordinate spaces (see :mod:`segvol_rt.pipeline.geometry`): users give prompts in **scan** voxel
indices ``(i, j, k)`` (nibabel order, 3D Slicer IJK); the model sees them in
**crop** and **zoom-out** space, axis order ``(D, H, W)``. Boxes are
``(d0, h0, w0, d1, h1, w1)`` with an *inclusive* max corner, as SegVol's
``generate_box`` makes them. Points are integer voxel indices with a label per
point: 1 positive, 0 negative, -1 "not a point" (padding of ``select_points``).

Everything here is numpy and small; the heavy volumes live in :mod:`segvol_rt.pipeline.zoom`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.spec import decoder_tokens  # noqa: F401  (the token layout, beside the graph IO specs)
from segvol_rt.ops.boxes import InclusiveBox, int_box
from segvol_rt.types import Points, parse_box, parse_points  # noqa: F401  (the prompt types, numpy only)

if TYPE_CHECKING:
    from segvol_rt.pipeline.geometry import Geometry

# generate_box's answer for an empty map: the official model then sees the
# corners (-1, -1, -1) and (-1, -1, -1) (+0.5 inside the graph).
EMPTY_BOX: InclusiveBox = (-1, -1, -1, -1, -1, -1)


# -- validation of user prompts (scan space) --------------------------------


def validate_prompts(
    shape: Sequence[int],
    text: str | None,
    box: InclusiveBox | None,
    points: Points | None,
    max_points: int = S.DEFAULT_MAX_POINTS,
) -> None:
    """Check scan-space prompts against the scan ``shape`` (i, j, k)."""
    if text is None and box is None and points is None:
        raise SegVolError("give at least one prompt: text, box or points")
    if text is not None and not text.strip():
        raise SegVolError("text prompt is empty")
    size = np.asarray(shape)
    if box is not None:
        lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
        if (lo > hi).any():
            raise SegVolError(f"box {tuple(box)} is empty: need i0<=i1, j0<=j1, k0<=k1")
        if (lo < 0).any() or (hi >= size).any():
            raise SegVolError(f"box {tuple(box)} is outside the scan of shape {tuple(shape)}")
    if points is not None:
        if len(points) == 0:
            raise SegVolError("points: no point given")
        if len(points) > max_points:
            raise SegVolError(f"{len(points)} points given; the artifacts take at most {max_points}")
        bad = (points.coords < 0).any(axis=1) | (points.coords >= size).any(axis=1)
        if bad.any():
            raise SegVolError(f"point {tuple(int(v) for v in points.coords[bad][0])} is outside the scan of shape {tuple(shape)}")


# -- scan space -> crop / zoom-out space ---------------------------------------


@dataclass(frozen=True)
class ModelPrompts:
    """A target's box and points in crop space and in zoom-out space (D, H, W)."""

    box_crop: InclusiveBox | None
    box_zoom: InclusiveBox | None
    points_crop: Points | None
    points_zoom: Points | None


def to_model_space(geometry: Geometry, box: InclusiveBox | None, points: Points | None) -> ModelPrompts:
    """Map scan-space prompts through ``geometry`` (:class:`segvol_rt.pipeline.geometry.Geometry`:
    reorient, swap, pad, crop) to crop space, then to zoom-out space the way
    the official demo derives its zoom-out prompts: the box as the bounding
    box of the nearest-exact-resized binary box (``Zoom.forward_box``), points
    as the zoom-out voxel holding each crop voxel's centre.

    A box that shrinks to nothing in the zoom-out resize (thinner than one
    zoom-out voxel; the official demo would then prompt with an empty box)
    keeps its corners' zoom-out voxels instead. Prompts outside the crop (the
    scan's foreground box) are a :class:`SegVolError`."""
    crop_shape = tuple(int(s) for s in geometry.crop.out_shape)
    box_crop = box_zoom = None
    if box is not None:
        box_crop = geometry.scan_to_crop_box(box)
        if box_crop is None:
            raise SegVolError(f"box {tuple(box)} lies outside the scan's foreground crop; nothing to segment there")
        box_crop = int_box(box_crop)
        box_zoom = geometry.zoom.forward_box(box_crop)
        if box_zoom is None:
            corners = geometry.zoom.crop_to_zoom_index(np.asarray([box_crop[:3], box_crop[3:]]))
            box_zoom = int_box(corners.reshape(-1))
        box_zoom = int_box(box_zoom)
    pc = pz = None
    if points is not None:
        crop = np.rint(geometry.scan_to_crop_points(points.coords)).astype(np.int64).reshape(-1, 3)
        outside = (crop < 0).any(axis=1) | (crop >= np.asarray(crop_shape)).any(axis=1)
        if outside.any():
            bad = tuple(int(v) for v in points.coords[outside][0])
            raise SegVolError(f"point {bad} lies outside the scan's foreground crop; nothing to segment there")
        pc = Points(crop, points.labels)
        pz = Points(geometry.zoom.crop_to_zoom_index(crop), points.labels)
    return ModelPrompts(box_crop, box_zoom, pc, pz)


# -- window prompt rules (official generate_box / select_points / binary maps) --


def generate_box(mask: np.ndarray) -> InclusiveBox:
    """Inclusive box of ``mask > 0`` in the mask's own indices; :data:`EMPTY_BOX`
    when nothing is set (official ``generate_box`` without perturbation)."""
    nz = np.nonzero(np.asarray(mask) > 0)
    if nz[0].size == 0:
        return EMPTY_BOX
    return tuple(int(a.min()) for a in nz) + tuple(int(a.max()) for a in nz)  # type: ignore[return-value]


def select_points(
    mask: np.ndarray,
    rng: np.random.Generator,
    num_positive_extra: int = 4,
    num_negative_extra: int = 0,
) -> Points:
    """Official ``select_points`` with a seeded numpy Generator instead of torch's RNG.

    Positives are voxels ``> 0.9``, negatives ``< 0.1``, both in C order (as
    ``torch.nonzero``). With positives: one at ``rng.integers(n)``, then up to
    ``num_positive_extra`` at ``rng.permutation(n)[:k]`` (duplicates of the first
    allowed, as official), then negatives likewise; padded with (-1, -1, -1)
    label -1 up to ``1 + extras`` points. Without positives: one (-1, -1, -1)
    label -1 point, negatives as above, no padding (official arithmetic)."""
    mask = np.asarray(mask)
    pos = np.stack(np.nonzero(mask > 0.9), axis=1)
    coords: list[np.ndarray] = []
    labels: list[int] = []
    if len(pos) == 0:
        num_positive_extra = 0
        coords.append(np.full(3, -1))
        labels.append(-1)
    else:
        coords.append(pos[int(rng.integers(len(pos)))])
        labels.append(1)
    if num_positive_extra > 0:
        for idx in rng.permutation(len(pos))[:num_positive_extra]:
            coords.append(pos[idx])
            labels.append(1)
    if num_negative_extra > 0:
        neg = np.stack(np.nonzero(mask < 0.1), axis=1)
        for idx in rng.permutation(len(neg))[:num_negative_extra]:
            coords.append(neg[idx])
            labels.append(0)
    for _ in range(num_positive_extra + num_negative_extra + 1 - len(labels)):
        coords.append(np.full(3, -1))
        labels.append(-1)
    return Points(np.array(coords), np.array(labels))


def binary_cube(box: InclusiveBox, shape: Sequence[int]) -> np.ndarray:
    """uint8 volume of ``shape`` with the inclusive ``box`` set (official ``build_binary_cube``)."""
    cube = np.zeros(tuple(shape), dtype=np.uint8)
    d0, h0, w0, d1, h1, w1 = (max(int(v), 0) if i < 3 else int(v) for i, v in enumerate(box))
    cube[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1] = 1
    return cube


def binary_points(points: Points, shape: Sequence[int]) -> np.ndarray:
    """uint8 volume of ``shape`` with the positive points set (official ``build_binary_points``)."""
    out = np.zeros(tuple(shape), dtype=np.uint8)
    pos = points.positive()
    if len(pos):
        out[pos[:, 0], pos[:, 1], pos[:, 2]] = 1
    return out
