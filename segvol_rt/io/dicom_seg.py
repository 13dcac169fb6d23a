"""DICOM Segmentation (SEG) out, written with highdicom and read back before it counts.

A binary SEG (or, for probability maps, a FRACTIONAL one of type PROBABILITY,
255 levels) on the source series' grid: one segment per target, empty frames
omitted, referencing the source series and instances (for a multi-frame
source, its frames). Each segment is coded from :data:`TABLE_FILE`, the
SNOMED CT table shipped with the package (category, type, laterality
modifier, anatomic region, display colour for every name of
:mod:`segvol_rt.io.vocabulary`); a free phrase outside the table gets the
generic category and type *Tissue* (SCT 85756007) - never another organ's
code - and its own text as the segment label. The algorithm identification
names segvol-rt, its version, the family *Artificial Intelligence* and the
checkpoint's sha256 as a parameter.

:func:`seg_bytes` returns the file as bytes after parsing them again with
highdicom and decoding every segment to the masks given; any difference is
a :class:`SegVolError`, so the caller's output set writes nothing.

Masks are in scan space ``(I, J, K)`` (:class:`~segvol_rt.io.dicom.DicomScan`
maps them to DICOM rows, columns and frames).

Runtime dependencies: numpy, pydicom, highdicom (the ``dicom`` extra).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError, one_line
from segvol_rt.io.dicom import MULTIFRAME_CLASSES, DicomScan
from segvol_rt.io.scan import Scan
from segvol_rt.io.vocabulary import normalize_name

TABLE_FILE = Path(__file__).with_name("snomed_segments.csv")
TISSUE = ("85756007", "Tissue")
GENERIC_RGB = (128, 174, 128)
MANUFACTURER = "segvol-rt"
# SeriesNumber (IS) of a SEG: derived from its new SeriesInstanceUID into [SERIES_NUMBER_MIN, 2**31 - 1], so
# each run's series has its own number (the same one for every run made viewers list SEG runs alike)
SERIES_NUMBER_MIN = 1000
SERIES_DESCRIPTION_PREFIX = "segvol-rt"
MAX_FRACTIONAL = 255  # FRACTIONAL SEG levels: a probability p is stored as round(255 p)


@dataclass(frozen=True)
class SegmentCode:
    """The coded concepts of one segment (SNOMED CT code, meaning pairs) and its RGB display colour."""

    label: str
    category: tuple[str, str]
    type: tuple[str, str]
    modifier: tuple[str, str] | None
    region: tuple[str, str] | None
    rgb: tuple[int, int, int]
    in_table: bool


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation: segvol-rt's version and the checkpoint's sha256 (None when unknown)."""

    version: str
    checkpoint_sha256: str | None


@lru_cache(maxsize=1)
def segment_table() -> dict[str, SegmentCode]:
    """The shipped SNOMED CT table, by normalised target name."""
    out = {}
    with open(TABLE_FILE, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            r, g, b = (int(v) for v in row["rgb"].split())
            out[row["name"]] = SegmentCode(row["name"], _required(row, "category"), _required(row, "type"),
                                           _optional_pair(row, "modifier"), _optional_pair(row, "region"), (r, g, b), True)
    return out


def _optional_pair(row: dict[str, str], key: str) -> tuple[str, str] | None:
    code = row[f"{key}_code"]
    return (code, row[f"{key}_meaning"]) if code else None


def _required(row: dict[str, str], key: str) -> tuple[str, str]:
    pair = _optional_pair(row, key)
    if pair is None:  # the shipped table is checked by the tests; this guards an edited copy
        raise SegVolError(f"{TABLE_FILE}: row {row['name']!r} has no {key} code")
    return pair


def segment_code(name: str) -> SegmentCode:
    """The table's entry for ``name``, or the generic *Tissue* code with ``name`` as its label."""
    found = segment_table().get(normalize_name(name))
    if found is not None:
        return found
    return SegmentCode(name.strip(), TISSUE, TISSUE, None, None, GENERIC_RGB, False)


def _code(pair: tuple[str, str]) -> Any:
    return require("highdicom.sr").CodedConcept(value=pair[0], scheme_designator="SCT", meaning=pair[1])


def _text(text: str) -> str:
    """``text`` as an LO value: at most 64 characters, no backslash or control characters (may be empty)."""
    clean = "".join(c if c.isprintable() and c != "\\" else " " for c in text).strip()
    return clean[:64].rstrip()


def _label(text: str) -> str:
    """A Segment Label (LO)."""
    return _text(text) or "segment"


def _description(number: int, code: SegmentCode, algorithm: Any) -> Any:
    hd = require("highdicom")
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_label(code.label),
        segmented_property_category=_code(code.category),
        segmented_property_type=_code(code.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_code(code.region)] if code.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*code.rgb),
    )
    if code.modifier is not None:
        # highdicom has no argument for it; the attribute is part of the Segment Description macro
        type_item = desc.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [_code(code.modifier)]
    return desc


def _algorithm(algo: Algorithm) -> Any:
    hd = require("highdicom")
    codes = require("pydicom.sr.codedict").codes
    params = {"checkpoint_sha256": algo.checkpoint_sha256 or "unknown"}
    return hd.AlgorithmIdentificationSequence(name="segvol-rt", family=codes.cid7162.ArtificialIntelligence,
                                              version=algo.version, parameters=params)


def _source_pixels(scan: DicomScan, masks: Sequence[np.ndarray]) -> np.ndarray:
    """``(F, Rows, Columns, N)`` uint8 frames of the N masks, in the sources' frame order."""
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks], axis=-1)
    return np.ascontiguousarray(scan.to_source_frames(stack)).astype(np.uint8)


