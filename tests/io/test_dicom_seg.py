"""DICOM SEG writer (segvol_rt.io.dicom_seg) on small synthetic series: empty and
overlapping targets, the read-back check catching a difference, refusals,
and dciodvfy on single- and multi-frame sources."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.io import dicom_seg as DS  # noqa: E402
from segvol_rt.io.dicom import read_dicom_series  # noqa: E402
from segvol_rt.io.nifti import read_scan  # noqa: E402
from tests.support.dicom_series import SeriesSpec, write_series  # noqa: E402
from tests.support.dicom_tools import dciodvfy, ensure_tools  # noqa: E402

ALGO = DS.Algorithm("0.1.0", "0" * 64)


@pytest.fixture(scope="module", params=[False, True], ids=["single-frame", "multi-frame"])
def scan(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    write_series(root / "dcm", make_phantom(5, (40, 36, 10)).image,
                 SeriesSpec(multiframe=request.param, slice_step=-2.0, row_cos=(-1.0, 0.0, 0.0)))
    return read_dicom_series(root / "dcm")


def _boxes(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros(shape, bool)
    a[5:20, 4:18, 2:6] = True
    b = np.zeros(shape, bool)
    b[15:30, 10:25, 4:9] = True  # overlaps a
    return a, b


def test_overlapping_and_empty_segments_round_trip(scan, tmp_path: Path) -> None:
    ensure_tools("dciodvfy")
    a, b = _boxes(scan.shape)
    empty = np.zeros(scan.shape, bool)
    data = DS.seg_bytes(scan, [a, b, empty], ["liver", "lesion", "spleen"], ALGO)
    (tmp_path / "s.dcm").write_bytes(data)
    assert dciodvfy(tmp_path / "s.dcm") == []
    ds = pydicom.dcmread(tmp_path / "s.dcm")
    assert len(ds.SegmentSequence) == 3 and ds.SegmentSequence[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    # the check reads the file back; decoding again by hand gives the same overlap
    import highdicom

    frames = DS._decode(highdicom.seg.segread(tmp_path / "s.dcm"), scan, 3)
    expected = DS._source_pixels(scan, [a, b, empty])
    assert np.array_equal(frames, expected) and (frames[..., 0] & frames[..., 1]).any()


def test_read_back_difference_is_an_error(scan) -> None:
    a, b = _boxes(scan.shape)
    data = DS.seg_bytes(scan, [a], ["liver"], ALGO)
    wrong = DS._source_pixels(scan, [b])
    with pytest.raises(SegVolError, match="differs from the masks written"):
        DS.check_seg(data, scan, wrong)
    with pytest.raises(SegVolError, match="does not read back"):
        DS.check_seg(data[: len(data) // 2], scan, wrong)


def test_seg_needs_a_dicom_scan(tmp_path: Path) -> None:
    path, _ = make_phantom(0, (32, 32, 8)).save(tmp_path / "ct.nii.gz")
    nifti = read_scan(path)
    with pytest.raises(SegVolError, match="needs a DICOM input"):
        DS.seg_bytes(nifti, [np.zeros(nifti.shape, bool)], ["liver"], ALGO)


def test_fractional_seg(scan, tmp_path: Path) -> None:
    ensure_tools("dciodvfy")
    p = np.zeros(scan.shape, np.float32)
    p[5:25, 4:20, 2:7] = np.linspace(0.0, 1.0, 20 * 16 * 5, dtype=np.float32).reshape(20, 16, 5)
    data = DS.seg_bytes(scan, [p], ["liver tumor"], ALGO, fractional=True)
    (tmp_path / "f.dcm").write_bytes(data)
    assert dciodvfy(tmp_path / "f.dcm") == []
    ds = pydicom.dcmread(tmp_path / "f.dcm")
    assert ds.SegmentationType == "FRACTIONAL" and int(ds.MaximumFractionalValue) == 255
    with pytest.raises(SegVolError, match=r"in \[0, 1\]"):
        DS.seg_bytes(scan, [p * 2], ["liver"], ALGO, fractional=True)


def test_series_described_by_targets_and_numbered_per_series(scan) -> None:
    a, b = _boxes(scan.shape)
    one = pydicom.dcmread(io.BytesIO(DS.seg_bytes(scan, [a, b], ["liver", "left kidney"], ALGO)))
    two = pydicom.dcmread(io.BytesIO(DS.seg_bytes(scan, [a], ["liver"], ALGO, description="run 2\\x")))
    assert one.SeriesDescription == "segvol-rt: liver, left kidney"
    assert two.SeriesDescription == "run 2 x"  # LO: no backslash
    assert one.SeriesNumber != two.SeriesNumber
    for ds in (one, two):
        assert DS.SERIES_NUMBER_MIN <= ds.SeriesNumber < 2**31 and ds.SeriesNumber == DS.series_number(ds.SeriesInstanceUID)
    assert DS.series_description(["liver"], fractional=True) == "segvol-rt probabilities: liver"
    assert len(DS.series_description(["a very long free phrase"] * 5)) == 64
    with pytest.raises(SegVolError, match="empty"):
        DS.series_description(["liver"], given=" \t ")
