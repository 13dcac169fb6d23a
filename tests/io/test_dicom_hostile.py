"""DICOM series under hostile or careless use (issue 22), each refused with one
SegVolError line or read right - never wrong pixels without a word:

* the pixel type comes from the image objects of the series only (an RTSTRUCT
  sharing the CT's SeriesInstanceUID and sorting first changed nothing), and
  images that disagree on BitsAllocated, BitsStored, PixelRepresentation or
  PhotometricInterpretation are refused;
* a folder, a file or a link inside the input that cannot be read is refused,
  naming it (a slice missing at an end of the stack leaves no gap for the
  geometry checks); linked folders are followed, loops end;
* PixelSpacing 0, negative or 1e-30 (a degenerate affine, the NIfTI reader's check);
* one SOPInstanceUID on several images;
* :meth:`Discovery.inputs`: every file read, of whichever series, is an input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.io import dicom_files  # noqa: E402
from segvol_rt.io.dicom import discover, read_dicom_series  # noqa: E402
from segvol_rt.io.scans import read_any  # noqa: E402
from tests.support.dicom_series import SeriesSpec, write_series  # noqa: E402

SHAPE = (24, 20, 8)  # (columns, rows, slices)
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    rng = np.random.default_rng(7)
    vol = rng.integers(-1000, 1500, SHAPE).astype(np.float64)
    vol[3, 4, :] = -980.0
    return vol


def refused(path: Path, *needles: str, **kwargs: object) -> str:
    with pytest.raises(SegVolError) as err:
        read_dicom_series(path, **kwargs)
    line = str(err.value)
    assert "\n" not in line, line
    for needle in needles:
        assert needle in line, line
    return line


def by_position(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def edit(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


# -- the pixel type: image objects only, and all of them agree -----------------------------------------


def _rt_struct(path: Path, series_uid: str, study_uid: str) -> None:
    """A non-image object of the CT's series, unsigned by pydicom's defaults, named to sort first."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID, ds.Modality = RT_STRUCT, "RTSTRUCT"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
    ds.BitsAllocated, ds.PixelRepresentation = 16, 0  # what the old reader took for the whole series
    ds.save_as(path, enforce_file_format=True)


def test_a_non_image_object_sorting_first_does_not_decide_the_pixel_type(hu, tmp_path):
    spec = SeriesSpec(signed=True, intercept=0.0, series_uid="1.2.826.0.1.3680043.8.498.2201", study_uid="1.2.3.22")
    files = write_series(tmp_path / "ct", hu, spec)
    plain = read_dicom_series(tmp_path / "ct")
    _rt_struct(tmp_path / "ct" / "0000_rtstruct.dcm", spec.series_uid, spec.study_uid)
    assert sorted((tmp_path / "ct").iterdir())[0].name == "0000_rtstruct.dcm"
    scan = read_dicom_series(tmp_path / "ct")
    assert np.array_equal(scan.data, plain.data) and scan.data.min() < -979  # -980 HU, not 64556
    assert len(scan.source_datasets()) == len(files)  # the SEG references the images only


def _eight_bit(path: Path) -> None:
    ds = pydicom.dcmread(path)
    values = np.clip(ds.pixel_array, 0, 255).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelData = 8, 8, 7, values.tobytes()
    ds.save_as(path)


@pytest.mark.parametrize("change", ["PixelRepresentation", "BitsAllocated", "BitsStored", "PhotometricInterpretation"])
def test_images_that_disagree_on_the_pixel_encoding_are_refused(change, hu, tmp_path):
    files = by_position(write_series(tmp_path / "d", hu, SeriesSpec()))
    victim = files[4]
    if change == "BitsAllocated":  # an 8-bit slice: every slice would have been cast to uint8
        _eight_bit(victim)
    else:  # a signed slice (its negatives wrapped), a 12-bit one, an inverted one
        edit(victim, **{change: {"PixelRepresentation": 1, "BitsStored": 12, "PhotometricInterpretation": "MONOCHROME1"}[change]})
    line = refused(tmp_path / "d", "disagree on BitsAllocated/BitsStored/PixelRepresentation/PhotometricInterpretation",
                   "7 x 16/16/0/MONOCHROME2", str(victim))
    assert "1 x " in line


def test_a_colour_image_series_is_refused(hu, tmp_path):
    for f in write_series(tmp_path / "d", hu, SeriesSpec()):
        edit(f, PhotometricInterpretation="PALETTE COLOR")
    refused(tmp_path / "d", "PhotometricInterpretation PALETTE COLOR")


# -- what cannot be read inside the input ---------------------------------------------------------------


def test_an_unlistable_subfolder_is_refused_naming_it(hu, tmp_path, monkeypatch):
    """The first slice of the stack in a folder that cannot be listed: no gap shows (it was
    silently a volume one slice short); now the folder is named."""
    files = by_position(write_series(tmp_path / "d", hu, SeriesSpec()))
    hidden = tmp_path / "d" / "private"
    hidden.mkdir()
    files[0].rename(hidden / files[0].name)
    assert read_dicom_series(tmp_path / "d").shape == (*SHAPE[:2], SHAPE[2])  # readable: the whole stack
    scandir = os.scandir

    def denied(path):
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(dicom_files.os, "scandir", denied)
    refused(tmp_path / "d", f"cannot read {hidden} (Permission denied) inside the DICOM input", "may be incomplete")