def _source_fractions(scan: DicomScan, maps: Sequence[np.ndarray]) -> np.ndarray:
    """``(F, Rows, Columns, N)`` float32 frames of N probability maps, quantised to the
    SEG's 1/255 steps (what a reader decodes), in the sources' frame order."""
    stack = np.stack([np.asarray(m, dtype=np.float32) for m in maps], axis=-1)
    if not np.isfinite(stack).all() or stack.min(initial=0.0) < 0 or stack.max(initial=0.0) > 1:
        raise SegVolError("probability maps must hold finite values in [0, 1] for a FRACTIONAL SEG")
    levels = np.round(np.ascontiguousarray(scan.to_source_frames(stack)) * MAX_FRACTIONAL)
    return (levels / np.float32(MAX_FRACTIONAL)).astype(np.float32)


def series_description(names: Sequence[str], fractional: bool = False, given: str | None = None) -> str:
    """The SEG's SeriesDescription (LO, at most 64 characters): ``given`` when the user
    set one, else ``segvol-rt: liver, spleen`` (``segvol-rt probabilities: ...`` for
    a FRACTIONAL SEG), so that a viewer tells runs of different targets apart."""
    if given is not None:
        text = _text(given)
        if not text:
            raise SegVolError("--series-description is empty")
        return text
    kind = f"{SERIES_DESCRIPTION_PREFIX} probabilities" if fractional else SERIES_DESCRIPTION_PREFIX
    return _text(f"{kind}: {', '.join(_label(n) for n in names)}")


def series_number(series_uid: str) -> int:
    """A SeriesNumber of its own for the series ``series_uid`` (a fresh UID each run; see :data:`SERIES_NUMBER_MIN`)."""
    import hashlib

    span = 2**31 - 1 - SERIES_NUMBER_MIN
    return SERIES_NUMBER_MIN + int.from_bytes(hashlib.sha256(series_uid.encode()).digest()[:8], "big") % span


def seg_bytes(scan: Scan, masks: Sequence[np.ndarray], names: Sequence[str], algo: Algorithm,
              fractional: bool = False, description: str | None = None) -> bytes:
    """A SEG of ``masks`` (each ``(I, J, K)`` on ``scan``'s grid), one segment per name,
    as file bytes; read back and checked (see the module docstring).

    Binary by default (masks 0/1); with ``fractional``, the masks are probability
    maps in [0, 1] and the SEG is FRACTIONAL (type PROBABILITY, 255 levels).
    ``description``: the SeriesDescription (default: the targets, :func:`series_description`)."""
    if not isinstance(scan, DicomScan):
        raise SegVolError("a DICOM SEG output needs a DICOM input series (for NIfTI input write .nii.gz)")
    if len(masks) != len(names) or not masks:
        raise SegVolError(f"{len(masks)} masks for {len(names)} segment names")
    hd = require("highdicom")
    pydicom = require("pydicom")
    algorithm = _algorithm(algo)
    series = series_description(names, fractional, description)
    descriptions = [_description(i + 1, segment_code(n), algorithm) for i, n in enumerate(names)]
    pixels = _source_fractions(scan, masks) if fractional else _source_pixels(scan, masks)
    try:
        with _quiet("highdicom"):  # its log warnings (e.g. an all-empty target keeps its frames) are not ours to print
            seg = _segmentation(hd, scan, pixels, descriptions, algo, fractional, series)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
    except SegVolError:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom validates with many exception types
        raise SegVolError(f"cannot build the DICOM SEG: {one_line(exc)}") from exc
    data = buffer.getvalue()
    check_seg(data, scan, pixels)
    return data


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _segmentation(hd: Any, scan: DicomScan, pixels: np.ndarray, descriptions: list[Any], algo: Algorithm,
                  fractional: bool, series: str) -> Any:
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    series_uid = hd.UID()
    return hd.seg.Segmentation(
        source_images=scan.source_datasets(),
        pixel_array=pixels,
        segmentation_type=kind,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number(str(series_uid)),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="segvol-rt",
        software_versions=algo.version,
        device_serial_number="0",
        series_description=series,
        content_label="SEGVOLRT",
        content_description="SegVol segmentation (segvol-rt)",
        omit_empty_frames=True,
    )


def check_seg(data: bytes, scan: DicomScan, expected: np.ndarray) -> None:
    """Parse ``data`` with highdicom and decode every segment; they must equal
    ``expected`` ``(F, Rows, Columns, N)`` (frames in the sources' order)."""
    hd = require("highdicom")
    try:
        seg = hd.seg.segread(io.BytesIO(data))
        decoded = _decode(seg, scan, expected.shape[-1])
    except Exception as exc:  # noqa: BLE001 - any failure to read our own file back is fatal
        raise SegVolError(f"the DICOM SEG does not read back with highdicom: {exc.__class__.__name__}: {exc}") from exc
    if decoded.shape != expected.shape or not np.array_equal(decoded, expected):
        raise SegVolError("the DICOM SEG read back differs from the masks written; nothing was written")


def _decode(seg: Any, scan: DicomScan, n_segments: int) -> np.ndarray:
    numbers = list(range(1, n_segments + 1))
    sources = scan.source_datasets()
    if len(sources) == 1 and str(sources[0].SOPClassUID) in MULTIFRAME_CLASSES:
        ds = sources[0]
        frames = list(range(1, int(ds.NumberOfFrames) + 1))
        return np.asarray(seg.get_pixels_by_source_frame(
            source_sop_instance_uid=str(ds.SOPInstanceUID), source_frame_numbers=frames, segment_numbers=numbers,
            assert_missing_frames_are_empty=True))
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    return np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, assert_missing_frames_are_empty=True))
