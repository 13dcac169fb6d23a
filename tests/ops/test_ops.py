"""segvol_rt.ops against torch (resizes, sigmoid rule), against the official
numpy 1.x results (normalisation) and against MONAI's sliding-window rules."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from segvol_rt import ops
from segvol_rt.ops import dispatch, interpolate
from segvol_rt.ops import numpy1 as N

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_resize(x: np.ndarray, size, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t, size=tuple(size), mode=mode, **kwargs)[0, 0].numpy()


def _fma_kernels() -> bool:
    """torch's x86 CPU kernels contract multiply-adds into FMAs except in the scalar DEFAULT build."""
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


needs_fma_torch = pytest.mark.skipif(
    not _fma_kernels(), reason="torch runs its scalar DEFAULT CPU kernels (no FMA); ops follows the AVX2/AVX512 ones"
)

# -- resize -------------------------------------------------------------------------

SIZES = list(range(1, 41)) + [63, 64, 100, 127, 128, 255, 256, 257, 300, 333, 512, 513]


@pytest.mark.parametrize("mode", ["nearest", pytest.param("nearest-exact", marks=needs_fma_torch)])
def test_nearest_index_tables_match_torch(mode):
    rng = np.random.default_rng(0)
    pairs = [(n, o) for n in SIZES for o in SIZES] + [tuple(rng.integers(1, 1200, 2)) for _ in range(300)]
    for n, o in pairs:
        x = np.arange(n, dtype=np.float32).reshape(n, 1, 1)
        ref = _torch_resize(x, (o, 1, 1), mode)[:, 0, 0].astype(np.int64)
        np.testing.assert_array_equal(ops.nearest_source_index(int(n), int(o), mode), ref, err_msg=f"{mode} {n}->{o}")


@pytest.mark.parametrize("mode", ["nearest", pytest.param("nearest-exact", marks=needs_fma_torch)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, bool])
def test_nearest_resize_is_bit_exact_and_keeps_dtype(mode, dtype):
    rng = np.random.default_rng(1)
    for _ in range(40):
        shape = tuple(int(v) for v in rng.integers(1, 24, 3))
        size = tuple(int(v) for v in rng.integers(1, 50, 3))
        x = (rng.standard_normal(shape) * 50).astype(dtype)
        got = ops.resize(x, size, mode)
        ref = _torch_resize(x.astype(np.float32), size, mode)
        assert got.dtype == x.dtype and got.shape == size
        np.testing.assert_array_equal(got.astype(np.float32), ref)