def _without_root_privileges() -> list[str] | None:
    """A command prefix that runs a child without the power to read what its mode forbids."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]


def test_a_folder_without_read_permission_is_refused(hu, tmp_path):
    """The same with a real mode 0311 folder (root reads it anyway: the child drops that power)."""
    prefix = _without_root_privileges()
    if prefix is None:
        pytest.skip("running as root without setpriv")
    files = by_position(write_series(tmp_path / "d", hu, SeriesSpec()))
    hidden = tmp_path / "d" / "private"
    hidden.mkdir()
    files[-1].rename(hidden / files[-1].name)
    hidden.chmod(0o311)
    code = ("import sys\nfrom segvol_rt.io.dicom import read_dicom_series\nfrom segvol_rt.errors import SegVolError\n"
            "try:\n    read_dicom_series(sys.argv[1])\nexcept SegVolError as e:\n    print(e)\n")
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True,
                              timeout=120)
    finally:
        hidden.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert f"cannot read {hidden} (Permission denied) inside the DICOM input" in proc.stdout, proc.stdout


def test_a_broken_link_is_refused(hu, tmp_path):
    write_series(tmp_path / "d", hu, SeriesSpec())
    (tmp_path / "d" / "gone").symlink_to(tmp_path / "nowhere")
    refused(tmp_path / "d", f"cannot read {tmp_path / 'd' / 'gone'} (a broken symbolic link)")
    (tmp_path / "d" / "gone").unlink()
    assert read_dicom_series(tmp_path / "d").shape == SHAPE


def test_linked_folders_are_followed_once_and_loops_end(hu, tmp_path):
    files = by_position(write_series(tmp_path / "d", hu, SeriesSpec()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    files[0].rename(elsewhere / files[0].name)
    (tmp_path / "d" / "more").symlink_to(elsewhere)  # a slice behind a linked folder: read
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")  # a loop: listed once
    (tmp_path / "d" / "again").symlink_to(elsewhere / files[0].name)  # the same file twice: one image
    scan = read_dicom_series(tmp_path / "d")
    assert scan.shape == SHAPE


# -- degenerate geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing, needle", [(("0", "0"), "not positive"), (("-0.8", "0.8"), "not positive"),
                                             (("1e-30", "1e-30"), "degenerate")])
def test_degenerate_pixel_spacing_is_refused(spacing, needle, hu, tmp_path):
    for f in write_series(tmp_path / "d", hu, SeriesSpec()):
        edit(f, PixelSpacing=list(spacing))
    line = refused(tmp_path / "d", needle, "geometry is broken")
    with pytest.raises(SegVolError) as err:  # what SegVolRuntime.set_volume(DIR) reads through
        read_any(tmp_path / "d")
    assert str(err.value) == line


def test_degenerate_multiframe_spacing_is_refused(hu, tmp_path):
    [f] = write_series(tmp_path / "d", hu, SeriesSpec(multiframe=True))
    ds = pydicom.dcmread(f)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = ["1e-30", "1e-30"]
    ds.save_as(f)
    refused(tmp_path / "d", "degenerate")


# -- one SOPInstanceUID, several images -------------------------------------------------------------------


def test_one_sop_instance_uid_on_two_positions_is_refused(hu, tmp_path):
    files = by_position(write_series(tmp_path / "d", hu, SeriesSpec()))
    uid = pydicom.dcmread(files[2], stop_before_pixels=True).SOPInstanceUID
    edit(files[5], SOPInstanceUID=uid)
    line = refused(tmp_path / "d", f"SOPInstanceUID {uid} is shared by 2 images", str(files[2]), str(files[5]))
    assert "every image needs its own" in line


def test_a_copy_of_one_slice_is_refused(hu, tmp_path):
    files = write_series(tmp_path / "d", hu, SeriesSpec())
    (tmp_path / "d" / "backup").mkdir()
    shutil.copy(files[3], tmp_path / "d" / "backup" / "copy")
    refused(tmp_path / "d", "is shared by 2 images")


# -- every file read is an input ---------------------------------------------------------------------------


def test_every_file_read_is_an_input(hu, tmp_path):
    a = SeriesSpec(series_uid="1.2.826.0.1.3680043.8.498.2211")
    b = SeriesSpec(series_uid="1.2.826.0.1.3680043.8.498.2212")
    files_a = write_series(tmp_path / "d" / "a", hu, a)
    files_b = write_series(tmp_path / "d" / "b", hu[:, :, :5], b)
    (tmp_path / "d" / "notes.nii.gz").write_bytes(b"not DICOM")
    disc = discover(tmp_path / "d")
    [chosen] = [s for s in disc.series if s.uid == a.series_uid]
    inputs = dict((p, what) for what, p in disc.inputs(chosen))
    assert set(inputs) == {*files_a, *files_b, tmp_path / "d" / "notes.nii.gz"}
    assert {inputs[f] for f in files_a} == {"DICOM file"}
    assert {inputs[f] for f in files_b} == {f"DICOM file of series {b.series_uid}"}
    assert inputs[tmp_path / "d" / "notes.nii.gz"] == "file of the DICOM folder"
