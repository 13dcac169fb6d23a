"""Reading a volume on the client: :func:`segvol_rt.io.scans.read_any`, the
one entry point for NIfTI files and DICOM series (folder or file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_volume(path: Path, series: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(``(I, J, K)`` voxels, 4x4 affine) of a NIfTI file or a DICOM series
    (``series``: its SeriesInstanceUID), read as ``segvol-rt infer`` reads it."""
    from segvol_rt.io.scans import read_any

    scan = read_any(path, series)
    return scan.data, scan.affine
