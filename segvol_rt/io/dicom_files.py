"""DICOM objects of a folder grouped by series, anonymised UIDs filled, one series chosen
(used by :mod:`segvol_rt.io.dicom`).

Every file's header is read (pixel data skipped): non-DICOM files are skipped
and named in a note; hidden names are not read, linked folders are followed
(each folder and file once), and a path inside the folder that cannot be
listed or opened is refused (it may hold a slice); :meth:`Discovery.inputs`
lists every file read, which no output may replace; objects of any SOP class are grouped by series, and only
CT series (CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image)
can be chosen. Anonymised files whose dataset lacks a UID fall back to the
file meta (SOP Class and Instance UIDs) or get a generated UID (study, series,
frame of reference; derived from the instance UIDs, so a rerun generates the
same), each said in a note.

Runtime dependencies: pydicom (lazily).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError, one_line

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_CLASSES = {CT_IMAGE: "CT Image", ENHANCED_CT_IMAGE: "Enhanced CT Image",
              LEGACY_ENHANCED_CT_IMAGE: "Legacy Converted Enhanced CT Image"}
MULTIFRAME_CLASSES = (ENHANCED_CT_IMAGE, LEGACY_ENHANCED_CT_IMAGE)


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
    """Every series found, and notes (skipped files, UID fallbacks) for the user;
    ``read``: every file whose header was read (DICOM or not)."""

    series: list[SeriesInfo]
    notes: list[str]
    read: list[Path] = field(default_factory=list)

    def ct(self) -> list[SeriesInfo]:
        return [s for s in self.series if s.is_ct]

    def inputs(self, chosen: SeriesInfo) -> list[tuple[str, Path]]:
        """``(what, path)`` of every file read: no output may be one of them, whichever
        series it belongs to (:func:`segvol_rt.io.outputs.check_outputs`)."""
        of_path = {f.path: "DICOM file" if s is chosen else f"DICOM file of series {s.uid}"
                   for s in self.series for f in s.files if f.path is not None}
        return [(of_path.get(p, "file of the DICOM folder"), p) for p in self.read]


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
    """Every regular file under ``p`` (``p`` itself when a file), hidden names
    (``.*``, e.g. our own staged outputs) left out; symbolic links followed,
    each file and folder taken once. A path that cannot be listed or opened is
    refused: it may hold slices, and a slice missing at either end of the
    stack leaves no gap in the positions for the geometry checks to find."""
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise SegVolError(f"DICOM input {p} does not exist")
    walk = _Walk()
    walk.folder(p)
    if walk.unreadable:
        shown = "; ".join(walk.unreadable[:3]) + (f" and {len(walk.unreadable) - 3} more" if len(walk.unreadable) > 3 else "")
        raise SegVolError(f"cannot read {shown} inside the DICOM input {p}; the series may be incomplete "
                          "(a slice missing at an end of the stack cannot be detected): fix the permissions "
                          "or move it out of the folder")
    if not walk.files:
        raise SegVolError(f"DICOM folder {p} holds no files")
    return walk.files


class _Walk:
    """A recursive listing that records what it cannot read instead of skipping it."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.unreadable: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    def _once(self, st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def folder(self, d: Path) -> None:
        try:
            if not self._once(d.stat()):
                return  # a link back to a folder already listed
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.unreadable.append(f"{d} ({exc.strerror or exc})")
            return
        for entry in entries:
            if not entry.name.startswith("."):
                self.entry(Path(entry.path))

    def entry(self, path: Path) -> None:
        try:
            st = path.stat()  # follows a link
        except OSError as exc:
            broken = "a broken symbolic link" if path.is_symlink() else (exc.strerror or str(exc))
            self.unreadable.append(f"{path} ({broken})")
            return
        if stat.S_ISDIR(st.st_mode):
            self.folder(path)
        elif stat.S_ISREG(st.st_mode) and self._once(st):
            self.files.append(path)
        # FIFOs, sockets, devices: not files a series is stored in (reading a FIFO would block)


def read_header(path: Path) -> Any | None:
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
        raise SegVolError(f"cannot read DICOM file {path}: {one_line(exc)} (damaged or truncated?)") from exc


def discover(path: str | os.PathLike[str]) -> Discovery:
    """Read the headers of every file under ``path`` and group them by series."""
    p = Path(path)
    items, skipped = [], []
    for f in _files_under(p):
        ds = read_header(f)
        if ds is None:
            skipped.append(f)
        else:
            items.append(DicomFile(ds, f))
    notes = []
    if skipped:
        shown = ", ".join(str(s) for s in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        notes.append(f"skipped {len(skipped)} non-DICOM file(s): {shown}")
    disc = group_series(items, notes)
    disc.read = [*(i.path for i in items if i.path is not None), *skipped]
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
