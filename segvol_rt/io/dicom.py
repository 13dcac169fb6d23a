"""DICOM CT series in, as the same :class:`~segvol_rt.io.nifti.Scan` a NIfTI gives.

The volume is, voxel for voxel, what **dcm2niix** (Debian 12's 1.0.20220720)
writes for the series, as nibabel reads that NIfTI:

* ``i`` = the DICOM column index, ``j`` = the row index **reversed**
  (``j = Rows - 1 - row``: dcm2niix flips rows), ``k`` = the slices sorted by
  ImagePositionPatient projected on the slice normal (row cosines x column
  cosines), ascending;
* the affine maps ``(i, j, k)`` to RAS+ world mm (DICOM's LPS with x and y negated);
* the stored integers (uint16 or int16, as the pixel representation says)
  with RescaleSlope/RescaleIntercept as the NIfTI ``scl_slope``/``scl_inter``
  (float32), scaled by nibabel's rule into float32 Hounsfield units.

Checks (each a one-line :class:`SegVolError` saying what was found): one
orientation, one frame of reference, one size and pixel spacing across the
series; no duplicate positions; uniform slice spacing within
:data:`SPACING_TOLERANCE` (a gap of about twice the spacing is reported as a
missing slice); no gantry tilt (slice positions off the normal) - a tilted
series is refused, not resampled; one rescale for all slices.

Series are found by reading every file's header (pixel data skipped):
non-DICOM files are skipped and named in a note, non-CT objects (SEG, SR,
localizer series of another SOP class, DICOMDIR) are ignored. CT Image,
Enhanced CT Image and Legacy Converted Enhanced CT Image (multi-frame) are
read. Anonymised files whose dataset lacks a UID fall back to the file meta
(SOP Class and Instance UIDs) or get a generated UID (study, series, frame of
reference); either is said in a note.

Compressed pixel data is decoded through pydicom's handlers (pylibjpeg with
its openjpeg, libjpeg and rle plugins, pyjpegls; the ``dicom`` extra), see
:data:`SUPPORTED_SYNTAXES`; any other transfer syntax is a clear error.

Runtime dependencies: numpy, nibabel, pydicom (lazily).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.io.nifti import Scan, _check_values, _scaled

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_CLASSES = {CT_IMAGE: "CT Image", ENHANCED_CT_IMAGE: "Enhanced CT Image",
              LEGACY_ENHANCED_CT_IMAGE: "Legacy Converted Enhanced CT Image"}
MULTIFRAME_CLASSES = (ENHANCED_CT_IMAGE, LEGACY_ENHANCED_CT_IMAGE)

# transfer syntax UID -> name, for the ones the dicom extra decodes (tested: uncompressed, RLE, JPEG 2000 lossless)
SUPPORTED_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
}

ORIENTATION_TOLERANCE = 1e-4  # per direction-cosine component
SPACING_TOLERANCE = 0.01  # relative, of the slice spacing (and at least MIN_SPACING_TOLERANCE_MM)
MIN_SPACING_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_MM = 0.01  # in-plane offset of a slice step that counts as gantry tilt
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# -- what a folder holds --------------------------------------------------------------


@dataclass
class DicomFile:
    """One DICOM object's header (pixel data not read) and where it came from.

    ``dataset`` is a pydicom Dataset without PixelData; ``path`` is None for
    datasets fetched over DICOMweb (their pixels live in ``pixels_from``)."""

    dataset: Any
    path: Path | None
    pixels_from: Any = None  # the full dataset, when already in memory

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"instance {self.dataset.SOPInstanceUID}"


@dataclass
class SeriesInfo:
    """One series of a folder: UID, description, modality, its files."""

    uid: str
    description: str
    modality: str
    sop_class: str
    files: list[DicomFile] = field(default_factory=list)

    @property
    def slices(self) -> int:
        return sum(int(getattr(f.dataset, "NumberOfFrames", 1) or 1) for f in self.files)

    @property
    def is_ct(self) -> bool:
        return self.sop_class in CT_CLASSES

    def summary(self) -> str:
        """``UID (description, CT, 64 slices)``."""
        desc = self.description or "no description"
        return f"{self.uid} ({desc}, {self.modality or '?'}, {self.slices} slice{'s' if self.slices != 1 else ''})"


@dataclass
class Discovery:
    """Every series found, and notes (skipped files, UID fallbacks) for the user."""

    series: list[SeriesInfo]
    notes: list[str]

    def ct(self) -> list[SeriesInfo]:
        return [s for s in self.series if s.is_ct]


def is_dicom_input(path: str | os.PathLike[str]) -> bool:
    """A folder, or a file with the DICOM preamble (``DICM`` at byte 128); never a
    path named ``.nii``/``.nii.gz`` (a folder so named is a NIfTI mistake, said as such)."""
    p = Path(path)
    if p.name.lower().endswith((".nii", ".nii.gz")):
        return False
    if p.is_dir():
        return True
    if p.is_file():
        try:
            with open(p, "rb") as fh:
                fh.seek(128)
                return fh.read(4) == b"DICM"
        except OSError:
            return False
    return False


def _files_under(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise SegVolError(f"DICOM input {p} does not exist")
    out = [f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")]
    if not out:
        raise SegVolError(f"DICOM folder {p} holds no files")
    return out


def _read_header(path: Path) -> Any | None:
    """The header of a DICOM file (no pixel data); None for a file that is not DICOM."""
    pydicom = require("pydicom")
    errors = require("pydicom.errors")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except errors.InvalidDicomError:
        return None
    except OSError as exc:
        raise SegVolError(f"cannot read DICOM file {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a damaged file
        raise SegVolError(f"cannot read DICOM file {path}: {_one_line(exc)} (damaged or truncated?)") from exc


def _one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"


def discover(path: str | os.PathLike[str]) -> Discovery:
    """Read the headers of every file under ``path`` and group them by series."""
    p = Path(path)
    items, skipped = [], []
    for f in _files_under(p):
        ds = _read_header(f)
        if ds is None:
            skipped.append(f)
        else:
            items.append(DicomFile(ds, f))
    notes = []
    if skipped:
        shown = ", ".join(str(s) for s in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        notes.append(f"skipped {len(skipped)} non-DICOM file(s): {shown}")
    disc = group_series(items, notes)
    return disc


def group_series(items: Sequence[DicomFile], notes: list[str] | None = None) -> Discovery:
    """Group DICOM objects by series, filling anonymised UIDs (see the module docstring)."""
    notes = [] if notes is None else notes
    _fill_instance_uids(items, notes)
    _fill_series_uids(items, notes)
    by_uid: dict[str, SeriesInfo] = {}
    for item in items:
        ds = item.dataset
        uid = str(ds.SeriesInstanceUID)
        if uid not in by_uid:
            by_uid[uid] = SeriesInfo(uid, str(getattr(ds, "SeriesDescription", "") or ""), str(getattr(ds, "Modality", "") or ""),
                                     str(ds.SOPClassUID))
        info = by_uid[uid]
        if str(ds.SOPClassUID) in CT_CLASSES and not info.is_ct:
            info.sop_class = str(ds.SOPClassUID)  # a series mixing a CT class with others counts as CT
        info.files.append(item)
    return Discovery(list(by_uid.values()), notes)


def _meta(ds: Any, key: str) -> str | None:
    value = getattr(getattr(ds, "file_meta", None), key, None)
    return str(value) if value else None


def _fill_instance_uids(items: Sequence[DicomFile], notes: list[str]) -> None:
    """SOP Class/Instance UIDs blanked in the dataset: the file meta's, else generated."""
    generate_uid = require("pydicom.uid").generate_uid
    counts = {"SOPClassUID": [0, 0], "SOPInstanceUID": [0, 0]}
    meta_key = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}
    for item in items:
        ds = item.dataset
        for key, meta_count in counts.items():
            if getattr(ds, key, None):
                continue
            value = _meta(ds, meta_key[key])
            if value is not None:
                meta_count[0] += 1
            elif key == "SOPInstanceUID":
                value = generate_uid()
                meta_count[1] += 1
            else:
                value = ""  # no class anywhere: not an image we can use
            setattr(ds, key, value)
    for key, (from_meta, generated) in counts.items():
        if from_meta:
            notes.append(f"{from_meta} file(s) have no {key} in the dataset; using the file meta's")
        if generated:
            notes.append(f"{generated} file(s) have no {key} anywhere; generated new ones (the SEG references them)")


