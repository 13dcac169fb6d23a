"""napari layer data <-> scan space (segvol_rt.napari.prompts), without napari:
the layer transform reproduces the scan's affine, points and boxes become the
voxel indices `segvol-rt infer` takes, names and colours."""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.napari import prompts as NP


def test_layer_transform_reproduces_an_oblique_flipped_affine():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # a rotation with a flip
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    t = NP.layer_transform(affine)
    assert t.scale == pytest.approx((0.8, 0.9, 2.5))
    np.testing.assert_allclose(t.affine @ np.diag([*t.scale, 1.0]), affine, atol=1e-12)
    assert t.kwargs()["units"] == ("mm", "mm", "mm")


@pytest.mark.parametrize("bad", [np.eye(3), np.full((4, 4), np.nan), np.diag([1.0, 0.0, 1.0, 1.0])])
def test_layer_transform_refuses_a_bad_affine(bad):
    with pytest.raises(SegVolError):
        NP.layer_transform(bad)


def test_points_round_to_the_nearest_voxel_with_their_signs():
    pts = NP.point_prompt(np.array([[10.4, 20.6, 3.0], [1.0, 2.0, 2.5]]), [True, False])
    assert pts is not None
    assert pts.coords.tolist() == [[10, 21, 3], [1, 2, 2]]  # round half to even, as numpy
    assert pts.labels.tolist() == [1, 0]
    assert NP.point_prompt(np.zeros((0, 3)), []) is None
    with pytest.raises(SegVolError, match="signs"):
        NP.point_prompt(np.zeros((2, 3)), [True])
    with pytest.raises(SegVolError, match="finite"):
        NP.point_prompt(np.array([[np.nan, 0, 0]]), [True])


def _rect(axis: int, at: float, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """A rectangle drawn on the slice ``at`` of ``axis``, corners ``a`` and ``b`` in the other two axes."""
    other = [i for i in range(3) if i != axis]
    verts = np.zeros((4, 3))
    verts[:, axis] = at
    for n, (u, v) in enumerate([(a[0], a[1]), (a[0], b[1]), (b[0], b[1]), (b[0], a[1])]):
        verts[n, other[0]], verts[n, other[1]] = u, v
    return verts


def test_a_rectangle_and_a_slice_range_make_the_box():
    rect = _rect(2, 7.0, (10.2, 40.0), (30.0, 20.7))
    assert NP.box_prompt([rect]) == (10, 21, 7, 30, 40, 7)  # its own slice
    assert NP.box_prompt([rect], (3, 12)) == (10, 21, 3, 30, 40, 12)
    with pytest.raises(SegVolError, match="after"):
        NP.box_prompt([rect], (12, 3))


def test_two_rectangles_on_two_slices_are_two_corners():
    box = NP.box_prompt([_rect(0, 5.0, (1, 2), (8, 9)), _rect(0, 15.0, (3, 4), (6, 7))], (0, 0))
    assert box == (5, 1, 2, 15, 8, 9)  # the slice range does not apply
    assert NP.box_prompt([]) is None


def test_target_names_and_colours():
    assert NP.target_name("  liver ", None, None) == "liver"
    assert NP.target_name(None, (0, 0, 0, 1, 1, 1), None) == "box"
    pts = NP.point_prompt(np.zeros((1, 3)), [True])
    assert NP.target_name("", (0, 0, 0, 1, 1, 1), pts) == "box+points"
    with pytest.raises(SegVolError, match="no prompt"):
        NP.target_name(" ", None, None)
    colours = NP.label_rgba((255, 0, 51))
    assert colours[1] == (1.0, 0.0, 0.2, 1.0) and colours[0][3] == colours[None][3] == 0.0
