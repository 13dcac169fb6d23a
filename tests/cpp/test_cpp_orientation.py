"""The C++ SDK's reorientation against the Python runtime's: nibabel's
io_orientation / ornt_transform over random (permuted, flipped, oblique,
anisotropic) affines and every target code, the voxel copies both ways, the
refusals in Python's words (degenerate affines, bad codes), and masks and
probabilities equal for the model's declared order, explicit codes and
``stored``."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from segvol_rt import SegVolRuntime
from segvol_rt.demo.phantom import make_phantom
from segvol_rt.errors import SegVolError
from segvol_rt.pipeline.geometry import Reorient
from tests.cpp import sdk

pytest.importorskip("nibabel")

CODES = ["".join(c) for p in itertools.permutations(("LR", "PA", "IS")) for c in itertools.product(*p)]


def _rotation(rng: np.random.Generator, oblique: float) -> np.ndarray:
    """A signed permutation, turned by a random rotation of up to ``oblique`` radians."""
    perm = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = rng.uniform(-oblique, oblique)
    turn = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    return turn @ perm


def _affines(n: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    for t in range(n):
        aff = np.eye(4)
        aff[:3, :3] = _rotation(rng, oblique=0.0 if t % 3 == 0 else 0.6) * rng.uniform(0.3, 5.0, size=3)
        aff[:3, 3] = rng.uniform(-300, 300, size=3)
        yield aff


def _ornt(hooks: ctypes.CDLL, affine: np.ndarray, dims, codes: str) -> tuple[tuple[int, int], ...] | str:
    ornt = (ctypes.c_longlong * 6)()
    err = ctypes.create_string_buffer(1024)
    aff = (ctypes.c_double * 16)(*np.ascontiguousarray(affine, np.float64).reshape(-1))
    status = hooks.svt_orientation(aff, (ctypes.c_longlong * 3)(*dims), codes.encode(), ornt, err, ctypes.c_size_t(len(err)))
    if status != 0:
        return err.value.decode()
    return tuple((int(ornt[2 * a]), int(ornt[2 * a + 1])) for a in range(3))


def test_orientation_equals_nibabel(cpp_build):
    hooks = sdk.hooks(cpp_build)
    dims = (7, 5, 3)
    rng = np.random.default_rng(11)
    for affine in _affines(300):
        codes = CODES[int(rng.integers(len(CODES)))]
        want = Reorient.from_affine(affine, dims, codes).ornt
        assert _ornt(hooks, affine, dims, codes) == want, (affine.tolist(), codes)


def test_reorient_volume_equals_numpy(cpp_build):
    hooks = sdk.hooks(cpp_build)
    dims = (6, 5, 4)
    vol = np.asfortranarray(np.arange(np.prod(dims), dtype=np.float32).reshape(dims))
    for affine, codes in zip(_affines(24, seed=3), itertools.cycle(CODES)):
        step = Reorient.from_affine(affine, dims, codes)
        want = np.asfortranarray(step.forward_volume(vol))
        got = np.zeros(want.shape, np.float32, order="F")
        aff = (ctypes.c_double * 16)(*affine.reshape(-1))
        shape = (ctypes.c_longlong * 3)(*dims)
        assert hooks.svt_reorient_volume(aff, shape, codes.encode(), vol.ctypes.data_as(ctypes.c_void_p),
                                         got.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(vol.size), 0) == 0
        np.testing.assert_array_equal(got, want)
        back = np.zeros(dims, np.float32, order="F")
        assert hooks.svt_reorient_volume(aff, shape, codes.encode(), got.ctypes.data_as(ctypes.c_void_p),
                                         back.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(vol.size), 1) == 0
        np.testing.assert_array_equal(back, vol)


@pytest.fixture(scope="module")
def python_runtime(demo_artifacts):
    return SegVolRuntime.load(demo_artifacts, backend="onnxruntime", device="cpu")


@pytest.mark.parametrize("affine", [
    np.diag([1.0, 0.0, 1.0, 1.0]),  # a zero spacing
    np.array([[1.0, 2, 0, 0], [2, 4, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),  # two parallel axes
    np.diag([1.0, 1.0, 1e-9, 1.0]),  # below the ratio Python calls degenerate
], ids=["zero-spacing", "parallel", "tiny"])
def test_degenerate_affine_refused_in_pythons_words(cpp_build, demo_artifacts, python_runtime, affine):
    ph = make_phantom(1201, (40, 40, 16))
    with pytest.raises(SegVolError) as py_err:
        python_runtime.set_volume(ph.image, affine)
    cc = sdk.CppRuntime(cpp_build, demo_artifacts)
    try:
        with pytest.raises(sdk.SdkError) as cc_err:
            cc.set_volume(ph.image, affine)
    finally:
        cc.close()
    assert cc_err.value.message == str(py_err.value)


@pytest.mark.parametrize("codes", ["RRS", "RA", "XYZ", "  "])
def test_bad_codes_refused_in_pythons_words(cpp_build, demo_artifacts, python_runtime, codes):
    ph = make_phantom(1202, (40, 40, 16))
    with pytest.raises(SegVolError) as py_err:
        python_runtime.set_volume(ph.image, ph.affine, reorient=codes)
    with pytest.raises(sdk.SdkError) as cc_err:
        sdk.CppRuntime(cpp_build, demo_artifacts, reorient=codes)
    assert cc_err.value.message == str(py_err.value)


@pytest.mark.parametrize("reorient", [None, "LPI", "stored"])
def test_masks_and_probabilities_equal_python(cpp_build, demo_artifacts, python_runtime, reorient):
    """An oblique LPS-stored phantom: each side reorients it (or not) the same way."""
    ph = make_phantom(1203, (80, 88, 40), orientation="LPS")
    affine = ph.affine.copy()
    affine[:3, :3] = _rotation(np.random.default_rng(5), 0.3) @ affine[:3, :3]
    python_runtime.set_volume(ph.image, affine, reorient=reorient)
    options = {} if reorient is None else {"reorient": reorient}
    cc = sdk.CppRuntime(cpp_build, demo_artifacts, **options)
    try:
        cc.set_volume(ph.image, affine)
        liver = np.argwhere(ph.labels == 1)
        box = (*map(int, liver.min(axis=0)), *map(int, liver.max(axis=0)))
        for req in ({"text": "liver"}, {"box": box}, {"points": [(*map(int, liver[len(liver) // 2]), 1)], "seed": 2}):
            want = python_runtime.segment(**req, probabilities=True)
            got = cc.segment_many([req], probabilities=True)[0]
            assert np.array_equal(np.asarray(want.mask), got.mask), (reorient, req)
            np.testing.assert_allclose(got.probabilities, np.asarray(want.probabilities), rtol=0, atol=1e-6)
            assert got.roi == tuple(want.roi.official)
    finally:
        cc.close()
