"""Checks of a volume that hold whatever file it came from: the memory left to
read it (:func:`available_memory`), a usable voxel -> world affine
(:func:`affine_problem`), scaling that stays within float32
(:func:`check_scaled_range`) and values the official float32 intensity
statistics can take (:func:`statistics_limit`, :func:`check_values`). The
NIfTI and DICOM readers and the preprocessing use them."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt.errors import SegVolError

_F32_MAX = float(np.finfo(np.float32).max)
# A singular value this much smaller than the largest makes the affine degenerate
# (nibabel's io_orientation drops such axes and then fails to orient).
DEGENERATE_AFFINE_RATIO = 1e-6


# -- memory -----------------------------------------------------------------------------------
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves this process (containers), or None."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate: /proc/meminfo's MemAvailable (else
    the physical memory from sysconf), capped by a cgroup v2 limit; None when unknown."""
    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            found = None
    room = _cgroup_room()
    if room is not None:
        found = room if found is None else min(found, room)
    return found


# -- geometry ---------------------------------------------------------------------------------
def affine_problem(affine: Any) -> str | None:
    """What makes a voxel -> world ``affine`` unusable (not 4x4, not finite,
    degenerate 3x3 part), or None."""
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        return f"the affine has shape {aff.shape}, not (4, 4)"
    if not np.all(np.isfinite(aff)):
        return "the voxel-to-world affine holds NaN or infinite values"
    sv = np.linalg.svd(aff[:3, :3], compute_uv=False)
    if sv[0] == 0 or sv[-1] <= sv[0] * DEGENERATE_AFFINE_RATIO:
        rows = "; ".join(", ".join(f"{v:g}" for v in row) for row in aff[:3, :3])
        return f"the voxel-to-world affine is degenerate (its 3x3 part [{rows}] is singular), so the voxel axes have no direction"
    return None


# -- values -----------------------------------------------------------------------------------
def check_scaled_range(raw: np.ndarray, slope: float, inter: float, p: Path | str, what: str) -> None:
    """Refuse a slope/intercept that take the stored values beyond float32."""
    lo, hi = float(raw.min()), float(raw.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return  # non-finite stored floats: reported voxel by voxel after the read
    ends = sorted((lo * slope + inter, hi * slope + inter))
    if max(abs(ends[0]), abs(ends[1])) > _F32_MAX:
        raise SegVolError(
            f"{what} {p}: scl_slope {slope:g} and scl_inter {inter:g} scale the stored range [{lo:g}, {hi:g}] to "
            f"[{ends[0]:.3g}, {ends[1]:.3g}], beyond float32 (+-{_F32_MAX:.3g})"
        )


def statistics_limit(count: int) -> float:
    """Largest magnitude whose float32 sums of squared deviations over ``count``
    voxels stay finite (the official foreground statistics are float32)."""
    return math.sqrt(_F32_MAX / max(1, count)) / 2


def check_statistics_range(lo: float, hi: float, count: int, p: Path | str) -> None:
    """Refuse values the official float32 intensity statistics would overflow on."""
    peak, limit = max(abs(lo), abs(hi)), statistics_limit(count)
    if peak > limit:
        raise SegVolError(
            f"scan {p} holds values up to {peak:.3g} in magnitude; the intensity normalisation (float32 "
            f"statistics, as in the official pipeline) overflows beyond about {limit:.2g} for {count} voxels"
        )


def check_values(data: np.ndarray, raw: np.ndarray, exact_ints: bool, p: Path | str) -> None:
    """Reject NaN/Inf, constant volumes (statistics of either would be meaningless)
    and values the float32 intensity statistics would overflow on."""
    if not exact_ints:
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise SegVolError(f"scan {p} has {bad} NaN or infinite voxels")
    # For unscaled integers the raw array has the same extremes and is smaller.
    ref = raw if exact_ints else data
    lo, hi = ref.min(), ref.max()
    if lo == hi:
        raise SegVolError(f"scan {p} is constant (every voxel is {float(lo):g}); nothing to segment")
    check_statistics_range(float(lo), float(hi), int(data.size), p)
