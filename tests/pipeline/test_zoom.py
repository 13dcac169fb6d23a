"""Zoom-out-zoom-in pieces: ROI, MONAI window plan, blending, window images and
window prompts, checked against the torch reference's independent versions."""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt.io import spec as S
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z

torch = pytest.importorskip("torch")
from segvol_rt.export.reference import official as R  # noqa: E402

WINDOW = (16, 64, 64)


def _logits_with_box(shape, lo, hi):
    x = np.full(shape, -3.0, np.float32)
    x[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = 2.0
    return x


@pytest.mark.parametrize(
    "shape,lo,hi",
    [
        ((16, 64, 64), (3, 10, 20), (5, 30, 21)),  # small blob: widened, clamped at 0
        ((40, 100, 90), (0, 0, 0), (0, 0, 0)),  # corner voxel
        ((40, 100, 90), (39, 99, 89), (39, 99, 89)),  # far corner: max clamps to the size
        ((40, 100, 90), (2, 5, 7), (35, 95, 80)),  # larger than the window
        ((20, 70, 70), (10, 35, 35), (10, 35, 35)),
    ],
)
def test_find_roi_matches_reference(shape, lo, hi):
    logits = _logits_with_box(shape, lo, hi)
    roi = Z.find_roi(logits, WINDOW)
    ref = R.roi_of(WINDOW, torch.from_numpy(logits))
    assert roi.official == tuple(ref)
    sl = tuple(slice(ref[a], ref[a + 3] + 1) for a in range(3))
    assert roi.shape == tuple(torch.zeros(shape)[sl].shape)


def test_find_roi_none():
    assert Z.find_roi(np.full((16, 64, 64), -1.0, np.float32), WINDOW) is None


@pytest.mark.parametrize(
    "roi_shape",
    [(16, 64, 64), (10, 40, 64), (17, 64, 65), (40, 150, 97), (8, 200, 30), (33, 64, 129)],
)
def test_plan_windows_matches_reference(roi_shape):
    plan = Z.plan_windows(roi_shape, WINDOW)
    padded = [max(s, w) for s, w in zip(roi_shape, WINDOW)]
    ref = R._window_slices(padded, WINDOW, R._scan_interval(padded, WINDOW, 0.5))
    assert [plan.slices(s) for s in plan.starts] == ref
    assert plan.padded_shape == tuple(padded)
    assert plan.pad_before == tuple(max(w - s, 0) // 2 for s, w in zip(roi_shape, WINDOW))


def test_blend_is_monai_average():
    plan = Z.plan_windows((10, 100, 64), WINDOW)
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal(WINDOW).astype(np.float32) for _ in plan.starts]
    out = Z.blend(plan, logits)
    assert out.shape == (10, 100, 64)
    total = np.zeros(plan.padded_shape)
    count = np.zeros(plan.padded_shape)
    for s, lg in zip(plan.starts, logits):
        total[plan.slices(s)] += lg
        count[plan.slices(s)] += 1
    want = (total / count)[plan.pad_before[0] : plan.pad_before[0] + 10]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_window_image_is_padded_roi_window():
    rng = np.random.default_rng(1)
    crop = rng.random((30, 90, 80)).astype(np.float32)
    roi = Z.find_roi(_logits_with_box(crop.shape, (25, 5, 10), (29, 80, 12)), WINDOW)
    plan = Z.plan_windows(roi.shape, WINDOW)
    padded = np.pad(crop[roi.slices], [(b, p - s - b) for b, p, s in zip(plan.pad_before, plan.padded_shape, roi.shape)])
    for start in plan.starts:
        key = Z.window_key(roi, plan, start)
        np.testing.assert_array_equal(Z.window_image(crop, key), padded[plan.slices(start)])


def test_window_prompts_reproduce_unpadded_map_quirk():
    """Box mode, one window, ROI thinner than the window: the box comes from the
    unpadded cube sliced with padded-space slices (official quirk)."""
    shape = (16, 64, 64)
    logits = _logits_with_box(shape, (0, 20, 20), (2, 40, 40))  # ROI d-extent 2+7+1 = 10 < 16
    target = Z.Target(None, (0, 20, 20, 2, 40, 40), None)
    plan = Z.plan_zoom_in(target, logits, WINDOW, shape)
    assert len(plan.windows) == 1 and plan.plan.pad_before[0] > 0
    coords, labels = plan.windows[0].coords, plan.windows[0].labels
    assert labels.tolist() == [S.LABEL_BOX_MIN, S.LABEL_BOX_MAX]
    # unpadded cube indices: d starts at 0 although the window pads 3 voxels before
    assert coords[0].tolist() == [0, 20 - plan.roi.lo[1], 20 - plan.roi.lo[2]]


def test_aligned_window_prompts_sit_on_the_padded_window():
    """The same case with ``window_prompts="aligned"``: the box is the cube's box
    in the padded window, i.e. shifted by the padding, on the voxels it marks."""
    shape = (16, 64, 64)
    logits = _logits_with_box(shape, (0, 20, 20), (2, 40, 40))
    target = Z.Target(None, (0, 20, 20, 2, 40, 40), None)
    official = Z.plan_zoom_in(target, logits, WINDOW, shape)
    aligned = Z.plan_zoom_in(target, logits, WINDOW, shape, "aligned")
    pad = np.array(aligned.plan.pad_before)
    np.testing.assert_array_equal(aligned.windows[0].coords, official.windows[0].coords + pad)
    window = np.zeros(WINDOW, np.uint8)  # the cube as the padded window image holds it
    cube = Z.pad_like_roi(P.binary_cube(target.box_zoom, shape)[aligned.roi.slices], aligned.plan)
    window[...] = cube[aligned.plan.slices(aligned.plan.starts[0])]
    assert P.generate_box(window) == tuple(int(v) for v in aligned.windows[0].coords.reshape(-1))


def test_window_prompts_agree_when_the_roi_fills_the_window():
    shape = (32, 128, 128)
    logits = _logits_with_box(shape, (2, 10, 10), (30, 120, 100))
    pts = P.Points([[5, 20, 20], [10, 30, 30]], [1, 1])
    for target in (Z.Target(None, (2, 10, 10, 30, 120, 100), None), Z.Target(None, None, pts, seed=1)):
        official = Z.plan_zoom_in(target, logits, WINDOW, shape)
        aligned = Z.plan_zoom_in(target, logits, WINDOW, shape, "aligned")
        assert official.plan.pad_before == (0, 0, 0)
        for a, b in zip(official.windows, aligned.windows):
            np.testing.assert_array_equal(a.coords, b.coords)


def test_unknown_window_prompts_is_refused():
    from segvol_rt.errors import SegVolError
    from segvol_rt.runtime import Request

    with pytest.raises(SegVolError, match="window prompts"):
        Request(text="liver", window_prompts="shifted")


def test_point_window_prompts_use_global_box_and_seeded_points():
    shape = (32, 128, 128)
    logits = _logits_with_box(shape, (2, 10, 10), (30, 120, 100))
    pts = P.Points([[5, 20, 20], [10, 30, 30]], [1, 1])
    target = Z.Target(np.zeros(4, np.float32), None, pts, seed=3)
    plan = Z.plan_zoom_in(target, logits, WINDOW, (16, 64, 64))
    assert len(plan.windows) > 1
    for w in plan.windows:
        kinds = w.labels.tolist()
        assert kinds[-3:] == [S.LABEL_BOX_MIN, S.LABEL_BOX_MAX, S.LABEL_TEXT]
        assert len(kinds) in (4, 8)  # 1 pad point, or 1 + 4 points
    again = Z.plan_zoom_in(target, logits, WINDOW, (16, 64, 64))
    assert all(np.array_equal(a.coords, b.coords) for a, b in zip(plan.windows, again.windows))


def test_prompt_maps_are_the_official_resize_sliced_to_the_roi():
    from segvol_rt import ops

    crop_shape, zoom_shape = (37, 150, 101), (16, 64, 64)
    roi = Z.find_roi(_logits_with_box(crop_shape, (5, 30, 20), (30, 140, 60)), WINDOW)
    pts = P.Points([[3, 10, 10], [12, 50, 40], [8, 8, 8]], [1, 1, 0])
    target = Z.Target(None, (2, 5, 6, 12, 40, 50), pts)
    cube, point_map = Z.prompt_maps(target, zoom_shape, crop_shape, roi)
    full_cube = ops.resize(P.binary_cube(target.box_zoom, zoom_shape), crop_shape, "nearest")
    full_points = ops.resize(P.binary_points(pts, zoom_shape), crop_shape, "nearest")
    np.testing.assert_array_equal(cube, full_cube[roi.slices])
    np.testing.assert_array_equal(point_map, full_points[roi.slices])
    cube_zoom = torch.from_numpy(P.binary_cube(target.box_zoom, zoom_shape)).float()[None, None]
    ref = torch.nn.functional.interpolate(cube_zoom, size=crop_shape, mode="nearest")[0, 0]
    np.testing.assert_array_equal(cube, ref.numpy()[roi.slices])


def test_to_host_copies_device_arrays():
    class DeviceArray:
        __cuda_array_interface__ = {}

        def get(self):
            return np.ones(2)

    assert Z.to_host(DeviceArray()).tolist() == [1, 1]
    assert Z.to_host([1, 2]).tolist() == [1, 2]
