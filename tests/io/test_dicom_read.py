"""DICOM series in (segvol_rt.io.dicom): voxel for voxel what Debian's dcm2niix
writes - the same array as nibabel reads it and the same affine within 1e-4 -
for synthetic pydicom series made from a phantom, in several orientations
(negated direction cosines, coronal, sagittal, oblique), descending slice
positions, rescale slopes, signed storage, a multi-frame file, compressed
transfer syntaxes; and every bad input as one SegVolError line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.io.dicom import read_dicom_series  # noqa: E402
from segvol_rt.io.nifti import read_scan  # noqa: E402
from segvol_rt.io.scans import read_any  # noqa: E402
from tests.support.dicom_series import SeriesSpec, dcm2niix, write_series  # noqa: E402
from tests.support.dicom_tools import ensure_tools  # noqa: E402

SHAPE = (48, 40, 12)  # (columns, rows, slices)
_C, _S = np.cos(0.35), np.sin(0.35)

CASES = {
    "axial": SeriesSpec(),
    "descending": SeriesSpec(slice_step=-2.5),
    "negated row cosine": SeriesSpec(row_cos=(-1.0, 0.0, 0.0)),
    "negated column cosine, descending": SeriesSpec(col_cos=(0.0, -1.0, 0.0), slice_step=-3.0),
    "coronal": SeriesSpec(row_cos=(1.0, 0.0, 0.0), col_cos=(0.0, 0.0, -1.0)),
    "sagittal": SeriesSpec(row_cos=(0.0, 1.0, 0.0), col_cos=(0.0, 0.0, -1.0)),
    "oblique": SeriesSpec(row_cos=(_C, _S, 0.0), col_cos=(-_S * 0.8, _C * 0.8, 0.6)),
    "rescale slope": SeriesSpec(slope=0.37, intercept=-1100.5),
    "signed": SeriesSpec(signed=True, intercept=0.0),
    "multi-frame": SeriesSpec(multiframe=True),
    "multi-frame, descending, negated": SeriesSpec(multiframe=True, slice_step=-2.0, row_cos=(-1.0, 0.0, 0.0)),
    "RLE": SeriesSpec(transfer_syntax="1.2.840.10008.1.2.5"),
    "JPEG 2000 lossless": SeriesSpec(transfer_syntax="1.2.840.10008.1.2.4.90"),
}


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    return make_phantom(3, (SHAPE[0], SHAPE[1], 8 if SHAPE[2] < 8 else SHAPE[2])).image


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    ensure_tools("dcm2niix")


@pytest.mark.parametrize("case", list(CASES))
def test_same_as_dcm2niix(case: str, hu: np.ndarray, tmp_path: Path) -> None:
    spec = CASES[case]
    write_series(tmp_path / "dcm", hu, spec)
    ours = read_dicom_series(tmp_path / "dcm")
    [nii] = dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    ref = read_scan(nii)
    assert ours.shape == ref.shape
    assert ours.data.dtype == ref.data.dtype == np.float32
    assert np.array_equal(ours.data, ref.data)
    assert np.abs(ours.affine - ref.affine).max() < 1e-4
    assert np.allclose(ours.spacing, ref.spacing, atol=1e-4)
    # and in HU: the stored volume, rows reversed (dcm2niix's flip), in slice order along the normal
    k = slice(None, None, -1) if spec.slice_step < 0 else slice(None)
    assert np.allclose(ours.data[:, ::-1, k], np.round((hu - spec.intercept) / spec.slope) * np.float32(spec.slope)
                       + spec.intercept, atol=1e-3)


def test_jpeg_ls_decodes_to_the_uncompressed_values(hu: np.ndarray, tmp_path: Path) -> None:
    """dcm2niix (Debian build) has no JPEG-LS decoder: compare with the same series uncompressed."""
    write_series(tmp_path / "plain", hu, SeriesSpec())
    write_series(tmp_path / "jls", hu, SeriesSpec(transfer_syntax="1.2.840.10008.1.2.4.80"))
    assert np.array_equal(read_dicom_series(tmp_path / "jls").data, read_dicom_series(tmp_path / "plain").data)


def test_two_series_need_a_choice(hu: np.ndarray, tmp_path: Path) -> None:
    a = SeriesSpec(description="abdomen venous", series_uid="1.2.826.0.1.3680043.8.498.1001")
    b = SeriesSpec(description="abdomen arterial", series_uid="1.2.826.0.1.3680043.8.498.1002", slice_step=-2.5)
    write_series(tmp_path / "two" / "a", hu, a)
    write_series(tmp_path / "two" / "b", hu[:, :, :10], b)
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "two")
    line = str(err.value)
    assert "\n" not in line and "--series" in line
    assert f"{a.series_uid} (abdomen venous, CT, 12 slices)" in line
    assert f"{b.series_uid} (abdomen arterial, CT, 10 slices)" in line and "; " in line
    nii = dcm2niix(tmp_path / "two", tmp_path / "nii")
    for spec, n in ((a, 12), (b, 10)):
        scan = read_any(tmp_path / "two", series=spec.series_uid)
        assert scan.shape == (*SHAPE[:2], n)
        [ref] = [p for p in nii if p.name.startswith(spec.series_uid)]
        assert np.array_equal(scan.data, read_scan(ref).data)
    with pytest.raises(SegVolError, match="is not in"):
        read_dicom_series(tmp_path / "two", series="1.2.3")


def test_non_image_objects_and_other_files_are_ignored(hu: np.ndarray, tmp_path: Path) -> None:
    write_series(tmp_path / "d", hu, SeriesSpec())
    (tmp_path / "d" / "notes.txt").write_text("not DICOM")
    scan = read_dicom_series(tmp_path / "d")
    assert any("non-DICOM" in n and "notes.txt" in n for n in scan.notes)
    # our own SEG from an earlier run sits in the folder: still one CT series
    from segvol_rt.io.dicom_seg import Algorithm, seg_bytes

    mask = np.zeros(scan.shape, bool)
    mask[10:20, 10:20, 3:6] = True
    (tmp_path / "d" / "seg.dcm").write_bytes(seg_bytes(scan, [mask], ["liver"], Algorithm("0", None)))
    assert read_dicom_series(tmp_path / "d").shape == scan.shape


def test_anonymised_uids_fall_back_with_notes(hu: np.ndarray, tmp_path: Path) -> None:
    import pydicom

    files = write_series(tmp_path / "d", hu, SeriesSpec())
    for f in files:
        ds = pydicom.dcmread(f)
        for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, key, "")
        ds.save_as(f)
    scan = read_dicom_series(tmp_path / "d")
    notes = " | ".join(scan.notes)
    assert "no SOPInstanceUID in the dataset; using the file meta's" in notes
    assert "no SOPClassUID in the dataset" in notes
    assert "no SeriesInstanceUID; generated" in notes and "no StudyInstanceUID; generated" in notes
    assert {str(ds.SOPInstanceUID) for ds in scan.source_datasets()} == {str(pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID)
                                                                         for f in files}
    assert read_dicom_series(tmp_path / "d").series.uid == scan.series.uid  # generated the same way again
    study = scan.source_datasets()[0].StudyInstanceUID
    assert study and study != scan.series.uid


def test_non_uniform_spacing_and_frames_of_reference(hu: np.ndarray, tmp_path: Path) -> None:
    import pydicom

    files = _positions(write_series(tmp_path / "d", hu, SeriesSpec()))
    for z, f in files[6:]:  # every slice from the 7th on moves up 1.2 mm: one gap of 3.7 mm where the others are 2.5
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], f"{z + 1.2:.4f}"]
        ds.save_as(f)
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert "non-uniform slice spacing: gaps from 2.500 to 3.700 mm" in _one_line(err)
    files = write_series(tmp_path / "f", hu, SeriesSpec())
    ds = pydicom.dcmread(files[0])
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.save_as(files[0])
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "f")
    assert "2 frames of reference" in _one_line(err)


# -- bad input: one line each ----------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def _positions(files: list[Path]) -> list[tuple[float, Path]]:
    import pydicom

    return sorted((float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), f) for f in files)


def test_missing_slice(hu: np.ndarray, tmp_path: Path) -> None:
    files = write_series(tmp_path / "d", hu, SeriesSpec())
    _positions(files)[5][1].unlink()
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert "missing slice" in _one_line(err) and "1 slice(s) missing" in str(err.value)


@pytest.mark.parametrize("slope", ["0", "NaN", "1e39"])
def test_unusable_rescale_is_one_line(slope: str, hu: np.ndarray, tmp_path: Path) -> None:
    """A zero or NaN slope scales nothing, and 1e39 takes the values beyond float32: one line each."""
    write_series(tmp_path / "d", hu, SeriesSpec(extra={"RescaleSlope": slope}))
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert "RescaleSlope" in _one_line(err) or "beyond float32" in _one_line(err)


def test_duplicate_positions(hu: np.ndarray, tmp_path: Path) -> None:
    import pydicom

    files = _positions(write_series(tmp_path / "d", hu, SeriesSpec()))
    ds = pydicom.dcmread(files[4][1])
    ds.ImagePositionPatient = pydicom.dcmread(files[3][1]).ImagePositionPatient
    ds.save_as(files[4][1])
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert "duplicate slice position" in _one_line(err)


@pytest.mark.parametrize("attr, value, message", [
    ("ImageOrientationPatient", ["0", "1", "0", "0", "0", "-1"], "mixed orientations"),
    ("PixelSpacing", ["0.5", "0.5"], "mixed pixel spacings"),
    ("RescaleSlope", "2", "vary between slices"),
])
def test_mixed_slices(attr: str, value: object, message: str, hu: np.ndarray, tmp_path: Path) -> None:
    import pydicom

    files = write_series(tmp_path / "d", hu, SeriesSpec())
    ds = pydicom.dcmread(files[2])
    setattr(ds, attr, value)
    ds.save_as(files[2])
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert message in _one_line(err)


def test_mixed_sizes(hu: np.ndarray, tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.2001"
    write_series(tmp_path / "d" / "a", hu[:, :, :6], SeriesSpec(series_uid=uid, frame_of_reference="1.2.3.4"))
    write_series(tmp_path / "d" / "b", hu[:40, :, 6:], SeriesSpec(series_uid=uid, frame_of_reference="1.2.3.4",
                                                                  origin=(-40.0, -35.0, 115.0)))
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert "mixed image sizes" in _one_line(err)


def test_gantry_tilt_is_refused(hu: np.ndarray, tmp_path: Path) -> None:
    import pydicom

    files = write_series(tmp_path / "d", hu, SeriesSpec())
    for z, f in _positions(files):  # shear: y drifts with z, as a tilted gantry acquires
        ds = pydicom.dcmread(f)
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.4f}", f"{y + 0.2 * (z - 100.0):.4f}", f"{z:.4f}"]
        ds.save_as(f)
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "d")
    assert "gantry tilt of about 11.31 degrees" in _one_line(err) and "refused" in str(err.value)


def test_no_ct_and_truncated_and_unsupported(hu: np.ndarray, tmp_path: Path) -> None:
    import pydicom
    from pydicom.encaps import encapsulate

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing")
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "empty")
    assert "no CT series" in _one_line(err)
    files = write_series(tmp_path / "trunc", hu, SeriesSpec())
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) - 500])
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "trunc")
    assert str(files[0]) in _one_line(err)
    files = write_series(tmp_path / "mpeg", hu, SeriesSpec())
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(SegVolError) as err:
        read_dicom_series(tmp_path / "mpeg")
    assert "cannot be decoded" in _one_line(err) and "supported:" in str(err.value)


def test_series_on_nifti_is_refused(tmp_path: Path) -> None:
    ph = make_phantom(0, (32, 32, 8))
    path, _ = ph.save(tmp_path / "ct.nii.gz")
    with pytest.raises(SegVolError, match="not a DICOM"):
        read_any(path, series="1.2.3")


def _random_spec(seed: int) -> SeriesSpec:
    """A random oblique orientation (or, every other seed, a signed axis permutation), slice step and spacing."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    row, col = q[:, 0], q[:, 1]
    if seed % 2:
        p, s = rng.permutation(3), rng.choice([-1.0, 1.0], size=2)
        row, col = np.eye(3)[p[0]] * s[0], np.eye(3)[p[1]] * s[1]
    step = float(rng.choice([-3.0, -1.25, 2.0, 5.0]))
    return SeriesSpec(row_cos=tuple(np.round(row, 6)), col_cos=tuple(np.round(col, 6)), slice_step=step,
                      pixel_spacing=(0.7, 1.3), multiframe=bool(seed % 3 == 0), seed=seed)


