"""segvol_rt.pipeline.geometry: every step and the whole chain undo themselves exactly,
points and boxes move with the volumes, and the zoom follows the official
resizes."""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.pipeline.geometry import Geometry, Reorient, SwapAxes, Window, Zoom

nib_orient = pytest.importorskip("nibabel.orientations")


def _rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q


def affines(rng):
    """RAS, LPS, a permuted LAS-like frame and oblique ones."""
    ras = np.diag([0.8, 0.8, 2.5, 1.0])
    lps = np.diag([-0.7, -0.7, 3.0, 1.0])
    perm = np.zeros((4, 4))
    perm[0, 2], perm[1, 0], perm[2, 1], perm[3, 3] = -1.5, 0.9, 0.9, 1
    out = [ras, lps, perm]
    for _ in range(3):
        a = np.eye(4)
        a[:3, :3] = _rotation(rng) @ np.diag(rng.uniform(0.5, 3, 3))
        a[:3, 3] = rng.uniform(-100, 100, 3)
        out.append(a)
    return out


def _random_box(rng, shape):
    lo = [int(rng.integers(0, n)) for n in shape]
    hi = [int(rng.integers(a, n)) for a, n in zip(lo, shape)]
    return tuple(lo + hi)


def _box_volume(box, shape):
    v = np.zeros(shape, bool)
    v[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = True
    return v


def _marked(points, shape):
    v = np.zeros(shape, np.int32)
    for n, p in enumerate(points, start=1):
        v[tuple(p)] = n
    return v


# -- single steps --------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["RAS", "LPS", "SLA"])
def test_reorient_matches_nibabel_and_inverts(codes):
    rng = np.random.default_rng(0)
    for affine in affines(rng):
        shape = tuple(int(v) for v in rng.integers(2, 9, 3))
        step = Reorient.from_affine(affine, shape, codes)
        vol = rng.integers(0, 5, shape)
        ornt = nib_orient.ornt_transform(nib_orient.io_orientation(affine), nib_orient.axcodes2ornt(tuple(codes)))
        out = step.forward_volume(vol)
        np.testing.assert_array_equal(out, nib_orient.apply_orientation(vol, ornt))
        assert out.shape == step.out_shape
        np.testing.assert_array_equal(step.inverse_volume(out), vol)
        _check_points_follow_volume(step, rng, shape)


def _check_points_follow_volume(step, rng, shape):
    pts = np.stack([rng.integers(0, n, 12) for n in shape], axis=1)
    pts = np.unique(pts, axis=0)
    marked = _marked(pts, shape)
    moved = step.forward_volume(marked)
    mapped = step.forward_points(pts)
    np.testing.assert_allclose(step.inverse_points(mapped), pts)
    for n, q in enumerate(np.rint(mapped).astype(int), start=1):
        if all(0 <= a < m for a, m in zip(q, moved.shape)):
            assert moved[tuple(q)] == n
        else:
            assert n not in moved
    box = _random_box(rng, shape)
    assert step.forward_box(box) == ops.bounding_box(step.forward_volume(_box_volume(box, shape)))


def test_swap_axes_is_its_own_inverse():
    rng = np.random.default_rng(1)
    step = SwapAxes((4, 6, 9))
    v = rng.random((4, 6, 9))
    assert step.forward_volume(v).shape == (9, 6, 4)
    np.testing.assert_array_equal(step.inverse_volume(step.forward_volume(v)), v)
    _check_points_follow_volume(step, rng, (4, 6, 9))


def test_pad_follows_monai_spatial_pad():
    step = Window.pad((10, 300, 255), (32, 256, 256))
    assert step.out_shape == (32, 300, 256)
    assert step.pad_width == ((11, 11), (0, 0), (0, 1))
    v = np.random.default_rng(2).random((10, 300, 255)).astype(np.float32)
    padded = step.forward_volume(v)
    np.testing.assert_array_equal(padded, np.pad(v, step.pad_width))
    np.testing.assert_array_equal(step.inverse_volume(padded), v)
    _check_points_follow_volume(Window.pad((5, 6, 7), (8, 6, 10)), np.random.default_rng(3), (5, 6, 7))


def test_crop_window_round_trip_and_bounds():
    rng = np.random.default_rng(4)
    for _ in range(10):
        shape = tuple(int(v) for v in rng.integers(3, 15, 3))
        box = _random_box(rng, shape)
        step = Window.crop(shape, box)
        v = rng.integers(1, 9, shape)
        cropped = step.forward_volume(v)
        np.testing.assert_array_equal(cropped, v[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1])
        back = step.inverse_volume(cropped, fill=0)
        np.testing.assert_array_equal(back, np.where(_box_volume(box, shape), v, 0))
        np.testing.assert_array_equal(step.forward_volume(back), cropped)
        _check_points_follow_volume(step, rng, shape)
    with pytest.raises(SegVolError):
        Window.crop((4, 4, 4), (0, 0, 0, 4, 3, 3))


# -- zoom ---------------------------------------------------------------------------------


def test_zoom_boxes_equal_boxes_of_resized_binary_cubes():
    rng = np.random.default_rng(5)
    for _ in range(200):
        crop = tuple(int(v) for v in rng.integers(1, 60, 3))
        out = tuple(int(v) for v in rng.integers(1, 40, 3))
        step = Zoom(crop, out)
        box = _random_box(rng, crop)
        assert step.forward_box(box) == ops.bounding_box(ops.resize(_box_volume(box, crop), out, "nearest-exact"))
        zbox = _random_box(rng, out)
        assert step.inverse_box(zbox) == ops.bounding_box(ops.resize(_box_volume(zbox, out), crop, "nearest"))


def test_zoom_point_convention():
    rng = np.random.default_rng(6)
    for _ in range(50):
        crop = tuple(int(v) for v in rng.integers(1, 500, 3))
        out = tuple(int(v) for v in rng.integers(1, 300, 3))
        step = Zoom(crop, out)
        c = np.stack([rng.integers(0, n, 20) for n in crop], axis=1)
        z = step.crop_to_zoom_index(c)
        # the zoom voxel's extent [z * in / out, (z + 1) * in / out) holds the crop voxel centre
        inn, o = np.asarray(crop), np.asarray(out)
        assert np.all(2 * z * inn <= (2 * c + 1) * o) and np.all((2 * c + 1) * o < 2 * (z + 1) * inn)
        # ... which is the continuous map rounded half up
        offset = step.forward_points(c) + 0.5 - z
        assert np.all(offset > -1e-9) and np.all(offset < 1 + 1e-9)
        np.testing.assert_allclose(step.inverse_points(step.forward_points(c)), c, atol=1e-9)


def test_zoom_index_back_is_the_nearest_exact_source():
    rng = np.random.default_rng(7)
    for _ in range(20):
        crop = tuple(int(v) for v in rng.integers(1, 40, 3))
        out = tuple(int(v) for v in rng.integers(1, 40, 3))
        step = Zoom(crop, out)
        zz = np.stack([rng.integers(0, n, 20) for n in out], axis=1)
        src = step.zoom_to_crop_index(zz)
        picked = ops.resize(np.arange(np.prod(crop)).reshape(crop), out, "nearest-exact")[tuple(zz.T)]
        np.testing.assert_array_equal(np.ravel_multi_index(tuple(src.T), crop), picked)


# -- the chain -------------------------------------------------------------------------------


def _geometry(rng, spatial=(8, 16, 16), reorient=None):
    shape = tuple(int(v) for v in rng.integers(3, 24, 3))
    model = reorient.out_shape[::-1] if reorient else shape[::-1]
    box = _random_box(rng, model)
    return shape, Geometry.build(shape, box, spatial, reorient)


@pytest.mark.parametrize("with_reorient", [False, True])
def test_chain_round_trips_label_volumes(with_reorient):
    rng = np.random.default_rng(7)
    for affine in affines(rng):
        shape = tuple(int(v) for v in rng.integers(3, 24, 3))
        orient = Reorient.from_affine(affine, shape, "RAS") if with_reorient else None
        model = (orient.out_shape if orient else shape)[::-1]
        geo = Geometry.build(shape, _random_box(rng, model), (8, 16, 16), orient)
        labels = rng.integers(1, 7, shape).astype(np.uint8)
        crop = geo.volume(labels, "scan", "crop")
        assert crop.shape == geo.crop.out_shape
        back = geo.crop_to_scan(crop, fill=0)
        inside = geo.volume(np.ones(geo.crop.out_shape, bool), "crop", "scan", fill=False)
        np.testing.assert_array_equal(back, np.where(inside, labels, 0))
        np.testing.assert_array_equal(geo.volume(back, "scan", "crop"), crop)
        np.testing.assert_array_equal(geo.model_to_scan(geo.scan_to_model(labels)), labels)
        np.testing.assert_array_equal(geo.volume(geo.volume(labels, "scan", "padded"), "padded", "scan"), labels)
        assert geo.volume(crop, "crop", "zoom").shape == (8, 16, 16)
        # points and boxes move with the volume
        pts = np.stack([rng.integers(0, n, 10) for n in shape], axis=1)
        np.testing.assert_allclose(geo.points(geo.points(pts, "scan", "zoom"), "zoom", "scan"), pts, atol=1e-9)
        box = _random_box(rng, shape)
        expected = ops.bounding_box(geo.volume(_box_volume(box, shape), "scan", "crop"))
        assert geo.scan_to_crop_box(box) == expected
        assert geo.scan_to_model_box(box) == ops.bounding_box(geo.scan_to_model(_box_volume(box, shape)))
        zoom_box = geo.scan_to_zoom_box(box)
        assert zoom_box == (None if expected is None else geo.zoom.forward_box(expected))


def test_crop_to_model_pastes_at_the_crop_box():
    rng = np.random.default_rng(8)
    shape, geo = _geometry(rng)
    crop = rng.random(geo.crop.out_shape).astype(np.float32) + 1
    model = geo.crop_to_model(crop, fill=-1)
    assert model.shape == geo.model_shape
    b = geo.crop_box
    np.testing.assert_array_equal(model[b[0] : b[3] + 1, b[1] : b[4] + 1, b[2] : b[5] + 1], crop)
    assert (model == -1).sum() == model.size - crop.size


def test_geometry_rejects_unknown_spaces_and_bad_input():
    shape, geo = _geometry(np.random.default_rng(9))
    with pytest.raises(SegVolError):
        geo.points(np.zeros((1, 3)), "scan", "world")
    with pytest.raises(SegVolError):
        geo.points(np.zeros((3,)), "scan", "crop")
    with pytest.raises(SegVolError):
        Reorient.from_affine(np.zeros((4, 4)), (3, 3, 3))
    with pytest.raises(SegVolError):
        Reorient.from_affine(np.eye(4), (3, 3, 3), "RAX")