def _fill_series_uids(items: Sequence[DicomFile], notes: list[str]) -> None:
    """Study/Series/Frame of Reference UIDs blanked: one generated UID per group,
    derived from the group's SOP Instance UIDs, so a rerun generates the same."""
    generate_uid = require("pydicom.uid").generate_uid
    for key, group_by in (("StudyInstanceUID", None), ("SeriesInstanceUID", "StudyInstanceUID"),
                          ("FrameOfReferenceUID", "SeriesInstanceUID")):
        missing: dict[str, list[DicomFile]] = {}
        for item in items:
            if not getattr(item.dataset, key, None):
                group = str(getattr(item.dataset, group_by, "")) if group_by else ""
                missing.setdefault(group, []).append(item)
        for group_items in missing.values():
            uid = generate_uid(entropy_srcs=[key, *sorted(str(i.dataset.SOPInstanceUID) for i in group_items)])
            for item in group_items:
                setattr(item.dataset, key, uid)
            notes.append(f"{len(group_items)} file(s) have no {key}; generated {uid}")


# -- choosing the series ------------------------------------------------------------------


def choose_series(disc: Discovery, series: str | None, where: str) -> SeriesInfo:
    """The CT series ``series`` (a SeriesInstanceUID), or the only one; else a one-line error listing them."""
    cts = disc.ct()
    if series is not None:
        chosen = [s for s in disc.series if s.uid == str(series).strip()]
        if not chosen:
            listed = "; ".join(s.summary() for s in cts) or "none"
            raise SegVolError(f"series {series} is not in {where}; CT series there: {listed}")
        if not chosen[0].is_ct:
            raise SegVolError(f"series {series} in {where} is not CT ({chosen[0].modality}, SOP class {chosen[0].sop_class})")
        return chosen[0]
    if not cts:
        others = "; ".join(s.summary() for s in disc.series)
        raise SegVolError(f"no CT series in {where}" + (f" (found: {others})" if others else " (no DICOM files)"))
    if len(cts) > 1:
        listed = "; ".join(s.summary() for s in cts)
        raise SegVolError(f"{where} holds {len(cts)} CT series; choose one with --series UID (API: series=): {listed}")
    return cts[0]


