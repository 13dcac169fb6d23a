"""The synthetic CT phantom: determinism, geometry, anatomy, orientation, NIfTI IO."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from segvol_rt.demo.phantom import PHANTOM_LABELS, Phantom, make_phantom, random_phantom
from segvol_rt.errors import SegVolError

SMALL = (96, 80, 24)  # non-square in-plane, so a swapped i/j would show
SPACING = (0.8, 0.9, 4.0)


def _world(p: Phantom, ijk) -> np.ndarray:
    return p.affine[:3, :3] @ np.asarray(ijk, float) + p.affine[:3, 3]


def test_same_seed_same_phantom_other_seed_other_phantom():
    a = make_phantom(5, SMALL, SPACING)
    b = make_phantom(5, SMALL, SPACING)
    c = make_phantom(6, SMALL, SPACING)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.image, c.image)


def test_shapes_dtypes_and_affine():
    p = make_phantom(0, SMALL, SPACING)
    assert p.image.shape == p.labels.shape == SMALL
    assert p.image.dtype == np.int16 and p.labels.dtype == np.uint8
    assert p.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(p.affine)[:3], SPACING)
    assert p.spacing == pytest.approx(SPACING)
    assert p.label_names == PHANTOM_LABELS
    assert set(np.unique(p.labels)) == {0, *PHANTOM_LABELS}
    assert p.image.min() >= -1024 and p.image.max() > 500  # air and bone are there
    assert nib.aff2axcodes(p.affine) == ("R", "A", "S")


def test_defaults():
    p = make_phantom(1)
    assert p.image.shape == (192, 192, 64) and p.spacing == pytest.approx((0.9, 0.9, 3.0))


def test_every_label_has_one_organ_model():
    from segvol_rt.demo.phantom_anatomy import _ORGANS

    assert sorted(organ.label for organ in _ORGANS) == sorted(PHANTOM_LABELS)


def test_label_names_are_plain_vocabulary():
    for name in PHANTOM_LABELS.values():
        assert name == name.strip().lower() and all(part.isalpha() for part in name.split(" "))
    assert {"liver", "spleen", "left kidney", "right kidney"} <= set(PHANTOM_LABELS.values())


@pytest.mark.parametrize("shape,spacing", [(SMALL, SPACING), ((128, 128, 40), (0.7, 0.7, 1.5)),
                                           ((160, 160, 60), (1.0, 1.0, 5.0))])
def test_every_organ_present_with_sensible_volume(shape, spacing):
    for seed in range(3):
        p = make_phantom(seed, shape, spacing)
        body = np.count_nonzero(p.image > -500)
        counts = {name: np.count_nonzero(p.labels == label)
                  for label, name in PHANTOM_LABELS.items()}
        assert min(counts.values()) >= 20, counts
        assert max(counts, key=counts.get) == "liver", counts
        assert 0.02 < counts["liver"] / body < 0.3, counts
        for name, n in counts.items():
            assert n / body < 0.1 or name == "liver", (name, n / body)


def _assert_inside_body(p: Phantom) -> None:
    """Every organ voxel has body tissue on both sides of it along i and along j."""
    tissue = p.image > -300
    organ = p.labels > 0
    for axis in (0, 1):
        n = tissue.shape[axis]
        first = np.argmax(tissue, axis=axis)
        last = n - 1 - np.argmax(np.flip(tissue, axis=axis), axis=axis)
        idx = np.indices(tissue.shape)[axis]
        lo, hi = np.expand_dims(first, axis), np.expand_dims(last, axis)
        assert np.all((idx[organ] > np.broadcast_to(lo, tissue.shape)[organ])
                      & (idx[organ] < np.broadcast_to(hi, tissue.shape)[organ]))
    # organs are tissue, not air (gas only in the stomach's cap)
    solid = organ & (p.labels != 7)
    assert np.mean(p.image[solid] > -300) > 0.999


def test_organs_inside_body():
    for seed in range(3):
        _assert_inside_body(make_phantom(seed, SMALL, SPACING))
    _assert_inside_body(make_phantom(3, SMALL, SPACING, orientation="LPS"))


def test_anatomy_sides_in_world_space():
    for orientation in ("RAS", "LPS"):
        p = make_phantom(2, SMALL, SPACING, orientation=orientation)
        x = {n: p.centroid(n, world=True) for n in PHANTOM_LABELS.values()}
        assert x["liver"][0] > x["spleen"][0]  # RAS+: the patient's right is +x
        assert x["right kidney"][0] > x["left kidney"][0]
        assert x["aorta"][1] < x["stomach"][1]  # the aorta is posterior
        assert x["bladder"][2] < x["liver"][2]  # the bladder is inferior


def test_lps_is_the_flip_of_ras_in_the_same_world():
    ras = make_phantom(4, SMALL, SPACING, orientation="RAS")
    lps = make_phantom(4, SMALL, SPACING, orientation="LPS")
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(lps.image, ras.image[::-1, ::-1, :])
    np.testing.assert_array_equal(lps.labels, ras.labels[::-1, ::-1, :])
    i, j, k = 10, 20, 5
    ni, nj, _ = SMALL
    np.testing.assert_allclose(_world(lps, (ni - 1 - i, nj - 1 - j, k)), _world(ras, (i, j, k)))
    np.testing.assert_allclose(lps.centroid("liver", world=True), ras.centroid("liver", world=True))
    # the liver is on the patient's right: high i stored RAS, low i stored LPS
    assert ras.centroid("liver")[0] > ni / 2 > lps.centroid("liver")[0]


def test_other_axis_flips_keep_world_positions():
    ras = make_phantom(4, SMALL, SPACING)
    for code in ("LAS", "RPI"):
        p = make_phantom(4, SMALL, SPACING, orientation=code)
        assert "".join(nib.aff2axcodes(p.affine)) == code
        np.testing.assert_allclose(p.centroid("spleen", world=True),
                                   ras.centroid("spleen", world=True))


def test_organ_subset_leaves_the_rest_unchanged():
    full = make_phantom(7, SMALL, SPACING)
    sub = make_phantom(7, SMALL, SPACING, organs=["liver", 2])
    assert sub.label_names == {1: "liver", 2: "spleen"}
    assert set(np.unique(sub.labels)) == {0, 1, 2}
    # in the full phantom later organs paint over these two, never the other way
    for label in (1, 2):
        assert np.all(sub.labels[full.labels == label] == label)
        assert np.count_nonzero(full.labels == label) > 0.8 * np.count_nonzero(sub.labels == label)


def test_random_phantom_is_seeded_and_in_range():
    a = random_phantom(np.random.default_rng(11), slices=(20, 40), pixels=(64, 96))
    b = random_phantom(np.random.default_rng(11), slices=(20, 40), pixels=(64, 96))
    np.testing.assert_array_equal(a.image, b.image)
    rng = np.random.default_rng(12)
    for _ in range(4):
        p = random_phantom(rng, slices=(20, 40), pixels=(64, 96))
        ni, nj, nk = p.image.shape
        assert 64 <= ni == nj <= 96 and 20 <= nk <= 40
        sx, sy, sz = p.spacing
        assert 0.7 <= sx == sy <= 1.0 and 1.5 <= sz <= 5.0
        assert p.orientation in ("RAS", "LPS")
        assert "".join(nib.aff2axcodes(p.affine)) == p.orientation


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_save_load_round_trip(tmp_path, suffix):
    p = make_phantom(8, SMALL, SPACING, orientation="LPS")
    image_path, label_path = p.save(tmp_path / f"ct{suffix}", tmp_path / f"seg{suffix}")
    img, seg = nib.load(image_path), nib.load(label_path)
    assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), p.image)
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), p.labels)
    np.testing.assert_allclose(img.affine, p.affine, atol=1e-4)
    np.testing.assert_allclose(seg.affine, p.affine, atol=1e-4)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([f"ct{suffix}", f"seg{suffix}"])


def test_save_image_only_and_bad_paths(tmp_path):
    p = make_phantom(8, SMALL, SPACING)
    assert p.save(tmp_path / "ct.nii.gz") == (tmp_path / "ct.nii.gz", None)
    with pytest.raises(SegVolError):
        p.save(tmp_path / "ct.png")
    with pytest.raises(SegVolError):
        p.save(tmp_path / "missing" / "ct.nii.gz")


@pytest.mark.parametrize("kwargs", [
    {"orientation": "XYZ"}, {"orientation": "RSA"}, {"shape": (10, 10, 10)}, {"shape": (64, 64)},
    {"spacing": (0.0, 1.0, 1.0)}, {"spacing": "abc"}, {"organs": ["brain"]}, {"organs": [42]},
])
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(SegVolError):
        make_phantom(0, **kwargs)


def test_bad_seed_is_a_user_error():
    with pytest.raises(SegVolError):
        make_phantom(-1)
    with pytest.raises(SegVolError):
        make_phantom("1")  # type: ignore[arg-type]