def test_resize_crops_the_half_open_box_first():
    rng = np.random.default_rng(2)
    for _ in range(30):
        shape = tuple(int(v) for v in rng.integers(2, 30, 3))
        start = [int(rng.integers(0, n - 1)) for n in shape]
        stop = [int(rng.integers(a + 1, n + 1)) for a, n in zip(start, shape)]
        size = tuple(int(v) for v in rng.integers(1, 40, 3))
        x = rng.standard_normal(shape).astype(np.float32)
        crop = x[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
        for mode in ("nearest", "trilinear"):
            got = ops.resize(x, size, mode, box=tuple(start + stop))
            np.testing.assert_array_equal(got, ops.resize(crop, size, mode))
            np.testing.assert_allclose(got, _torch_resize(crop, size, mode), rtol=1e-6, atol=1e-7)


def test_resize_reads_any_memory_layout():
    x = np.random.default_rng(3).standard_normal((20, 30, 40)).astype(np.float32)
    views = [np.asfortranarray(x), x.transpose(2, 1, 0).copy().transpose(2, 1, 0), x[::-1].copy()[::-1]]
    for mode in ("nearest-exact", "trilinear"):
        ref = ops.resize(x, (9, 50, 17), mode)
        for v in views:
            got = ops.resize(v, (9, 50, 17), mode)
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("slab", [interpolate.PASS_CHUNK, 37])  # 37 elements: many slabs, a part-filled last one
def test_trilinear_matches_torch(slab, monkeypatch):
    monkeypatch.setattr(interpolate, "PASS_CHUNK", slab)
    rng = np.random.default_rng(4)
    exact = 0
    for _ in range(120):
        shape = tuple(int(v) for v in rng.integers(1, 20, 3))
        size = tuple(int(v) for v in rng.integers(1, 40, 3))
        x = (rng.standard_normal(shape) * 10).astype(np.float32)
        got, ref = ops.resize(x, size, "trilinear"), _torch_resize(x, size, "trilinear")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        exact += np.array_equal(got, ref)
    if _fma_kernels():
        assert exact == 120  # same float32 roundings as torch's AVX2/AVX512 kernel


def test_trilinear_window_upsampling_matches_torch():
    """The zoom-in's upsampling, in 16 slabs of 2 output rows."""
    x = np.random.default_rng(5).standard_normal((8, 64, 64)).astype(np.float32)
    got, ref = ops.resize(x, (32, 256, 256), "trilinear"), _torch_resize(x, (32, 256, 256), "trilinear")
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    if _fma_kernels():
        np.testing.assert_array_equal(got, ref)


def test_upsample_then_nearest_equals_the_two_resizes():
    rng = np.random.default_rng(6)
    for _ in range(60):
        low = rng.standard_normal(tuple(int(v) for v in rng.integers(1, 10, 3))).astype(np.float32)
        mid = tuple(int(v) for v in rng.integers(1, 30, 3))
        out = tuple(int(v) for v in rng.integers(1, 70, 3))
        fused = ops.upsample_then_nearest(low, mid, out)
        np.testing.assert_array_equal(fused, ops.resize(ops.resize(low, mid, "trilinear"), out, "nearest"))
        ref = _torch_resize(_torch_resize(low, mid, "trilinear"), out, "nearest")
        np.testing.assert_allclose(fused, ref, rtol=1e-6, atol=1e-6)


def test_the_positive_coarse_mask_equals_thresholding_the_logits():
    # the CPU path's mask-only coarse pass: the same voxels, without the float32 crop volume
    rng = np.random.default_rng(7)
    for _ in range(60):
        low = rng.standard_normal(tuple(int(v) for v in rng.integers(1, 10, 3))).astype(np.float32)
        low[rng.random(low.shape) < 0.1] = np.float32(3 * 2.0**-26)  # sigmoid exactly 0.5: negative
        mid = tuple(int(v) for v in rng.integers(1, 30, 3))
        out = tuple(int(v) for v in rng.integers(1, 70, 3))
        flags = ops.upsample_then_nearest_positive(low, mid, out)
        assert flags.dtype == np.bool_ and flags.flags.c_contiguous
        np.testing.assert_array_equal(flags, ops.positive_mask(ops.upsample_then_nearest(low, mid, out)))


def test_scan_mask_takes_the_positive_mask_of_the_crop_logits_too():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 7, 8)).astype(np.float32)
    roi = rng.standard_normal((3, 2, 4)).astype(np.float32)
    flags = ops.positive_mask(logits)
    for perm, flips, origin in (((2, 1, 0), (False,) * 3, (0, 0, 0)), ((0, 2, 1), (True, False, True), (-1, 2, 0))):
        scan = [0, 0, 0]
        for a, p in enumerate(perm):
            scan[p] = logits.shape[a] + 2
        want = ops.scan_mask(logits, scan, perm, flips, origin, roi, (1, 3, 2))
        np.testing.assert_array_equal(ops.scan_mask(flags, scan, perm, flips, origin, roi, (1, 3, 2)), want)
    np.testing.assert_array_equal(flags, ops.positive_mask(logits))  # the caller's mask is not written


def test_resize_rejects_bad_arguments():
    x = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError):
        ops.resize(x, (2, 2, 2), "bicubic")
    with pytest.raises(ValueError):
        ops.resize(x, (2, 0, 2), "nearest")
    with pytest.raises(ValueError):
        ops.resize(x, (2, 2, 2), "nearest", box=(0, 0, 0, 5, 4, 4))
    with pytest.raises(ValueError):
        ops.resize(np.zeros((4, 4)), (2, 2, 2), "nearest")


# -- sigmoid, masks, boxes ------------------------------------------------------------


def test_positive_mask_is_torch_sigmoid_above_half():
    boundary = np.float32(3 * 2.0**-25).view(np.int32)
    near = (boundary + np.arange(-200_000, 200_000, dtype=np.int32)).view(np.float32)
    rng = np.random.default_rng(7)
    wide = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * s for s in (1e-8, 1e-6, 1, 40)])
    for x in (near, wide, np.array([0.0, -0.0, 1e-8, np.inf, -np.inf], np.float32)):
        ref = (torch.sigmoid(torch.from_numpy(x)) > 0.5).numpy()
        np.testing.assert_array_equal(ops.positive_mask(x), ref)
    assert ops.positive_mask(np.float32([1e-8]))[0] == np.False_  # sigmoid is exactly 0.5 there, unlike x > 0


def test_sigmoid_close_to_torch():
    x = np.random.default_rng(8).standard_normal(10_000).astype(np.float32) * 20
    got = ops.sigmoid(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-7)


