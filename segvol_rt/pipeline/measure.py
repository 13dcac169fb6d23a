"""Measurements of one target's mask on its scan (``--statistics``): numpy only.

Everything is in **scan space**: the mask and the scan are ``(I, J, K)``
arrays on the same voxel grid, and ``affine`` maps voxel indices ``(i, j, k)``
to world coordinates in mm (the scan's affine: RAS+ for NIfTI as nibabel reads
it, and for DICOM the dcm2niix-style affine of :mod:`segvol_rt.io.dicom`).

* ``voxels``: voxels with mask > 0; ``volume_ml``: ``voxels`` times the
  voxel volume ``|det(affine[:3, :3])|`` mm^3, divided by 1000;
* ``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max``: the scan's
  intensity (Hounsfield units for CT) over those voxels, accumulated in float64;
  None for an empty mask;
* ``bbox_voxels``: the inclusive index box ``{"min": [i, j, k], "max": [i, j, k]}``;
  ``bbox_world_mm``: the axis-aligned box, in the affine's world space, of the
  eight voxel centres at that box's corners (min and max corner per world axis).
  Both None for an empty mask.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from segvol_rt.errors import SegVolError


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """The volume of one voxel in mm^3: ``|det(affine[:3, :3])|``."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def mask_statistics(mask: np.ndarray, scan: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """The measurements of the module docstring for ``mask`` (``(I, J, K)``, > 0 = target)
    over ``scan`` (``(I, J, K)`` intensities) with the scan's 4x4 ``affine``."""
    mask = np.asarray(mask)
    scan = np.asarray(scan)
    if mask.shape != scan.shape or mask.ndim != 3:
        raise SegVolError(f"statistics: the mask {mask.shape} and the scan {scan.shape} must be one 3D grid")
    inside = mask > 0
    voxels = int(np.count_nonzero(inside))
    out: dict[str, Any] = {"voxels": voxels, "volume_ml": voxels * voxel_volume_mm3(affine) / 1000.0}
    if voxels == 0:
        return {**out, "mean": None, "std": None, "min": None, "max": None, "bbox_voxels": None, "bbox_world_mm": None}
    values = scan[inside].astype(np.float64)
    out.update(mean=float(values.mean()), std=float(values.std()), min=float(values.min()), max=float(values.max()))
    lo, hi = _index_box(inside)
    out["bbox_voxels"] = {"min": lo, "max": hi}
    out["bbox_world_mm"] = world_box(lo, hi, affine)
    return out


def _index_box(inside: np.ndarray) -> tuple[list[int], list[int]]:
    """Inclusive min and max index per axis of the True voxels (one pass per axis over projections)."""
    lo, hi = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(inside.any(axis=others))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]))
    return lo, hi


def world_box(lo: list[int], hi: list[int], affine: np.ndarray) -> dict[str, list[float]]:
    """Min and max world corners (mm) of the voxel centres at the corners of the inclusive box ``lo``..``hi``."""
    corners = np.array([[*c, 1.0] for c in itertools.product(*zip(lo, hi))], dtype=np.float64)
    world = corners @ np.asarray(affine, dtype=np.float64).T
    return {"min": [float(v) for v in world[:, :3].min(axis=0)], "max": [float(v) for v in world[:, :3].max(axis=0)]}
