"""Geometry of a DICOM series: its frames (classic files and multi-frame functional
groups), sorted along the slice normal and checked, and the voxel -> RAS affine
in dcm2niix's convention (used by :mod:`segvol_rt.io.dicom`).

Checks, each a one-line :class:`SegVolError` saying what was found: one frame
of reference, orientation (within :data:`ORIENTATION_TOLERANCE`), image size,
pixel spacing and rescale across the series; no duplicate positions; uniform
slice spacing within :data:`SPACING_TOLERANCE` (a gap of about n spacings is
n - 1 missing slices); a positive pixel spacing and an affine that is not
degenerate (the NIfTI reader's check,
:func:`~segvol_rt.io.volume_checks.affine_problem`); no gantry tilt (positions
off the normal by more than :data:`TILT_TOLERANCE_MM`): refused, not resampled.

Runtime dependencies: numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvol_rt.errors import SegVolError
from segvol_rt.io.dicom_files import CT_CLASSES, MULTIFRAME_CLASSES, SeriesInfo
from segvol_rt.io.volume_checks import affine_problem

ORIENTATION_TOLERANCE = 1e-4  # per direction-cosine component
SPACING_TOLERANCE = 0.01  # relative, of the slice spacing (and at least MIN_SPACING_TOLERANCE_MM)
MIN_SPACING_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_MM = 0.01  # in-plane offset of a slice step that counts as gantry tilt
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def check_frame_of_reference(info: SeriesInfo, where: str) -> None:
    uids = {str(f.dataset.FrameOfReferenceUID) for f in info.files if str(f.dataset.SOPClassUID) in CT_CLASSES}
    if len(uids) > 1:
        raise SegVolError(f"{where}: {len(uids)} frames of reference in one series ({', '.join(sorted(uids)[:3])}"
                          f"{' ...' if len(uids) > 3 else ''}); its slices are not in one coordinate system")




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
    if min(frames[0].spacing) <= 0:
        raise SegVolError(f"{where}: PixelSpacing {list(frames[0].spacing)} is not positive; the header's geometry is broken")
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
    problem = affine_problem(lps)  # the NIfTI reader's check: 1e-30 mm pixels are as degenerate as 0 mm ones
    if problem is not None:
        raise SegVolError(f"{where}: {problem} (PixelSpacing {list(frames[0].spacing)}, slice spacing {step:g} mm); "
                          "the header's geometry is broken")
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
