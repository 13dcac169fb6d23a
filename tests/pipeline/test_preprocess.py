"""segvol_rt.pipeline.preprocess against a plain re-derivation of the official
transforms (ForegroundNormalization, DimTranspose, MinMaxNormalization,
SpatialPad, CropForeground, Resize nearest-exact), plus timing on a full-size
volume (reported, not asserted)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.pipeline.preprocess import preprocess

SPATIAL = (16, 64, 64)


def ct_volume(shape, seed) -> np.ndarray:
    """CT-like HU values (the same generator as test_ops, which needs torch)."""
    rng = np.random.default_rng(seed)
    i = np.linspace(-1, 1, shape[0])[:, None, None]
    j = np.linspace(-1, 1, shape[1])[None, :, None]
    body = np.broadcast_to((i / 0.8) ** 2 + (j / 0.6) ** 2 < 1, shape)
    tissue = np.round(rng.normal(40.0, 120.0, size=shape))
    bone = rng.random(shape) < 0.02
    return np.where(body, np.where(bone, 1500.0, tissue), -1024.0).astype(np.float32)


def official_steps(scan: np.ndarray, spatial_size):
    """The official order written out plainly with numpy (padding materialised,
    foreground box from np.nonzero, end exclusive as MONAI's)."""
    stats = ops.foreground_stats(scan)
    lo, hi, mean, std = (np.float32(s) for s in stats)
    x = (np.clip(scan, lo, hi) - mean) / std
    x = np.swapaxes(x, 0, 2)
    x = x - x.min()
    x = x / np.float32(max(x.max(), np.float32(1e-8)))
    diff = [max(s - n, 0) for n, s in zip(x.shape, spatial_size)]
    padded = np.pad(x, [(d // 2, d - d // 2) for d in diff])
    nz = np.nonzero(padded > 0)
    start = [int(i.min()) for i in nz]
    end = [int(i.max()) + 1 for i in nz]
    crop = padded[start[0] : end[0], start[1] : end[1], start[2] : end[2]]
    return crop, ops.resize(crop, spatial_size, "nearest-exact"), start, [d // 2 for d in diff]


@pytest.mark.parametrize("shape", [(40, 36, 12), (70, 90, 20), (10, 5, 3)])
def test_preprocess_matches_the_official_steps(shape):
    scan = ct_volume(shape, 3)
    scan[:, :2] = -1024  # air rows: the foreground box is smaller than the volume
    out = preprocess(scan, SPATIAL)
    crop, zoom, start, before = official_steps(scan, SPATIAL)
    assert out.image.dtype == np.float32 and out.zoom_image.dtype == np.float32
    np.testing.assert_array_equal(out.image, crop)
    np.testing.assert_array_equal(out.zoom_image, zoom)
    assert out.zoom_image.shape == SPATIAL
    assert out.geometry.crop.start == tuple(start)
    assert out.geometry.pad.start == tuple(-b for b in before)
    assert out.geometry.crop.out_shape == crop.shape
    # the crop maps back onto the scan where it came from
    model = np.swapaxes(scan, 0, 2)
    b = out.geometry.crop_box
    back = out.geometry.crop_to_scan(np.ones(crop.shape, bool), fill=False)
    assert back.shape == scan.shape and back.sum() == crop.size
    np.testing.assert_array_equal(np.swapaxes(back, 0, 2)[b[0] : b[3] + 1, b[1] : b[4] + 1, b[2] : b[5] + 1], True)
    assert model.shape == out.geometry.model_shape


def test_preprocess_layouts_and_dtypes_agree():
    scan = ct_volume((30, 28, 14), 5)
    ref = preprocess(scan, SPATIAL)
    fortran = preprocess(np.asfortranarray(scan), SPATIAL)
    strides = fortran.image.strides  # nibabel's order: model space is C-ordered (the crop is a view of it)
    assert strides[2] == 4 and strides[0] > strides[1] > strides[2]
    np.testing.assert_allclose(fortran.image, ref.image, rtol=1e-5, atol=1e-6)  # float32 sums in another order
    as_int = preprocess(scan.astype(np.int16), SPATIAL)
    np.testing.assert_array_equal(as_int.image, ref.image)


def test_preprocess_overwrites_only_what_it_may():
    scan = np.asfortranarray(ct_volume((30, 28, 14), 5))
    kept = scan.copy(order="F")
    ref = preprocess(scan, SPATIAL)
    np.testing.assert_array_equal(scan, kept)  # the caller's array, untouched by default
    own = preprocess(scan, SPATIAL, overwrite_input=True)
    assert np.shares_memory(own.image, scan)  # normalised in place: no second scan-sized array
    np.testing.assert_array_equal(own.image, ref.image)
    np.testing.assert_array_equal(own.zoom_image, ref.zoom_image)
    assert own.stats == ref.stats
    frozen = kept.copy(order="F")
    frozen.flags.writeable = False  # e.g. np.frombuffer of bytes: never written, even when allowed
    out = preprocess(frozen, SPATIAL, overwrite_input=True)
    assert not np.shares_memory(out.image, frozen)
    np.testing.assert_array_equal(frozen, kept)
    np.testing.assert_array_equal(out.image, ref.image)


def test_preprocess_without_foreground_names_the_scan_values_even_in_place():
    mask = np.zeros((12, 12, 12), np.float32, order="F")
    mask[2:10, 2:10, 2:10] = 1  # a 0/1 mask: every voxel above the mean is 1
    with pytest.raises(SegVolError, match="values 0 to 1"):
        preprocess(mask, SPATIAL, overwrite_input=True)


def test_preprocess_with_reorientation_equals_preprocessing_the_reoriented_scan():
    orientations = pytest.importorskip("nibabel.orientations")
    scan = ct_volume((24, 30, 10), 6)
    lps = np.diag([-0.7, -0.7, 3.0, 1.0])
    out = preprocess(scan, SPATIAL, reorient="RAS", affine=lps)
    ornt = orientations.io_orientation(lps)
    ras = orientations.apply_orientation(scan, ornt)
    ref = preprocess(ras, SPATIAL)
    np.testing.assert_array_equal(out.image, ref.image)
    np.testing.assert_array_equal(out.zoom_image, ref.zoom_image)
    mask = out.geometry.crop_to_scan(np.ones(out.image.shape, np.uint8))
    assert mask.shape == scan.shape
    ref_mask = ref.geometry.crop_to_scan(np.ones(ref.image.shape, np.uint8))
    np.testing.assert_array_equal(orientations.apply_orientation(mask, ornt), ref_mask)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.full((8, 8, 8), 3, np.float32), "constant"),
        (np.zeros((8, 8)), "3D"),
        (np.zeros((0, 8, 8), np.float32), "empty"),
        (np.where(np.arange(512).reshape(8, 8, 8) == 5, np.nan, 1).astype(np.float32), "NaN"),
    ],
)
def test_preprocess_rejects_unusable_volumes(data, message):
    with pytest.raises(SegVolError, match=message):
        preprocess(data, SPATIAL)


def test_preprocess_argument_errors():
    scan = ct_volume((10, 10, 10), 1)
    with pytest.raises(SegVolError, match="affine"):
        preprocess(scan, SPATIAL, reorient="RAS")
    with pytest.raises(SegVolError, match="spatial_size"):
        preprocess(scan, (16, 64))


def _full_size_scan() -> np.ndarray:
    """512 x 512 x 200 CT-like volume in Fortran order (as nibabel loads it), made quickly."""
    shape = (512, 512, 200)
    rng = np.random.default_rng(0)
    i = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None, None]
    j = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :, None]
    body = (i / 0.8) ** 2 + (j / 0.6) ** 2 < 1
    scan = np.empty(shape, np.float32, order="F")
    scan[...] = rng.integers(-150, 250, size=shape[::-1], dtype=np.int16).T
    np.copyto(scan, np.float32(-1024), where=~body)
    return scan


def test_preprocess_timing_full_size(capsys):
    """Per-step times on a full-size scan, reported only (run with -s to see them)."""
    scan = _full_size_scan()
    times = {}
    t = time.perf_counter()
    stats = ops.foreground_stats(scan)
    times["stats"] = time.perf_counter() - t
    t = time.perf_counter()
    norm = ops.normalize_min_max(scan, stats)
    times["normalise+min-max"] = time.perf_counter() - t
    t = time.perf_counter()
    model = np.swapaxes(norm, 0, 2)
    box = ops.bounding_box(model > 0)
    times["foreground box"] = time.perf_counter() - t
    t = time.perf_counter()
    crop = model[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1]
    ops.resize(crop, (32, 256, 256), "nearest-exact")
    times["zoom-out resize"] = time.perf_counter() - t
    t = time.perf_counter()
    out = preprocess(scan, (32, 256, 256))
    times["preprocess() total"] = time.perf_counter() - t
    with capsys.disabled():
        print("\npreprocess 512x512x200:", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))
    assert out.zoom_image.shape == (32, 256, 256)