def test_bounding_box_inclusive_and_empty():
    rng = np.random.default_rng(9)
    for _ in range(30):
        mask = rng.random(tuple(int(v) for v in rng.integers(1, 20, 3))) < rng.choice([0.001, 0.05, 0.5])
        idx = np.nonzero(mask)
        expected = None if not mask.any() else tuple(int(f(i)) for f in (np.min, np.max) for i in idx)
        assert ops.bounding_box(mask) == expected
        assert ops.bounding_box(mask.astype(np.float32)) == expected
    assert ops.bounding_box(np.zeros((3, 4, 5), bool)) is None


def test_positive_box_matches_official_roi_source():
    logits = np.full((10, 12, 14), -5, np.float32)
    logits[2, 3, 4] = 1e-8  # sigmoid == 0.5: not positive
    logits[4:7, 5, 6:9] = 3.0
    t = torch.from_numpy(logits)
    nz = torch.nonzero(torch.sigmoid(t) > 0.5)
    expected = tuple(int(v) for v in torch.cat([nz.min(0).values, nz.max(0).values]))
    assert ops.positive_box(logits) == expected == (4, 5, 6, 6, 5, 8)
    assert ops.positive_box(np.full((3, 3, 3), -1, np.float32)) is None


# -- intensity normalisation ------------------------------------------------------------


def ct_volume(shape, seed) -> np.ndarray:
    """CT-like HU values: air (-1024) around an elliptic body of noisy soft tissue with bright specks."""
    rng = np.random.default_rng(seed)
    i = np.linspace(-1, 1, shape[0])[:, None, None]
    j = np.linspace(-1, 1, shape[1])[None, :, None]
    body = np.broadcast_to((i / 0.8) ** 2 + (j / 0.6) ** 2 < 1, shape)
    tissue = np.round(rng.normal(40.0, 120.0, size=shape))
    bone = rng.random(shape) < 0.02
    return np.where(body, np.where(bone, 1500.0, tissue), -1024.0).astype(np.float32)


# The official ForegroundNormalization + DimTranspose + MinMaxNormalization run
# with numpy 1.26.4 on ct_volume(shape, seed) (stats as float.hex, sha256 of the
# C-ordered float32 model-space result). numpy 2 running the same code gives a
# different std and result for the larger volume.
OFFICIAL_NUMPY1 = {
    ((96, 80, 64), 7): (
        ("-0x1.5a3f9db22d0e5p+8", "0x1.7700000000000p+10", "0x1.15f6680000000p+6", "0x1.d848620000000p+7"),
        "0be72cd889043472205273a8c2b04093e64dce1ff27dab155f908106050c8ec6",
    ),
    ((33, 17, 29), 3): (
        ("-0x1.44b851eb851ebp+8", "0x1.7700000000000p+10", "0x1.149d4e0000000p+6", "0x1.d762ae0000000p+7"),
        "c0a97683bc33d377df12782f3a6f9d0686fa65d929b2277b0277e08507e0c287",
    ),
}


@pytest.mark.parametrize("key", list(OFFICIAL_NUMPY1))
def test_normalisation_reproduces_official_numpy1_bits(key):
    stats_hex, digest = OFFICIAL_NUMPY1[key]
    volume = ct_volume(*key)
    stats = ops.foreground_stats(volume)
    assert [s.hex() for s in stats] == list(stats_hex)
    model = np.ascontiguousarray(np.swapaxes(ops.normalize_min_max(volume, stats), 0, 2))
    assert model.dtype == np.float32
    assert hashlib.sha256(model.tobytes()).hexdigest() == digest


def _python_numpy1_sum(values: np.ndarray) -> np.float32:
    """numpy 1.x float32 add.reduce, written out: pairwise sums of 8192-element blocks added in sequence."""

    def pairwise(a):
        n = len(a)
        if n < 8:
            res = np.float32(0)
            for v in a:
                res = np.float32(res + v)
            return res
        if n <= 128:
            r = list(a[:8])
            i = 8
            while i < n - n % 8:
                r = [np.float32(r[j] + a[i + j]) for j in range(8)]
                i += 8
            left = np.float32(np.float32(r[0] + r[1]) + np.float32(r[2] + r[3]))
            right = np.float32(np.float32(r[4] + r[5]) + np.float32(r[6] + r[7]))
            res = np.float32(left + right)
            for v in a[i:]:
                res = np.float32(res + v)
            return res
        half = n // 2 - (n // 2) % 8
        return np.float32(pairwise(a[:half]) + pairwise(a[half:]))

    total = np.float32(0)
    for s in range(0, len(values), 8192):
        total = np.float32(total + pairwise(values[s : s + 8192]))
    return total


