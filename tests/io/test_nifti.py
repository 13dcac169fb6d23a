"""NIfTI input/output in scan space: values as nibabel/MONAI read them, exact
mask round trips, atomic writes, and a clear SegVolError for every bad file."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io.nifti import (
    parse_label_spec,
    read_label,
    read_scan,
    write_json_sidecar,
    write_mask,
)

AFFINE = np.array(
    [[0.0, -0.8, 0.0, 120.0], [0.7, 0.0, 0.0, -90.5], [0.0, 0.0, 2.5, 33.0], [0.0, 0.0, 0.0, 1.0]]
)


def _ct(shape=(20, 18, 7), dtype=np.int16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=shape).astype(dtype)


def _save(path, data, affine=AFFINE, slope=None, inter=None, dtype=None):
    img = nib.Nifti1Image(data, affine)
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def _monai_values(path) -> np.ndarray:
    """What MONAI's LoadImage gives the official pipeline: scaled dataobj, float32."""
    return np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64, np.int32])
def test_read_matches_nibabel(tmp_path, suffix, dtype):
    data = _ct(dtype=np.int16).astype(dtype) if dtype != np.uint8 else _ct().clip(0, 255).astype(np.uint8)
    path = _save(tmp_path / f"ct{suffix}", data)
    scan = read_scan(path)
    assert scan.shape == data.shape and scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, _monai_values(path))
    np.testing.assert_array_equal(scan.affine, nib.load(str(path)).affine)
    assert scan.data.flags.f_contiguous  # scan.data.T is C-ordered model space (k, j, i)
    assert scan.path == path and scan.spacing == pytest.approx((0.7, 0.8, 2.5))


def test_a_scan_without_voxels_keeps_what_the_writers_read(tmp_path):
    from segvol_rt.io.nifti import mask_bytes

    scan = read_scan(_save(tmp_path / "ct.nii.gz", _ct()))
    bare = scan.without_voxels()
    assert bare.shape == scan.shape and bare.spacing == scan.spacing and bare.nifti_header is scan.nifti_header
    np.testing.assert_array_equal(bare.affine, scan.affine)
    # no memory behind it, read-only, and NaN where a value is read by mistake
    assert bare.data.strides == (0, 0, 0) and not bare.data.flags.writeable and np.isnan(bare.data).all()
    mask = _ct(seed=1) > 0
    assert mask_bytes(mask, bare, gz=False) == mask_bytes(mask, scan, gz=False)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_applies_scaling_like_nibabel(tmp_path, suffix):
    path = _save(tmp_path / f"ct{suffix}", _ct(dtype=np.int16), slope=0.5, inter=-1024.0, dtype=np.int16)
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.data, _monai_values(path))
    np.testing.assert_allclose(scan.data, nib.load(str(path)).get_fdata(dtype=np.float32))


def test_big_endian_and_nifti2(tmp_path):
    data = _ct()
    img = nib.Nifti1Image(data.astype(">i2"), AFFINE)
    be = tmp_path / "be.nii.gz"
    nib.save(img, str(be))
    np.testing.assert_array_equal(read_scan(be).data, data.astype(np.float32))
    n2 = tmp_path / "n2.nii.gz"
    nib.save(nib.Nifti2Image(data, AFFINE), str(n2))
    scan = read_scan(n2)
    np.testing.assert_array_equal(scan.data, data.astype(np.float32))
    out = write_mask(tmp_path / "n2_mask.nii.gz", (data > 0).astype(np.uint8), scan)
    assert isinstance(nib.load(str(out)), nib.Nifti2Image)


def test_trailing_singleton_is_squeezed(tmp_path):
    data = _ct()[..., None]
    scan = read_scan(_save(tmp_path / "ct4d.nii.gz", data))
    assert scan.shape == data.shape[:3]
    out = write_mask(tmp_path / "m.nii.gz", np.ones(scan.shape, np.uint8), scan)
    assert nib.load(str(out)).shape == scan.shape


def test_multimember_gzip(tmp_path):
    """Some tools write concatenated gzip members; they decompress to one file."""
    plain = _save(tmp_path / "ct.nii", _ct()).read_bytes()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    np.testing.assert_array_equal(read_scan(path).data, _ct().astype(np.float32))


