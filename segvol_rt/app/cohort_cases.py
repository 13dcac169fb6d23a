"""The cases of a cohort run (``segvol-rt infer A B ... --out-dir DIR``): what the
scan arguments, the folders among them and a ``--list`` file name.

* a ``.nii``/``.nii.gz`` path (or any file that is not DICOM) is one NIfTI case;
* a DICOM file is one case per series it holds;
* a folder is walked: each NIfTI file in it is a case and each DICOM series
  found in it (its files grouped by SeriesInstanceUID, wherever they lie
  under the folder) is a case; hidden files are skipped, so are files that are
  neither NIfTI nor DICOM (said in a note);
* a ``http(s)://.../studies/S/series/T`` URL is one DICOMweb case;
* ``--list FILE``: one path or URL a line (blank lines and ``#`` comments
  skipped); relative paths are relative to the list file's folder.

**Our own outputs are never cases**: the walk skips the ``--out-dir`` folder
and every folder holding a run report (:data:`REPORT_NAME`), i.e. any earlier
run's output folder, so an ``--out-dir`` inside an input folder is allowed
and a rerun finds the same cases.

Case names name the outputs (``DIR/<name>_segvol.nii.gz`` or ``.dcm``): a
NIfTI file's stem, a DICOM series' SeriesInstanceUID; a name already taken in
the run gets ``_2``, ``_3``, ... in the order the cases are found (sorted
paths, so a rerun names them alike). A path that does not exist, a DICOM file
pydicom cannot read or a non-CT series is a case that fails with its line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segvol_rt.app.infer import slug
from segvol_rt.errors import SegVolError

REPORT_NAME = "segvol-rt-run.json"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Case:
    """One scan of the cohort.

    ``source``: the path or URL as given or found; ``series``: a DICOM
    series' SeriesInstanceUID (None for NIfTI); ``info``: the series found by
    the walk (:class:`segvol_rt.io.dicom_files.SeriesInfo`), read without
    searching the folder again; ``error``: why the case fails before it
    starts (it is still listed, as failed)."""

    name: str
    source: str
    kind: str  # "nifti" | "dicom" | "dicomweb"
    series: str | None = None
    info: Any = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def is_dicom(self) -> bool:
        return self.kind in ("dicom", "dicomweb")

    def signature(self) -> str | None:
        """sha256 over the input files' paths, sizes and modification times (None for
        DICOMweb): a resumed case must read what it read before."""
        if not self.files:
            return None
        digest = hashlib.sha256()
        for f in sorted(self.files):
            try:
                st = f.stat()
                digest.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{f}\0missing\n".encode())
        return digest.hexdigest()


def read_list(list_file: str | os.PathLike[str]) -> list[str]:
    """The entries of a ``--list`` file (see the module docstring)."""
    p = Path(list_file)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SegVolError(f"cannot read --list {p}: {getattr(exc, 'strerror', None) or exc}") from exc
    out = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            out.append(entry if _is_url(entry) or Path(entry).is_absolute() else str(p.parent / entry))
    return out


def find_cases(sources: Sequence[str], out_dir: Path) -> list[Case]:
    """The cases of ``sources`` (scan arguments and list entries), in order, uniquely named."""
    cases: list[Case] = []
    for source in sources:
        cases.extend(_cases_of(source, out_dir))
    if not cases:
        raise SegVolError("no scans to segment: the inputs hold no NIfTI file or DICOM series")
    taken: dict[str, int] = {}
    for case in cases:
        base = case.name
        taken[base] = taken.get(base, 0) + 1
        if taken[base] > 1:
            case.name = f"{base}_{taken[base]}"
    return cases


def _is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _cases_of(source: str, out_dir: Path) -> list[Case]:
    if _is_url(source):
        from segvol_rt.app import dicomweb as W

        try:
            name = slug(W.parse_series_url(source).series)
        except SegVolError as exc:
            return [Case(slug(source), source, "dicomweb", error=str(exc))]
        return [Case(name, source, "dicomweb")]
    p = Path(source)
    if p.is_dir():
        return _folder_cases(p, out_dir)
    if not p.exists():
        return [Case(slug(_stem(p)), source, "nifti", error=f"{source} does not exist")]
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return [Case(slug(_stem(p)), source, "nifti", files=[p])]
    from segvol_rt.io.scans import is_dicom

    if not is_dicom(p):
        return [Case(slug(_stem(p)), source, "nifti", files=[p])]  # the reader says what it is not
    return _dicom_cases([p], source, [])


def _stem(p: Path) -> str:
    name = p.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _is_output_folder(folder: Path, out_dir: Path) -> bool:
    """An earlier run's output folder (it holds a run report), or this run's ``--out-dir``."""
    if (folder / REPORT_NAME).exists():
        return True
    try:
        return folder.resolve() == out_dir.resolve()
    except OSError:
        return False


def _walk(root: Path, out_dir: Path) -> list[Path]:
    """Every visible file under ``root``, sorted, outside output folders."""
    if _is_output_folder(root, out_dir):
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _is_output_folder(here / d, out_dir))
        found.extend(here / f for f in sorted(filenames) if not f.startswith("."))
    return found


def _folder_cases(folder: Path, out_dir: Path) -> list[Case]:
    files = _walk(folder, out_dir)
    nifti = [f for f in files if f.name.lower().endswith(NIFTI_SUFFIXES)]
    cases = [Case(slug(_stem(f)), str(f), "nifti", files=[f]) for f in nifti]
    others = [f for f in files if f not in set(nifti)]
    cases += _dicom_cases(others, str(folder), [])
    if not cases:
        return [Case(slug(folder.name or "folder"), str(folder), "nifti",
                     error=f"{folder} holds no NIfTI file or DICOM series (output folders are skipped)")]
    return cases


def _dicom_cases(paths: Sequence[Path], where: str, notes: list[str]) -> list[Case]:
    """One case per series of the DICOM files among ``paths``; an unreadable DICOM file is a failed case."""
    from segvol_rt.io.dicom_files import DicomFile, group_series, read_header

    items, failed, skipped = [], [], []
    for f in paths:
        try:
            ds = read_header(f)
        except SegVolError as exc:
            failed.append(Case(slug(_stem(f)), str(f), "dicom", error=str(exc), files=[f]))
            continue
        if ds is None:
            skipped.append(f)
        else:
            items.append(DicomFile(ds, f))
    if skipped:
        notes.append(f"{where}: skipped {len(skipped)} file(s) that are neither NIfTI nor DICOM, e.g. {skipped[0]}")
    if not items:
        return failed
    disc = group_series(items, notes)
    cases = []
    for info in disc.series:
        error = None if info.is_ct else (f"series {info.uid} in {where} is not CT "
                                          f"({info.modality or 'no modality'}, SOP class {info.sop_class})")
        files = [f.path for f in info.files if f.path is not None]
        cases.append(Case(slug(info.uid), where, "dicom", info.uid, info, list(disc.notes), error, files))
    return cases + failed