# -- geometry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One 2D image of the series: its source (file index, frame index) and plane geometry (LPS mm)."""

    source: int
    frame: int
    position: np.ndarray  # ImagePositionPatient, (3,)
    orientation: np.ndarray  # ImageOrientationPatient, (6,): row cosines, column cosines
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    size: tuple[int, int]  # (Rows, Columns)
    rescale: tuple[float, float]  # (slope, intercept)


def _floats(value: Any, n: int, what: str, name: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise SegVolError(f"{name}: {what} is missing or not numeric ({value!r})") from None
    if out.shape != (n,) or not np.isfinite(out).all():
        raise SegVolError(f"{name}: {what} must be {n} finite numbers, got {value!r}")
    return out


def _pair(values: np.ndarray) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def _rescale(holder: Any) -> tuple[float, float]:
    slope = getattr(holder, "RescaleSlope", None)
    inter = getattr(holder, "RescaleIntercept", None)
    return (1.0 if slope in (None, "") else float(slope)), (0.0 if inter in (None, "") else float(inter))


def _classic_frame(index: int, ds: Any, name: str) -> Frame:
    return Frame(
        source=index, frame=0,
        position=_floats(getattr(ds, "ImagePositionPatient", None), 3, "ImagePositionPatient", name),
        orientation=_floats(getattr(ds, "ImageOrientationPatient", None), 6, "ImageOrientationPatient", name),
        spacing=_pair(_floats(getattr(ds, "PixelSpacing", None), 2, "PixelSpacing", name)),
        size=(int(ds.Rows), int(ds.Columns)),
        rescale=_rescale(ds),
    )


def _group_item(per_frame: Any, shared: Any, sequence: str) -> Any | None:
    """The first item of a functional group sequence, per-frame first, then shared."""
    for holder in (per_frame, shared):
        seq = getattr(holder, sequence, None) if holder is not None else None
        if seq:
            return seq[0]
    return None


def _multiframe_frames(index: int, ds: Any, name: str) -> list[Frame]:
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []) or [])
    shared_seq = getattr(ds, "SharedFunctionalGroupsSequence", None)
    shared = shared_seq[0] if shared_seq else None
    if len(per_frame) != n:
        raise SegVolError(f"{name}: {n} frames but {len(per_frame)} per-frame functional groups")
    frames = []
    for f, item in enumerate(per_frame):
        pos = _group_item(item, shared, "PlanePositionSequence")
        orient = _group_item(item, shared, "PlaneOrientationSequence")
        measures = _group_item(item, shared, "PixelMeasuresSequence")
        rescale = _group_item(item, shared, "PixelValueTransformationSequence")
        where = f"{name} frame {f + 1}"
        frames.append(Frame(
            source=index, frame=f,
            position=_floats(getattr(pos, "ImagePositionPatient", None), 3, "ImagePositionPatient", where),
            orientation=_floats(getattr(orient, "ImageOrientationPatient", None), 6, "ImageOrientationPatient", where),
            spacing=_pair(_floats(getattr(measures, "PixelSpacing", None), 2, "PixelSpacing", where)),
            size=(int(ds.Rows), int(ds.Columns)),
            rescale=_rescale(rescale) if rescale is not None else _rescale(ds),
        ))
    return frames


