"""One entry point for reading a scan, whatever it is stored as.

:func:`read_any` dispatches by path: a folder, or a file with the DICOM
preamble, is a DICOM series (:func:`segvol_rt.io.dicom.read_dicom_series`);
anything else is a NIfTI file (:func:`segvol_rt.io.nifti.read_scan`). Both
give a :class:`~segvol_rt.io.scan.Scan` in scan space ``(I, J, K)``.
"""

from __future__ import annotations

import os

from segvol_rt.errors import SegVolError
from segvol_rt.io.scan import Scan


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_any` reads ``path`` as DICOM (a folder, or a file with the DICOM preamble)."""
    from segvol_rt.io.dicom import is_dicom_input

    return is_dicom_input(path)


def read_any(path: str | os.PathLike[str], series: str | None = None) -> Scan:
    """Read a NIfTI file or a DICOM series (``series``: its SeriesInstanceUID, DICOM only)."""
    if is_dicom(path):
        from segvol_rt.io.dicom import read_dicom_series

        return read_dicom_series(path, series)
    if series is not None:
        raise SegVolError(f"series={series!r} selects a DICOM series, but {path} is not a DICOM folder or file")
    from segvol_rt.io.nifti import read_scan

    return read_scan(path)
