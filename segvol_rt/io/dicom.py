"""DICOM CT series in, as the same :class:`~segvol_rt.io.scan.Scan` a NIfTI gives.

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

The series is found and chosen by :mod:`segvol_rt.io.dicom_files` (headers
only; non-DICOM files skipped, unreadable paths refused, non-CT objects such
as SEGs ignored, anonymised UIDs filled; CT Image, Enhanced CT and Legacy
Converted Enhanced CT); its images must agree on their pixel encoding (the
stored type comes from them, never from a non-image object of the series) and
each have its own SOPInstanceUID; its
geometry sorted and checked by :mod:`segvol_rt.io.dicom_geometry` (one
orientation, frame of reference, size, spacing and rescale; no duplicate or
missing slices; gantry tilt refused, not resampled); this module decodes the
pixels and builds the :class:`DicomScan`.

Compressed pixel data is decoded through pydicom's handlers (pylibjpeg with
its openjpeg, libjpeg and rle plugins, pyjpegls; the ``dicom`` extra), see
:data:`SUPPORTED_SYNTAXES`; any other transfer syntax is a clear error.

Runtime dependencies: numpy, nibabel, pydicom (lazily).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError, one_line
from segvol_rt.io.dicom_files import (
    CT_CLASSES,
    MULTIFRAME_CLASSES,
    DicomFile,
    Discovery,
    SeriesInfo,
    choose_series,
    discover,
    group_series,
    is_dicom_input,
)
from segvol_rt.io.dicom_geometry import SeriesGeometry, check_frame_of_reference, series_frames, series_geometry
from segvol_rt.io.scan import Scan, scaled
from segvol_rt.io.volume_checks import available_memory, check_scaled_range, check_values

__all__ = [
    "CT_CLASSES", "MULTIFRAME_CLASSES", "SUPPORTED_SYNTAXES", "DicomFile", "DicomScan", "Discovery", "SeriesInfo",
    "choose_series", "discover", "is_dicom_input", "read_datasets", "read_dicom_series", "scan_from_series",
]

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


def _check_memory(geo: SeriesGeometry, dtype: np.dtype, where: str) -> None:
    """The stored volume and its float32 copy must fit in the memory available, before either is allocated."""
    need = geo.rows * geo.columns * len(geo.frames) * (dtype.itemsize + 4)
    room = available_memory()
    if room is not None and need > room:
        raise SegVolError(f"{where}: {geo.columns} x {geo.rows} x {len(geo.frames)} voxels need {need / 2**30:.1f} GiB; "
                          f"{room / 2**30:.1f} GiB are available")


# -- pixel data ----------------------------------------------------------------------------


def _syntax(ds: Any) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")


def check_syntaxes(info: SeriesInfo) -> None:
    """Refuse a transfer syntax no installed handler decodes, before any pixel is read."""
    pixels = require("pydicom.pixels")
    seen: set[str] = set()
    for item in _images(info):
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
        raise SegVolError(f"cannot decode the pixel data of {item.name}: {one_line(exc)} (damaged or truncated?)") from exc
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise SegVolError(f"{item.name}: {ds.SamplesPerPixel} samples per pixel; a CT image has 1")
    return np.asarray(arr)


def _images(info: SeriesInfo) -> list[DicomFile]:
    """The image objects of the series (CT classes); an RTSTRUCT or SEG sharing its UID is not one."""
    return [f for f in info.files if str(f.dataset.SOPClassUID) in CT_CLASSES]


_ENCODING = ("BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation")


def _encoding(ds: Any) -> tuple[str, ...]:
    return tuple(str(getattr(ds, key, "")).strip() for key in _ENCODING)


def _stored_dtype(info: SeriesInfo, where: str) -> np.dtype:
    """The stored integer type, from the image objects only, which must all agree on it
    (a cast of one slice's values into another slice's type would change them)."""
    images = _images(info)
    kinds: dict[tuple[str, ...], list[DicomFile]] = {}
    for item in images:
        kinds.setdefault(_encoding(item.dataset), []).append(item)
    if len(kinds) > 1:
        shown = ", ".join(f"{len(items)} x {'/'.join(k)} (e.g. {items[0].name})" for k, items in kinds.items())
        raise SegVolError(f"{where}: the images disagree on {'/'.join(_ENCODING)}: {shown}; refused, "
                          "one type for every slice would change some slices' values")
    bits, _stored, representation, photometric = next(iter(kinds))
    first = images[0].name
    if bits not in ("8", "16", "32"):
        raise SegVolError(f"{first}: BitsAllocated {bits or 'missing'} is not supported (8, 16 or 32)")
    if representation not in ("0", "1"):
        raise SegVolError(f"{first}: PixelRepresentation {representation or 'missing'} is neither 0 nor 1")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SegVolError(f"{first}: PhotometricInterpretation {photometric or 'missing'}; a CT image is MONOCHROME1 or 2")
    return np.dtype(f"{'i' if representation == '1' else 'u'}{int(bits) // 8}")


def check_instance_uids(info: SeriesInfo, where: str) -> None:
    """Every image of the series has its own SOPInstanceUID (a SEG references images by it)."""
    by_uid: dict[str, list[DicomFile]] = {}
    for item in _images(info):
        by_uid.setdefault(str(item.dataset.SOPInstanceUID), []).append(item)
    shared = {uid: items for uid, items in by_uid.items() if len(items) > 1}
    if shared:
        uid, items = next(iter(shared.items()))
        files = ", ".join(i.name for i in items[:3]) + (" ..." if len(items) > 3 else "")
        more = f" (and {len(shared) - 1} more shared UID(s))" if len(shared) > 1 else ""
        raise SegVolError(f"{where}: SOPInstanceUID {uid} is shared by {len(items)} images ({files}){more}; "
                          "every image needs its own - a copy of one image, or a broken export?")


def stored_volume(info: SeriesInfo, geo: SeriesGeometry, dtype: np.dtype) -> np.ndarray:
    """The stored integers as dcm2niix writes them: ``(I, J, K)`` = (column, reversed row, slice), Fortran order;
    ``dtype``: the series' stored type (:func:`_stored_dtype`), which every decoded image must fit."""
    out = np.empty((geo.columns, geo.rows, len(geo.frames)), dtype=dtype, order="F")
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
            if not np.can_cast(image.dtype, dtype, "safe"):
                raise SegVolError(f"{item.name}: its pixel data decodes to {image.dtype}, not the series' {dtype}")
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