@pytest.mark.parametrize("n", [1, 7, 8, 100, 129, 8192, 8195, 20000])
def test_float32_sum_follows_numpy1(n):
    x = (np.random.default_rng(n).standard_normal(n) * 300).astype(np.float32)
    assert N.sum_f32(x) == _python_numpy1_sum(x)
    big = (np.random.default_rng(0).standard_normal(5 * 8192 + 77) * 300).astype(np.float32)
    blocks = big[: 5 * 8192].reshape(5, 8192)
    np.testing.assert_array_equal(N.block_sums(blocks), N.emulated_block_sums(blocks))


def test_tail_selection_equals_sorting():
    rng = np.random.default_rng(10)
    arrays = [
        rng.standard_normal(200_001).astype(np.float32),
        rng.integers(-5, 5, 300_000).astype(np.float32),  # heavy ties
        np.full(1000, 3.0, np.float32),
        np.concatenate([np.zeros(100_000, np.float32), np.float32([1, 2, 3])]),  # tail beyond the sample
        np.float32([4.0]),
        np.float32([2.0, 1.0]),
    ]
    for a in arrays:
        s = np.sort(a)
        n = a.size
        for q in (0.05, 99.95):
            prev, nxt, _ = N.percentile_positions(n, q)
            low = q < 50
            assert N.select_ranks(a, [prev, nxt], low=low) == [float(s[prev]), float(s[nxt])]


