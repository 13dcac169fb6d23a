"""Reading a volume on the client: one entry point for every kind of path.

:func:`read_volume` takes a NIfTI file (:func:`segvol_rt.io.nifti.read_scan`)
or a DICOM series folder (:func:`read_dicom_series`, the single place DICOM
folders are routed through).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segvol_rt.errors import SegVolError


def read_volume(path: Path, series: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(``(I, J, K)`` voxels, 4x4 affine) of a NIfTI file or a DICOM folder."""
    if path.is_dir():
        return read_dicom_series(path, series)
    if series is not None:
        raise SegVolError(f"series names a DICOM series of a folder; {path} is a file")
    from segvol_rt.io.nifti import read_scan

    scan = read_scan(path)
    return scan.data, scan.affine


def read_dicom_series(folder: Path, series: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, affine) of the DICOM series ``series`` (a SeriesInstanceUID, or
    None for the folder's only series) in ``folder``."""
    raise SegVolError(f"{folder} is a folder: reading DICOM series is not available in this segvol-rt build; "
                      "convert it to NIfTI first")
