"""A CT volume in scan space, whatever file it came from: :class:`Scan`. The
NIfTI reader (:mod:`segvol_rt.io.nifti`) and the DICOM reader
(:mod:`segvol_rt.io.dicom`) both produce one; the runtime, the writers and
the app read its fields, never a format's header. :func:`scaled` applies a
stored slope/intercept the way both readers must (nibabel's arithmetic, so
that a DICOM series and its dcm2niix NIfTI give the same float32 values)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require

_SLAB_VOXELS = 1 << 22  # scaled reads go through float64 in slabs of this many voxels


@dataclass(frozen=True, eq=False)
class Scan:
    """A CT volume in scan space.

    ``data``: float32 ``(I, J, K)``, Fortran-ordered; ``affine``: 4x4 voxel ->
    world (mm, RAS+ as nibabel defines it); ``spacing``: voxel size in mm along
    ``(i, j, k)``; ``source``: what it was read from, in words (for messages
    and records); ``path``: the file or folder, when there is one; ``notes``:
    problems of the file the reader fixed (our wording), for the caller to
    show; ``nifti_header``: a NIfTI source's own header (nibabel's), which the
    NIfTI writers reuse so a mask carries the scan's units and codes (None for
    other formats: the writers then make one from the affine and spacing).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    path: Path | None = None
    notes: tuple[str, ...] = ()
    nifti_header: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    def without_voxels(self) -> Scan:
        """This scan with its voxel values let go: the header, geometry and
        notes the writers need, and ``data`` a read-only all-NaN view of the
        same shape that holds no memory (``np.broadcast_to``). A one-shot run
        hands the voxels to the runtime and keeps this, so the float32 scan
        (200 MiB for 512x512x200) is not resident for the rest of the run;
        a value read from it by mistake is NaN, never a plausible number."""
        return replace(self, data=np.broadcast_to(np.float32(np.nan), self.data.shape))


def scaled(arr: np.ndarray, scale: tuple[np.ndarray, np.ndarray] | None, dtype: Any) -> np.ndarray:
    """``arr`` with nibabel's read scaling applied, cast to ``dtype``; Fortran order kept.

    Scaling runs per slab along the last axis so the float64 intermediate
    nibabel may use stays small. Non-finite results (from non-finite stored
    floats; a slope that overflows float32 is refused before) are reported by
    the caller, not warned about.
    """
    if scale is None:
        return arr.astype(dtype, order="F")
    apply_read_scaling = require("nibabel.volumeutils").apply_read_scaling
    out = np.empty(arr.shape, dtype=dtype, order="F")
    step = max(1, _SLAB_VOXELS // max(1, arr.shape[0] * arr.shape[1]))
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(0, arr.shape[2], step):
            out[..., k : k + step] = apply_read_scaling(arr[..., k : k + step], *scale)
    return out
