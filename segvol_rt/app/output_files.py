"""What an output file of ``segvol-rt infer`` is, by its name (:func:`is_seg`,
:func:`is_gz`), and the bytes of a probability map (:func:`probability_bytes`).
Staging and committing the files, all or nothing, is
:func:`segvol_rt.app.infer.write_outputs`'s."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from segvol_rt.io.scan import Scan


def is_seg(path: Path) -> bool:
    """Whether an output is a DICOM SEG (``.dcm``), not a NIfTI file."""
    return path.name.lower().endswith(".dcm")


def is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def probability_bytes(probs: Any, scan: Scan, gz: bool) -> bytes:
    """float32 sigmoid map ``(I, J, K)`` on the scan's grid (its affine and header), as file bytes."""
    from segvol_rt._optional import require
    from segvol_rt.io.nifti import gzip_bytes, nifti_header_for

    nib = require("nibabel")
    header = nifti_header_for(scan)
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    header["descrip"] = b"segvol-rt probabilities"
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    data = klass(np.asarray(probs, dtype=np.float32), scan.affine, header=header).to_bytes()
    return gzip_bytes(data) if gz else data