@pytest.mark.parametrize("seed", range(6))
def test_random_orientations_match_dcm2niix(seed: int, hu: np.ndarray, tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", hu[:24, :20, :7], _random_spec(seed))
    [nii] = dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    ours, ref = read_dicom_series(tmp_path / "dcm"), read_scan(nii)
    assert np.array_equal(ours.data, ref.data) and np.abs(ours.affine - ref.affine).max() < 1e-4


def test_legacy_converted_enhanced_ct(hu: np.ndarray, tmp_path: Path) -> None:
    """highdicom's legacy converter turns the classic series into one multi-frame file: the same scan, and dcm2niix agrees."""
    import highdicom as hd
    import pydicom

    files = write_series(tmp_path / "classic", hu, SeriesSpec(slice_step=-2.5, row_cos=(-1.0, 0.0, 0.0)))
    lce = hd.legacy.LegacyConvertedEnhancedCTImage([pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(),
                                                   series_number=7, sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "lce").mkdir()
    lce.save_as(tmp_path / "lce" / "lce.dcm")
    classic, multi = read_dicom_series(tmp_path / "classic"), read_dicom_series(tmp_path / "lce")
    assert np.array_equal(classic.data, multi.data) and np.array_equal(classic.affine, multi.affine)
    [nii] = dcm2niix(tmp_path / "lce", tmp_path / "nii")
    assert np.array_equal(multi.data, read_scan(nii).data)