def _check_rescale(raw: np.ndarray, rescale: tuple[float, float], named: str) -> None:
    """RescaleSlope/Intercept must scale the stored values to finite float32 HU
    (a zero, NaN or infinite slope scales nothing; nibabel would refuse it too)."""
    slope, inter = rescale
    if slope == 0 or not (math.isfinite(slope) and math.isfinite(inter)):
        raise SegVolError(f"{named}: RescaleSlope {slope:g} and RescaleIntercept {inter:g} cannot scale the stored values")
    check_scaled_range(raw, slope, inter, named, "DICOM")


def scan_from_series(info: SeriesInfo, where: str, notes: Sequence[str] = ()) -> DicomScan:
    """Read the chosen series' pixels into a :class:`DicomScan` (checks first, then pixels)."""
    check_syntaxes(info)
    named = f"series {info.uid} in {where}"
    check_frame_of_reference(info, named)
    dtype = _stored_dtype(info, named)
    check_instance_uids(info, named)
    geo = series_geometry(series_frames(info), named)
    _check_memory(geo, dtype, named)
    raw = stored_volume(info, geo, dtype)
    _check_rescale(raw, geo.rescale, named)
    # dcm2niix's NIfTI of this series stores the slope/intercept as float32
    # (scl_slope, scl_inter), and nibabel applies them as Python floats (float64
    # arithmetic, then float32): the same here, so both give the same values
    slope, inter = (float(np.float32(v)) for v in geo.rescale)
    scale = None if (slope == 1 and inter == 0) else (np.asanyarray(slope), np.asanyarray(inter))
    data = scaled(raw, scale, np.float32)
    path = Path(where) if where and not where.startswith(("http:", "https:")) else None
    check_values(data, raw, exact_ints=scale is None, p=path or where)
    spacing = tuple(float(np.float32(v)) for v in geo.spacing)  # as a NIfTI header holds it
    return DicomScan(data=data, affine=geo.affine.copy(), spacing=spacing, source=f"DICOM series {info.uid} in {where}",  # type: ignore[arg-type]
                     path=path, notes=tuple(notes), series=info, geometry=geo)


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
