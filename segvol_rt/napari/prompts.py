"""napari layer data <-> scan space, numpy only (no napari, no Qt).

Every layer the widget makes (image, points, shapes, labels) gets the
transform :func:`layer_transform` of the scan: ``scale`` the voxel size
(mm, the affine's column norms) and ``affine`` the rest of the scan's affine
(direction cosines and origin), so napari's world coordinates are the scan's
world millimetres (RAS+, as nibabel reads the affine) and the display matches
the file. A layer's *data* coordinates are then the scan's voxel indices
``(i, j, k)`` - napari puts a voxel's centre at its integer index - which
are exactly the coordinates of ``segvol-rt infer --point/--box``: a point is
its data coordinates rounded, a box the rounded extent of the rectangles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segvol_rt.errors import SegVolError
from segvol_rt.ops.boxes import InclusiveBox
from segvol_rt.types import Points

FLAT = 0.5  # a rectangle's vertices spread less than half a voxel along the axis it was drawn across


@dataclass(frozen=True)
class LayerTransform:
    """``scale (3,)`` mm per voxel along (i, j, k); ``affine (4, 4)`` the scan's affine with unit columns."""

    scale: tuple[float, float, float]
    affine: np.ndarray

    def kwargs(self) -> dict[str, object]:
        """The keyword arguments every layer of the scan is made with."""
        return {"scale": self.scale, "affine": self.affine, "units": ("mm", "mm", "mm")}


def layer_transform(affine: np.ndarray) -> LayerTransform:
    """The layer transform of a scan with the 4x4 voxel -> world ``affine``:
    ``affine @ diag(scale) == scan affine`` (to rounding)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise SegVolError(f"a scan's affine must be a finite 4x4 matrix, got shape {a.shape}")
    scale = np.linalg.norm(a[:3, :3], axis=0)
    if not (scale > 0).all():
        raise SegVolError(f"the scan's affine has a zero column (voxel size {tuple(scale)})")
    unit = a.copy()
    unit[:3, :3] = a[:3, :3] / scale
    return LayerTransform((float(scale[0]), float(scale[1]), float(scale[2])), unit)


def voxel_indices(coords: np.ndarray) -> np.ndarray:
    """Layer data coordinates ``(N, 3)`` -> int64 voxel indices (the nearest voxel centre)."""
    arr = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(arr).all():
        raise SegVolError("a prompt coordinate is not finite")
    return np.rint(arr).astype(np.int64)


def point_prompt(coords: np.ndarray, positive: Sequence[bool]) -> Points | None:
    """The points layer's ``data (N, 3)`` and per-point sign as scan-space
    :class:`~segvol_rt.types.Points` (label 1 positive, 0 negative); None without points."""
    ijk = voxel_indices(coords)
    signs = np.asarray(positive, dtype=bool).reshape(-1)
    if len(signs) != len(ijk):
        raise SegVolError(f"{len(ijk)} points but {len(signs)} signs")
    if not len(ijk):
        return None
    return Points(ijk, signs.astype(np.int64))


def box_prompt(rectangles: Sequence[np.ndarray], slices: tuple[int, int] | None = None) -> InclusiveBox | None:
    """The inclusive scan-space box ``(i0, j0, k0, i1, j1, k1)`` of the shapes
    layer's rectangles (each ``(4, 3)`` vertices in data coordinates); None without one.

    One rectangle is drawn on a slice: along the axis it is flat on, the box
    spans ``slices`` (first, last voxel index, inclusive) when given, else
    that slice alone. Rectangles on two slices (two corners) span what lies
    between them; ``slices`` then does not apply."""
    if not rectangles:
        return None
    verts = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1, 3) for r in rectangles])
    lo, hi = voxel_indices(verts.min(axis=0)).reshape(3), voxel_indices(verts.max(axis=0)).reshape(3)
    flat = np.ptp(verts, axis=0) < FLAT
    if slices is not None and flat.sum() == 1:
        first, last = (int(s) for s in slices)
        if first > last:
            raise SegVolError(f"box slices {first}..{last}: the first slice is after the last")
        axis = int(np.flatnonzero(flat)[0])
        lo[axis], hi[axis] = first, last
    return tuple(int(v) for v in (*lo, *hi))  # type: ignore[return-value]


def target_name(text: str | None, box: InclusiveBox | None, points: Points | None) -> str:
    """A result's layer name: the target text, else the spatial prompts it came from
    (``box``, ``points``, ``box+points``, as ``segvol-rt infer`` names them)."""
    if text is not None and text.strip():
        return text.strip()
    name = "+".join(k for k, v in (("box", box), ("points", points)) if v is not None)
    if not name:
        raise SegVolError("no prompt: type a target name, add points or draw a box")
    return name


def label_rgba(rgb: tuple[int, int, int]) -> dict[int | None, tuple[float, float, float, float]]:
    """A direct label colour map for a 0/1 mask: 1 in ``rgb`` (0-255), everything else transparent."""
    r, g, b = (c / 255.0 for c in rgb)
    clear = (0.0, 0.0, 0.0, 0.0)
    return {None: clear, 0: clear, 1: (r, g, b, 1.0)}