def _check_frame_of_reference(info: SeriesInfo, where: str) -> None:
    uids = {str(f.dataset.FrameOfReferenceUID) for f in info.files if str(f.dataset.SOPClassUID) in CT_CLASSES}
    if len(uids) > 1:
        raise SegVolError(f"{where}: {len(uids)} frames of reference in one series ({', '.join(sorted(uids)[:3])}"
                          f"{' ...' if len(uids) > 3 else ''}); its slices are not in one coordinate system")


def _check_memory(geo: SeriesGeometry, dtype: np.dtype, where: str) -> None:
    """The stored volume and its float32 copy must fit in the memory available, before either is allocated."""
    from segvol_rt.io.nifti_header import available_memory

    need = geo.rows * geo.columns * len(geo.frames) * (dtype.itemsize + 4)
    room = available_memory()
    if room is not None and need > room:
        raise SegVolError(f"{where}: {geo.columns} x {geo.rows} x {len(geo.frames)} voxels need {need / 2**30:.1f} GiB; "
                          f"{room / 2**30:.1f} GiB are available")


def series_frames(info: SeriesInfo) -> list[Frame]:
    """Every image of the series (CT files only), unsorted."""
    frames: list[Frame] = []
    for index, item in enumerate(info.files):
        ds = item.dataset
        sop = str(ds.SOPClassUID)
        if sop not in CT_CLASSES:
            continue
        try:
            if sop in MULTIFRAME_CLASSES:
                frames.extend(_multiframe_frames(index, ds, item.name))
            else:
                frames.append(_classic_frame(index, ds, item.name))
        except AttributeError as exc:
            raise SegVolError(f"{item.name}: a required attribute is missing ({exc})") from None
    return frames


@dataclass(frozen=True)
class SeriesGeometry:
    """The checked geometry: frames in ``k`` order and the NIfTI-convention affine.

    ``frames[k]`` is the image at slice ``k``; ``affine`` maps ``(i, j, k)`` to
    RAS+ mm, with ``i`` = column, ``j`` = reversed row (as dcm2niix)."""

    frames: tuple[Frame, ...]
    affine: np.ndarray
    rows: int
    columns: int
    spacing: tuple[float, float, float]  # mm along (i, j, k)
    rescale: tuple[float, float]