def test_real_ct(real_ct):
    scan = read_scan(real_ct)
    assert scan.shape == (122, 101, 30)
    np.testing.assert_array_equal(scan.data, _monai_values(real_ct))
    np.testing.assert_array_equal(scan.data.T.shape, (30, 101, 122))


# -- errors ---------------------------------------------------------------------
def _err(path, match):
    with pytest.raises(SegVolError, match=match):
        read_scan(path)


def test_missing_and_not_nifti(tmp_path):
    _err(tmp_path / "none.nii.gz", "does not exist")
    other = tmp_path / "ct.mha"
    other.write_bytes(b"x" * 400)
    _err(other, "not a NIfTI")
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"\0" * 10)
    _err(junk, "cannot read")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    _err(empty, "cannot read")


def test_truncated_and_corrupt_gzip(tmp_path):
    raw = _save(tmp_path / "ct.nii.gz", _ct(shape=(40, 40, 20))).read_bytes()
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    _err(truncated, "cannot read")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(raw[:200] + bytes(len(raw) - 400) + raw[-200:])
    _err(corrupt, "cannot read")
    short = tmp_path / "short.nii"
    short.write_bytes(gzip.decompress(raw)[:5000])
    _err(short, "cannot read")


def test_wrong_dimensions(tmp_path):
    _err(_save(tmp_path / "2d.nii.gz", _ct(shape=(20, 18))), "3D volume")
    _err(_save(tmp_path / "4d.nii.gz", _ct(shape=(20, 18, 7, 2))), "3D volume")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path, bad):
    data = _ct().astype(np.float32)
    data[3, 4, 5] = bad
    _err(_save(tmp_path / "nan.nii.gz", data), "1 NaN or infinite")


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_constant(tmp_path, dtype):
    _err(_save(tmp_path / "const.nii.gz", np.full((8, 8, 8), -1024, dtype)), "constant")


# -- writing --------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_mask_round_trip(tmp_path, suffix):
    scan = read_scan(_save(tmp_path / "ct.nii.gz", _ct(), slope=2.0, inter=-5.0, dtype=np.int16))
    mask = np.asfortranarray(np.random.default_rng(1).integers(0, 3, scan.shape).astype(np.uint8))
    out = write_mask(tmp_path / "sub" / f"mask{suffix}", mask, scan, extra_header={"descrip": "liver"})
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8 and img.shape == scan.shape
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask)  # exact: no scaling
    assert img.header.get_slope_inter() in ((None, None), (1.0, 0.0))
    np.testing.assert_array_equal(img.affine, scan.affine)
    for key in ("qform_code", "sform_code", "pixdim"):
        np.testing.assert_array_equal(img.header[key], scan.nifti_header[key])
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"liver"
    assert sorted(p.name for p in out.parent.iterdir()) == [f"mask{suffix}"]  # no temp files


def test_mask_from_bool_and_c_order(tmp_path):
    scan = read_scan(_save(tmp_path / "ct.nii", _ct()))
    mask = np.ascontiguousarray(scan.data > 0)
    out = write_mask(tmp_path / "m.nii.gz", mask, scan)
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), mask.astype(np.uint8))


def test_write_real_mask_keeps_header(tmp_path, real_ct):
    scan = read_scan(real_ct)
    out = write_mask(tmp_path / "m.nii.gz", (scan.data > 0).T.T, scan)
    img = nib.load(str(out))
    np.testing.assert_array_equal(img.affine, scan.affine)
    assert int(img.header["sform_code"]) == int(scan.nifti_header["sform_code"])


