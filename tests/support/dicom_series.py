"""Test support: synthetic CT series written with pydicom, and the reference
converters (dcm2niix) run on them.

:func:`write_series` stores a volume ``(C, R, S)`` - columns, rows, slices:
``pixel[s][r, c] = volume[c, r, s]`` - as one file per slice (or one
multi-frame file), with any orientation (row/column direction cosines), slice
step (negative: positions descending with the slice index) and rescale. The
files are written in a shuffled order with shuffled names, so a reader that
trusts names or instance numbers fails.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class SeriesSpec:
    """Geometry and encoding of a synthetic series (DICOM patient space, LPS mm)."""

    row_cos: tuple[float, float, float] = (1.0, 0.0, 0.0)  # direction of increasing column index
    col_cos: tuple[float, float, float] = (0.0, 1.0, 0.0)  # direction of increasing row index
    pixel_spacing: tuple[float, float] = (0.9, 0.8)  # (between rows, between columns) mm
    slice_step: float = 2.5  # mm along row_cos x col_cos per slice index; negative: descending
    origin: tuple[float, float, float] = (-40.0, -35.0, 100.0)
    slope: float = 1.0
    intercept: float = -1024.0
    signed: bool = False  # PixelRepresentation
    description: str = "synthetic CT"
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference: str | None = None
    transfer_syntax: str = "1.2.840.10008.1.2.1"  # explicit VR little endian
    multiframe: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_cos), np.asarray(self.col_cos))

    def position(self, s: int) -> np.ndarray:
        return np.asarray(self.origin, dtype=float) + s * self.slice_step * self.normal


def stored_values(hu: np.ndarray, spec: SeriesSpec) -> np.ndarray:
    """The stored pixel values whose rescale gives ``hu`` (rounded)."""
    stored = np.round((hu.astype(np.float64) - spec.intercept) / spec.slope)
    dtype = np.int16 if spec.signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("values do not fit the stored type")
    return stored.astype(dtype)


def _base(spec: SeriesSpec, study_uid: str, series_uid: str, frame_uid: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "SEGVOL-PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesNumber = 3
    ds.SeriesDescription = spec.description
    ds.Manufacturer = "segvol-rt tests"
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "ABDOMEN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if spec.signed else 0
    ds.RescaleSlope = f"{spec.slope:g}"
    ds.RescaleIntercept = f"{spec.intercept:g}"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing]
    ds.SliceThickness = f"{abs(spec.slice_step):g}"
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*spec.row_cos, *spec.col_cos)]
    for key, value in spec.extra.items():
        setattr(ds, key, value)
    return ds


def _file_meta(sop_class: str, sop_uid: str, syntax: str) -> Any:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    return meta


def _save(ds: Any, path: Path, syntax: str, pixels: np.ndarray) -> None:
    from pydicom.uid import UID

    uid = UID(syntax)
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    if uid.is_compressed:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        ds.compress(uid, np.ascontiguousarray(pixels), generate_instance_uid=False)
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, volume: np.ndarray, spec: SeriesSpec) -> list[Path]:
    """Write ``volume`` (HU, ``(C, R, S)``) as a CT series in ``folder``; returns the files."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = spec.study_uid or generate_uid()
    series = spec.series_uid or generate_uid()
    frame = spec.frame_of_reference or generate_uid()
    stored = stored_values(volume, spec)
    if spec.multiframe:
        return [_write_multiframe(folder, stored, spec, study, series, frame)]
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(stored.shape[2])
    paths = []
    for n, s in enumerate(order):
        ds = _base(spec, study, series, frame)
        sop = generate_uid()
        ds.file_meta = _file_meta(CT_IMAGE, sop, spec.transfer_syntax)
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = sop
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(n + 1)  # shuffled: never the slice order
        ds.ImagePositionPatient = [f"{v:.4f}" for v in spec.position(int(s))]
        ds.SliceLocation = f"{float(spec.position(int(s)) @ spec.normal):.4f}"
        path = folder / f"IM{rng.integers(10**8):08d}_{n:04d}"
        _save(ds, path, spec.transfer_syntax, stored[:, :, s].T)
        paths.append(path)
    return paths


def _write_multiframe(folder: Path, stored: np.ndarray, spec: SeriesSpec, study: str, series: str, frame: str) -> Path:
    """One Enhanced CT Image file, frames in slice order, geometry in the functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    enhanced = "1.2.840.10008.5.1.4.1.1.2.1"
    ds = _base(spec, study, series, frame)
    for key in ("PixelSpacing", "SliceThickness", "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept",
                "RescaleType"):
        delattr(ds, key)
    sop = generate_uid()
    ds.file_meta = _file_meta(enhanced, sop, spec.transfer_syntax)
    ds.SOPClassUID = enhanced
    ds.SOPInstanceUID = sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = int(stored.shape[2])
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing]
    measures.SliceThickness = f"{abs(spec.slice_step):g}"
    shared.PixelMeasuresSequence = Sequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in (*spec.row_cos, *spec.col_cos)]
    shared.PlaneOrientationSequence = Sequence([orient])
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = f"{spec.slope:g}", f"{spec.intercept:g}", "HU"
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in range(stored.shape[2]):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [f"{v:.4f}" for v in spec.position(s)]
        item.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.InStackPositionNumber = s + 1
        content.DimensionIndexValues = [1, s + 1]
        item.FrameContentSequence = Sequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    path = folder / "ENHANCED.dcm"
    _save(ds, path, spec.transfer_syntax, np.ascontiguousarray(np.transpose(stored, (2, 1, 0))))
    return path


# -- dcm2niix ----------------------------------------------------------------------------


def dcm2niix(folder: Path, out: Path) -> list[Path]:
    """Convert every series in ``folder`` with dcm2niix (no BIDS sidecar, uncompressed); the NIfTI files made."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise FileNotFoundError("dcm2niix")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([exe, "-b", "n", "-z", "n", "-f", "%j", "-o", str(out), str(folder)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"dcm2niix failed: {proc.stdout}\n{proc.stderr}")
    return sorted(out.glob("*.nii"))


def phantom_spec(affine: np.ndarray, **fields: Any) -> SeriesSpec:
    """A :class:`SeriesSpec` that stores a volume ``(I, J, K)`` with RAS ``affine`` at its
    true place in patient space (I the columns, J the rows, K the slices), so a
    phantom's organs keep their sides (``fields``: more SeriesSpec fields)."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=float)[:3]
    steps = np.linalg.norm(lps[:, :3], axis=0)
    row, col = lps[:, 0] / steps[0], lps[:, 1] / steps[1]
    normal = np.cross(row, col)
    return SeriesSpec(row_cos=tuple(row.tolist()), col_cos=tuple(col.tolist()),
                      pixel_spacing=(float(steps[1]), float(steps[0])), slice_step=float(lps[:, 2] @ normal),
                      origin=tuple(lps[:, 3].tolist()), **fields)