def _counted(values: Iterable[Any]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return ", ".join(f"{n} x {v}" for v, n in counts.items())


def _check_uniform(frames: Sequence[Frame], where: str) -> None:
    first = frames[0]
    if any(f.size != first.size for f in frames):
        raise SegVolError(f"{where}: mixed image sizes (rows x columns): {_counted(f'{f.size[0]}x{f.size[1]}' for f in frames)}")
    if any(np.abs(f.orientation - first.orientation).max() > ORIENTATION_TOLERANCE for f in frames):
        shown = _counted(np.array2string(np.round(f.orientation, 4), separator=",") for f in frames)
        raise SegVolError(f"{where}: mixed orientations (ImageOrientationPatient): {shown}")
    if any(np.abs(np.subtract(f.spacing, first.spacing)).max() > 1e-4 for f in frames):
        raise SegVolError(f"{where}: mixed pixel spacings: {_counted(f.spacing for f in frames)}")
    if any(f.rescale != first.rescale for f in frames):
        raise SegVolError(f"{where}: RescaleSlope/RescaleIntercept vary between slices ({_counted(f.rescale for f in frames)});"
                          " not supported")


def _unit(v: np.ndarray, what: str, where: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not 0.99 < norm < 1.01:
        raise SegVolError(f"{where}: ImageOrientationPatient {what} cosines are not a unit vector (norm {norm:.4f})")
    return v / norm


def series_geometry(frames: Sequence[Frame], where: str) -> SeriesGeometry:
    """Sort and check the frames (see the module docstring); raises SegVolError naming what was found."""
    if len(frames) < 2:
        raise SegVolError(f"{where}: {len(frames)} slice(s); a volume needs at least 2")
    _check_uniform(frames, where)
    row = _unit(frames[0].orientation[:3], "row", where)
    col = _unit(frames[0].orientation[3:], "column", where)
    if abs(float(row @ col)) > 1e-3:
        raise SegVolError(f"{where}: ImageOrientationPatient row and column cosines are not orthogonal")
    normal = np.cross(row, col)
    order = sorted(range(len(frames)), key=lambda n: float(frames[n].position @ normal))
    ordered = [frames[n] for n in order]
    positions = np.array([f.position for f in ordered])
    along = positions @ normal
    gaps = np.diff(along)
    _check_positions(gaps, along, where)
    _check_tilt(positions, along, normal, where)
    step = (along[-1] - along[0]) / (len(ordered) - 1)
    row_spacing, col_spacing = frames[0].spacing
    rows, columns = frames[0].size
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing
    lps[:3, 1] = -col * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0] + (rows - 1) * row_spacing * col
    return SeriesGeometry(tuple(ordered), _LPS_TO_RAS @ lps, rows, columns, (col_spacing, row_spacing, float(step)),
                          frames[0].rescale)


def _check_positions(gaps: np.ndarray, along: np.ndarray, where: str) -> None:
    tol_dup = MIN_SPACING_TOLERANCE_MM
    dup = np.flatnonzero(gaps < tol_dup)
    if dup.size:
        at = ", ".join(f"{along[i]:.3f}" for i in dup[:5])
        raise SegVolError(f"{where}: {dup.size} duplicate slice position(s) along the normal at {at} mm "
                          "(two images at one position: several acquisitions or echoes in one series?)")
    spacing = float(np.median(gaps))
    tol = max(SPACING_TOLERANCE * spacing, MIN_SPACING_TOLERANCE_MM)
    bad = np.flatnonzero(np.abs(gaps - spacing) > tol)
    if not bad.size:
        return
    i = int(bad[0])
    missing = int(round(gaps[i] / spacing)) - 1
    if missing >= 1 and abs(gaps[i] - (missing + 1) * spacing) <= tol * (missing + 1):
        raise SegVolError(f"{where}: missing slice(s): a gap of {gaps[i]:.3f} mm between the slices at {along[i]:.3f} and "
                          f"{along[i + 1]:.3f} mm, where the spacing is {spacing:.3f} mm ({missing} slice(s) missing)")
    raise SegVolError(f"{where}: non-uniform slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                      f"(median {spacing:.3f} mm, tolerance {tol:.3f} mm)")


def _check_tilt(positions: np.ndarray, along: np.ndarray, normal: np.ndarray, where: str) -> None:
    offsets = positions - positions[0] - np.outer(along - along[0], normal)
    drift = float(np.linalg.norm(offsets, axis=1).max())
    if drift > TILT_TOLERANCE_MM:
        length = float(along[-1] - along[0])
        angle = float(np.degrees(np.arctan2(drift, length)))
        raise SegVolError(f"{where}: gantry tilt of about {angle:.2f} degrees (slice positions drift {drift:.2f} mm off the "
                          "slice normal); tilted series are refused, not resampled - resample the series first "
                          "(e.g. dcm2niix's tilt correction)")


# -- pixel data ----------------------------------------------------------------------------


def _syntax(ds: Any) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")


def check_syntaxes(info: SeriesInfo) -> None:
    """Refuse a transfer syntax no installed handler decodes, before any pixel is read."""
    pixels = require("pydicom.pixels")
    seen: set[str] = set()
    for item in info.files:
        uid = _syntax(item.dataset)
        if uid in seen:
            continue
        seen.add(uid)
        try:
            available = pixels.get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            name = SUPPORTED_SYNTAXES.get(uid) or _uid_name(uid)
            supported = ", ".join(sorted(set(SUPPORTED_SYNTAXES.values())))
            hint = "" if uid not in SUPPORTED_SYNTAXES else " (install the dicom extra: pip install 'segvol-rt[dicom]')"
            raise SegVolError(f"{item.name}: transfer syntax {name} ({uid}) cannot be decoded{hint}; supported: {supported}")


def _uid_name(uid: str) -> str:
    try:
        return str(require("pydicom.uid").UID(uid).name)
    except Exception:  # noqa: BLE001 - an unknown UID has no name
        return "unknown"


def _pixels(item: DicomFile) -> np.ndarray:
    """The stored pixel values of one file, ``(R, C)`` or ``(frames, R, C)``."""
    pydicom = require("pydicom")
    try:
        ds = item.pixels_from if item.pixels_from is not None else pydicom.dcmread(item.path)
        arr = ds.pixel_array
    except OSError as exc:
        raise SegVolError(f"cannot read DICOM file {item.name}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the decoders raise many types on damaged data
        raise SegVolError(f"cannot decode the pixel data of {item.name}: {_one_line(exc)} (damaged or truncated?)") from exc
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise SegVolError(f"{item.name}: {ds.SamplesPerPixel} samples per pixel; a CT image has 1")
    return np.asarray(arr)


def _stored_dtype(info: SeriesInfo) -> np.dtype:
    ds = info.files[0].dataset
    bits = int(getattr(ds, "BitsAllocated", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    if bits not in (8, 16, 32):
        raise SegVolError(f"{info.files[0].name}: BitsAllocated {bits} is not supported")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


def stored_volume(info: SeriesInfo, geo: SeriesGeometry) -> np.ndarray:
    """The stored integers as dcm2niix writes them: ``(I, J, K)`` = (column, reversed row, slice), Fortran order."""
    out = np.empty((geo.columns, geo.rows, len(geo.frames)), dtype=_stored_dtype(info), order="F")
    by_source: dict[int, list[tuple[int, int]]] = {}
    for k, f in enumerate(geo.frames):
        by_source.setdefault(f.source, []).append((k, f.frame))
    for source, slots in by_source.items():
        item = info.files[source]
        arr = _pixels(item)
        multi = arr.ndim == 3
        for k, frame in slots:
            image = arr[frame] if multi else arr
            if image.shape != (geo.rows, geo.columns):
                raise SegVolError(f"{item.name}: pixel data is {image.shape}, the header says {(geo.rows, geo.columns)}")
            out[:, :, k] = image[::-1, :].T
    return out


# -- the scan --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DicomScan(Scan):
    """A :class:`Scan` read from a DICOM series, with what a SEG needs to reference it.

    ``series``: the chosen :class:`SeriesInfo` (headers, no pixels);
    ``geometry``: :class:`SeriesGeometry` (``frames[k]`` = slice ``k``)."""

    series: Any = None
    geometry: Any = None

    def source_datasets(self) -> list[Any]:
        """The source images a SEG references, in the order of :meth:`to_source_frames`."""
        return [self.series.files[s].dataset for s in self._sources()]

    def _sources(self) -> list[int]:
        return sorted({f.source for f in self.geometry.frames})

    def to_source_frames(self, mask: np.ndarray) -> np.ndarray:
        """A scan-space mask ``(I, J, K[, N])`` as DICOM frames ``(F, Rows, Columns[, N])``,
        in the order of :meth:`source_datasets` (file by file, then frame by frame)."""
        keys = [(f.source, f.frame) for f in self.geometry.frames]
        order = sorted(range(len(keys)), key=lambda k: keys[k])
        arr = np.asarray(mask)[:, ::-1, order]  # (C, R, F, ...): rows back to DICOM order
        return np.moveaxis(arr, (0, 1, 2), (2, 1, 0))


def _header(raw: np.ndarray, geo: SeriesGeometry, description: str) -> Any:
    nib = require("nibabel")
    header = nib.Nifti1Header()
    header.set_data_dtype(raw.dtype)
    header.set_data_shape(raw.shape)
    header.set_qform(geo.affine, code=1)
    header.set_sform(geo.affine, code=1)
    header.set_zooms(geo.spacing)
    header.set_xyzt_units("mm", "sec")
    header.set_slope_inter(*geo.rescale)
    header["descrip"] = description.encode("ascii", "replace")[:79]
    return header


def scan_from_series(info: SeriesInfo, where: str, notes: Sequence[str] = ()) -> DicomScan:
    """Read the chosen series' pixels into a :class:`DicomScan` (checks first, then pixels)."""
    check_syntaxes(info)
    named = f"series {info.uid} in {where}"
    _check_frame_of_reference(info, named)
    geo = series_geometry(series_frames(info), named)
    _check_memory(geo, _stored_dtype(info), named)
    raw = stored_volume(info, geo)
    header = _header(raw, geo, f"segvol-rt from DICOM {info.uid}")
    # nibabel's scaling: the float32 slope/intercept the NIfTI header holds, as the
    # Python floats its array proxy applies (float64 arithmetic, then float32)
    slope, inter = (float(header[key]) for key in ("scl_slope", "scl_inter"))
    scale = None if (slope == 1 and inter == 0) else (np.asanyarray(slope), np.asanyarray(inter))
    data = _scaled(raw, scale, np.float32)
    path = Path(where) if where and not where.startswith(("http:", "https:")) else None
    _check_values(data, raw, exact_ints=scale is None, p=path or Path(where))
    return DicomScan(data=data, affine=geo.affine.copy(), header=header, path=path, notes=tuple(notes),
                     series=info, geometry=geo)


def read_dicom_series(path: str | os.PathLike[str], series: str | None = None) -> DicomScan:
    """Read one CT series of a DICOM folder (or a single multi-frame file) as a
    :class:`DicomScan`, ``(I, J, K)`` float32 HU in dcm2niix's voxel order.

    ``series``: the SeriesInstanceUID; needed when the folder holds several CT
    series (the error lists them). Raises :class:`SegVolError` on every problem."""
    disc = discover(path)
    info = choose_series(disc, series, str(path))
    return scan_from_series(info, str(path), disc.notes)


def read_datasets(datasets: Sequence[Any], where: str, series: str | None = None) -> DicomScan:
    """The same as :func:`read_dicom_series` for datasets already in memory (e.g. fetched over DICOMweb)."""
    Dataset = require("pydicom.dataset").Dataset
    items = []
    for ds in datasets:
        header = Dataset()  # the elements, shared, without the pixel data (a copy would share the dict)
        for elem in ds:
            if elem.tag != 0x7FE00010:
                header.add(elem)
        header.file_meta = getattr(ds, "file_meta", None) or require("pydicom.dataset").FileMetaDataset()
        items.append(DicomFile(header, None, pixels_from=ds))
    disc = group_series(items)
    info = choose_series(disc, series, where)
    return scan_from_series(info, where, disc.notes)