def test_stats_close_to_plain_numpy():
    v = ct_volume((40, 50, 30), 1)
    flat = v.ravel()
    sel = flat[flat > flat.mean(dtype=np.float64)]
    stats = ops.foreground_stats(v)
    np.testing.assert_allclose(stats.lower, np.percentile(sel.astype(np.float64), 0.05), rtol=1e-6)
    np.testing.assert_allclose(stats.upper, np.percentile(sel.astype(np.float64), 99.95), rtol=1e-6)
    np.testing.assert_allclose(stats.mean, sel.astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_allclose(stats.std, sel.astype(np.float64).std(), rtol=1e-6)


def test_stats_use_memory_order_of_any_layout():
    v = ct_volume((30, 20, 10), 2)
    ref = ops.foreground_stats(v)
    assert ops.foreground_stats(v[::-1, :, ::-1]) == ref  # flipped views: same memory
    fortran = ops.foreground_stats(np.asfortranarray(v))  # other order: float32 sums may differ in the last bit
    np.testing.assert_allclose(fortran, ref, rtol=1e-6)


def test_stats_reject_degenerate_volumes():
    with pytest.raises(ValueError, match="constant"):
        ops.foreground_stats(np.full((4, 4, 4), 7, np.float32))
    bad = np.zeros((4, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ops.foreground_stats(bad)


def test_normalize_and_min_max_match_plain_float32_formulas():
    v = ct_volume((20, 30, 25), 4)
    stats = ops.foreground_stats(v)
    lo, hi, mean, std = (np.float32(s) for s in stats)
    z = (np.minimum(np.maximum(v, lo), hi) - mean) / std
    np.testing.assert_array_equal(ops.normalize(v, stats), z)
    mm = (z - z.min()) / np.float32(z.max() - z.min())
    np.testing.assert_array_equal(ops.min_max(z), mm)
    for layout in (v, np.asfortranarray(v), v[:, ::2, :]):
        np.testing.assert_array_equal(ops.normalize_min_max(layout, stats), ops.min_max(ops.normalize(layout, stats)))
    flat = np.full((3, 3, 3), 5, np.float32)
    np.testing.assert_array_equal(ops.min_max(flat), np.zeros_like(flat))  # span clipped to 1e-8


def test_normalize_min_max_writes_into_out_even_the_volume_itself():
    v = np.asfortranarray(ct_volume((20, 30, 25), 4))
    stats = ops.foreground_stats(v)
    ref = ops.normalize_min_max(v, stats)
    # another memory order than the volume's: element by element all the same
    for out in (np.empty(v.shape, np.float32, order="C"), np.empty(v.shape, np.float32, order="F")):
        assert ops.normalize_min_max(v, stats, out=out) is out
        np.testing.assert_array_equal(out, ref)
    own = v.copy(order="F")
    assert ops.normalize_min_max(own, stats, out=own) is own  # in place: the extremes are read first
    np.testing.assert_array_equal(own, ref)
    with pytest.raises(ValueError, match="float32"):
        ops.normalize_min_max(v, stats, out=np.empty(v.shape, np.float64))


# -- sliding windows ------------------------------------------------------------------


def test_window_plan_follows_monai():
    # interval int(roi * (1 - overlap)); windows until start + roi covers; last start clamped
    assert ops.window_starts((40, 300, 256), (32, 256, 256), 0.5) == [
        (d, h, 0) for d in (0, 8) for h in (0, 44)
    ]
    assert ops.window_starts((32, 256, 256), (32, 256, 256), 0.5) == [(0, 0, 0)]
    # smaller than the window: padded to it first, one window
    assert ops.pad_for_windows((20, 100, 300), (32, 256, 256)) == ((6, 6), (78, 78), (0, 0))
    assert ops.window_starts((20, 100, 300), (32, 256, 256), 0.5) == [(0, 0, 0), (0, 0, 44)]
    starts = ops.window_starts((70, 600, 520), (32, 256, 256), 0.25)
    assert starts[:3] == [(0, 0, 0), (0, 0, 192), (0, 0, 264)]
    assert sorted(set(s[0] for s in starts)) == [0, 24, 38]
    with pytest.raises(ValueError):
        ops.window_starts((40, 40, 40), (32, 32, 32), 1.0)


def test_blend_windows_matches_monai_accumulation_in_torch():
    rng = np.random.default_rng(11)
    image, roi = (23, 50, 61), (16, 32, 32)
    pads = ops.pad_for_windows(image, roi)
    padded = tuple(n + a + b for n, (a, b) in zip(image, pads))
    starts = ops.window_starts(image, roi, 0.5)
    windows = rng.standard_normal((len(starts),) + roi).astype(np.float32)
    total = torch.zeros(padded)
    count = torch.zeros(padded)
    for w, (d, h, x) in zip(windows, starts):
        total[d : d + roi[0], h : h + roi[1], x : x + roi[2]] += 1.0 * torch.from_numpy(w)
        count[d : d + roi[0], h : h + roi[1], x : x + roi[2]] += 1.0
    ref = (total / count).numpy()
    got = ops.blend_windows(windows, starts, padded)
    np.testing.assert_array_equal(got, ref)
    assert ops.unpad(got, pads).shape == image


def test_gpu_twin_is_only_looked_up_for_cupy_arrays(monkeypatch):
    def no_lookup(name):
        raise AssertionError(f"looked up the CUDA twin of {name} for a numpy array")

    monkeypatch.setattr(dispatch, "twin_of", no_lookup)
    assert ops.resize(np.zeros((2, 2, 2), np.float32), (3, 3, 3), "nearest").shape == (3, 3, 3)
    assert ops.array_namespace(np.zeros(3)) is np


def test_every_registered_operation_has_its_cuda_twin():
    import inspect

    from segvol_rt.ops import cuda

    twins = dispatch.registered_twins()
    assert len(twins) >= 16
    for name, fn in twins.items():
        twin = getattr(cuda, name, None)
        assert callable(twin), f"segvol_rt.ops.cuda has no twin {name}"
        assert getattr(ops, name).__wrapped__ is fn
        ref, got = inspect.signature(fn).parameters, inspect.signature(twin).parameters
        assert list(ref) == list(got), f"{name}: twin takes {list(got)}, reference {list(ref)}"


def test_a_twin_that_does_not_exist_is_an_error_not_a_numpy_run(monkeypatch):
    from segvol_rt.ops import cuda

    monkeypatch.delattr(cuda, "sigmoid")
    with pytest.raises(LookupError, match="no twin 'sigmoid'"):
        dispatch.twin_of("sigmoid")
    with pytest.raises(LookupError, match="registered twice"):
        dispatch.cuda_twin(dispatch.registered_twins()["sigmoid"])


def test_cupy_arrays_give_the_numpy_results():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (GPU extra)")
    try:
        cupy.zeros(1)
    except Exception as exc:  # noqa: BLE001 - no usable CUDA device
        pytest.skip(f"cupy cannot reach a CUDA device: {exc}")
    v = ct_volume((40, 30, 20), 5)
    g = cupy.asarray(v)
    assert ops.foreground_stats(g) == ops.foreground_stats(v)
    stats = ops.foreground_stats(v)
    np.testing.assert_array_equal(cupy.asnumpy(ops.normalize_min_max(g, stats)), ops.normalize_min_max(v, stats))
    for mode in ("nearest", "nearest-exact"):
        np.testing.assert_array_equal(cupy.asnumpy(ops.resize(g, (9, 41, 17), mode)), ops.resize(v, (9, 41, 17), mode))
    np.testing.assert_allclose(
        cupy.asnumpy(ops.resize(g, (9, 41, 17), "trilinear")), ops.resize(v, (9, 41, 17), "trilinear"), rtol=1e-6, atol=1e-6
    )
    assert ops.bounding_box(g > 0) == ops.bounding_box(v > 0)