def test_write_mask_errors(tmp_path):
    path = _save(tmp_path / "ct.nii.gz", _ct())
    scan = read_scan(path)
    ok = np.zeros(scan.shape, np.uint8)
    with pytest.raises(SegVolError, match="overwrite the input"):
        write_mask(path, ok, scan)
    with pytest.raises(SegVolError, match="overwrite the input"):
        write_mask(tmp_path / "." / "ct.nii.gz", ok, scan)
    with pytest.raises(SegVolError, match="shape"):
        write_mask(tmp_path / "m.nii.gz", np.zeros((2, 2, 2), np.uint8), scan)
    with pytest.raises(SegVolError, match="boolean or integer"):
        write_mask(tmp_path / "m.nii.gz", ok.astype(np.float32), scan)
    with pytest.raises(SegVolError, match="0..255"):
        write_mask(tmp_path / "m.nii.gz", ok.astype(np.int16) - 1, scan)
    with pytest.raises(SegVolError, match=".nii or .nii.gz"):
        write_mask(tmp_path / "m.png", ok, scan)
    with pytest.raises(SegVolError, match="not a NIfTI header field"):
        write_mask(tmp_path / "m.nii.gz", ok, scan, extra_header={"colour": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    scan = read_scan(_save(tmp_path / "ct.nii.gz", _ct()))
    out = write_mask(tmp_path / "m.nii.gz", np.zeros(scan.shape, np.uint8), scan)
    before = out.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("segvol_rt.io.atomic.os.replace", boom)
    with pytest.raises(SegVolError, match="cannot write .*disk full"):
        write_mask(out, np.ones(scan.shape, np.uint8), scan)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "m.nii.gz"]


def test_json_sidecar(tmp_path):
    obj = {"target": "liver", "dice": np.float32(0.5), "box": np.arange(3), "n": np.int64(2)}
    out = write_json_sidecar(tmp_path / "m.json", obj)
    assert json.loads(out.read_text()) == {"target": "liver", "dice": 0.5, "box": [0, 1, 2], "n": 2}
    with pytest.raises(SegVolError, match="JSON"):
        write_json_sidecar(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


# -- labels ---------------------------------------------------------------------
def test_parse_label_spec():
    assert parse_label_spec("seg.nii.gz:3") == (Path("seg.nii.gz"), 3)
    assert str(parse_label_spec("C:/data/seg.nii.gz:12")[0]) == "C:/data/seg.nii.gz"
    for bad, match in [("seg.nii.gz", "LABEL.nii.gz:ID"), ("seg.nii.gz:x", "not an integer"),
                       ("seg.nii.gz:0", "positive"), (":2", "LABEL.nii.gz:ID")]:
        with pytest.raises(SegVolError, match=match):
            parse_label_spec(bad)


def test_read_label(tmp_path):
    scan = read_scan(_save(tmp_path / "ct.nii.gz", _ct()))
    labels = np.zeros(scan.shape, np.uint8)
    labels[2:5, 3:6, 1:3] = 2
    path = _save(tmp_path / "seg.nii.gz", labels)
    got, label_id = read_label(f"{path}:2", scan)
    assert label_id == 2 and got.dtype.kind in "iu"
    np.testing.assert_array_equal(got, labels)
    with pytest.raises(SegVolError, match=r"label 7 does not occur .*labels present: 2"):
        read_label(f"{path}:7", scan)
    other = _save(tmp_path / "small.nii.gz", labels[:-1])
    with pytest.raises(SegVolError, match="shape"):
        read_label(f"{other}:2", scan)
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    moved = _save(tmp_path / "moved.nii.gz", labels, affine=shifted)
    with pytest.raises(SegVolError, match="affines"):
        read_label(f"{moved}:2", scan)
    floats = _save(tmp_path / "float.nii.gz", labels.astype(np.float32) + 0.5)
    with pytest.raises(SegVolError, match="non-integer"):
        read_label(f"{floats}:2")
    with pytest.raises(SegVolError, match="does not exist"):
        read_label(f"{tmp_path / 'nope.nii.gz'}:1")


def test_read_real_label(real_seg, real_ct):
    labels, label_id = read_label(f"{real_seg}:1", read_scan(real_ct))
    assert labels.shape == (122, 101, 30) and label_id == 1


def test_works_without_isal(tmp_path, monkeypatch):
    """isal only speeds up gzip; zlib gives the same bytes and values."""
    path = _save(tmp_path / "ct.nii.gz", _ct())
    fast = read_scan(path)
    monkeypatch.setitem(sys.modules, "isal", None)
    slow = read_scan(path)
    np.testing.assert_array_equal(slow.data, fast.data)
    out = write_mask(tmp_path / "m.nii.gz", (slow.data > 0).astype(np.uint8), slow)
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), (fast.data > 0).astype(np.uint8))
