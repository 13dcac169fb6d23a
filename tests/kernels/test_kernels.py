"""The CUDA kernels (through segvol_rt.ops.cuda) against their NumPy twins.

Every test runs twice: on ``emu`` - numpy arrays and the CPU emulator of the
kernels (tests/support/kernel_emu.py: the .cu sources compiled as C++), so
the kernels' logic and gpu_ops' host code are checked on any machine with
g++ - and on ``cuda`` - cupy and the real NVRTC-compiled kernels, skipped
with the reason when cupy or a GPU is missing. Fresh outputs are poisoned (NaN / 0xAB) so an
unwritten element shows. Comparisons are exact (bit for bit) except sigmoid.
"""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.ops import cuda as gpu_ops
from tests.support import kernel_emu as emu


def _cuda_device() -> gpu_ops.Device:
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cupy is not installed ({exc}); the CUDA kernels run on the GPU tests only")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no CUDA device")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no CUDA device ({exc})")
    from segvol_rt import kernels

    return gpu_ops.Device(xp=cupy, kernel=kernels.function, to_host=cupy.asnumpy, poison=True)


@pytest.fixture(params=["emu", pytest.param("cuda", marks=pytest.mark.gpu)])
def dev(request):
    if request.param == "emu":
        if not emu.available():
            pytest.skip("no g++ on PATH for the CPU emulator of the kernels")
        device = emu.backend(poison=True)
    else:
        device = _cuda_device()
    with gpu_ops.use(device):
        yield device


def put(dev, a):
    """A device copy (with numpy as the device, never the host array itself)."""
    return dev.xp.array(a, copy=True, order="K")


def get(dev, a):
    return np.asarray(dev.to_host(a))


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


RNG = np.random.default_rng(20240611)


def _volume(shape, dtype, rng=RNG):
    if dtype == np.bool_:
        return rng.random(shape) < 0.3
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -3000), min(info.max, 3000), shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def _random_box(shape, rng=RNG):
    lo = [int(rng.integers(0, s)) for s in shape]
    hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape)]
    return tuple(lo + hi)


# -- resize -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ops.MODES)
def test_resize_random_shapes_boxes_and_dtypes(dev, mode):
    rng = np.random.default_rng(1)
    dtypes = [np.float32, np.uint8, np.int16, np.bool_, np.float64, np.int32]
    for trial in range(36):
        shape = tuple(int(s) for s in rng.integers(1, 20, 3))
        size = tuple(int(s) for s in rng.integers(1, 33, 3))
        x = _volume(shape, dtypes[trial % len(dtypes)], rng)
        box = _random_box(shape, rng) if trial % 3 else None
        got = get(dev, gpu_ops.resize(put(dev, x), size, mode, box))
        assert same(got, ops.resize(x, size, mode, box)), (mode, shape, size, box, x.dtype)


@pytest.mark.parametrize("mode", ops.MODES)
def test_resize_special_sizes_and_views(dev, mode):
    x = _volume((12, 10, 9), np.float32)
    for size in [(12, 10, 9), (24, 20, 18), (6, 5, 3), (1, 1, 1), (13, 31, 64)]:
        assert same(get(dev, gpu_ops.resize(put(dev, x), size, mode)), ops.resize(x, size, mode)), size
    xd = put(dev, x)
    for view, ref in [(xd[::-1, :, ::2], x[::-1, :, ::2]), (xd.transpose(2, 0, 1), x.transpose(2, 0, 1))]:
        assert same(get(dev, gpu_ops.resize(view, (7, 11, 5), mode, (1, 0, 1, 4, 9, 4))),
                    ops.resize(np.ascontiguousarray(ref), (7, 11, 5), mode, (1, 0, 1, 4, 9, 4)))


def test_resize_rejects_bad_arguments(dev):
    x = put(dev, np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError):
        gpu_ops.resize(x, (2, 2, 2), "bicubic")
    with pytest.raises(ValueError):
        gpu_ops.resize(x, (2, 2, 0), "nearest")
    with pytest.raises(ValueError):
        gpu_ops.resize(x, (2, 2, 2), "nearest", (0, 0, 0, 5, 4, 4))
    with pytest.raises(ValueError):
        gpu_ops.resize(put(dev, np.zeros((4, 4, 4), np.complex64)), (2, 2, 2), "nearest")


def test_upsample_then_nearest(dev):
    rng = np.random.default_rng(2)
    cases = [((8, 64, 64), (32, 256, 256), (45, 301, 277)), ((2, 4, 4), (8, 16, 16), (3, 40, 7))]
    for _ in range(6):
        cases.append(tuple(tuple(int(s) for s in rng.integers(1, 24, 3)) for _ in range(3)))
    for low_shape, mid, out in cases:
        low = _volume(low_shape, np.float32, rng)
        got = get(dev, gpu_ops.upsample_then_nearest(put(dev, low), mid, out))
        assert same(got, ops.upsample_then_nearest(low, mid, out)), (low_shape, mid, out)


# -- sigmoid, positive voxels, boxes --------------------------------------------------


def test_positive_threshold_is_the_twin_predicate():
    t = gpu_ops.positive_threshold()
    assert t.dtype == np.float32 and 0 < t < 2.0**-20
    assert not ops.positive_mask(np.array([np.nextafter(t, np.float32(0))], np.float32))[0]
    bits = int(np.array([t], np.float32).view(np.uint32)[0])
    dense = np.arange(bits - 200_000, bits + 200_000, dtype=np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 2.0**-20, 1e-3, -1e-3, 88.0, -88.0], np.float32)
    for x in (dense, special, _volume((100_000,), np.float32) * np.float32(1e-9)):
        assert np.array_equal(np.asarray(ops.positive_mask(x)), x >= t)


def test_sigmoid_close(dev):
    x = np.concatenate([_volume((50_000,), np.float32) / 10, np.array([0, -0.0, 80, -80, 1e-7], np.float32)])
    got = get(dev, gpu_ops.sigmoid(put(dev, x.reshape(1, 1, -1)))).ravel()
    np.testing.assert_allclose(got, np.asarray(ops.sigmoid(x)), rtol=4e-7, atol=1e-30)


def test_positive_mask_and_box(dev):
    rng = np.random.default_rng(3)
    for trial in range(12):
        shape = tuple(int(s) for s in rng.integers(1, 30, 3))
        logits = (rng.standard_normal(shape) - (2.5 if trial % 2 else 0.0)).astype(np.float32)
        if trial == 0:
            logits[...] = np.float32(gpu_ops.positive_threshold())  # all exactly at the edge
        if trial == 1:
            logits[...] = -1.0
        assert same(get(dev, gpu_ops.positive_mask(put(dev, logits))), np.asarray(ops.positive_mask(logits)))
        assert gpu_ops.positive_box(put(dev, logits)) == ops.positive_box(logits), shape


def test_bounding_box(dev):
    rng = np.random.default_rng(4)
    dtypes = [np.bool_, np.uint8, np.int16, np.float32, np.int64, np.float64]
    for trial in range(24):
        shape = tuple(int(s) for s in rng.integers(1, 40, 3))
        mask = np.zeros(shape, dtypes[trial % len(dtypes)])
        if trial % 4:
            for _ in range(int(rng.integers(1, 4))):
                mask[tuple(int(rng.integers(0, s)) for s in shape)] = 1
        if trial % 5 == 0:
            mask[(0,) * 3] = 1
            mask[tuple(s - 1 for s in shape)] = 1
        assert gpu_ops.bounding_box(put(dev, mask)) == ops.bounding_box(mask), (shape, mask.dtype)


# -- foreground statistics, order statistics ------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5, 7), (8, 32, 32), (16, 32, 32), (17, 33, 31), (40, 64, 61)])
def test_foreground_stats_bit_exact(dev, shape):
    rng = np.random.default_rng(sum(shape))
    ct = (rng.standard_normal(shape) * 400 - 300).round().astype(np.float32)
    ct[: shape[0] // 2] = -1024  # air, as in a CT
    assert gpu_ops.foreground_stats(put(dev, ct)) == ops.foreground_stats(ct)
    fortran = np.asfortranarray(ct)
    assert gpu_ops.foreground_stats(put(dev, fortran)) == ops.foreground_stats(fortran)
    noisy = (rng.standard_normal(shape) * 1e3).astype(np.float32)
    assert gpu_ops.foreground_stats(put(dev, noisy)) == ops.foreground_stats(noisy)
    assert gpu_ops.foreground_stats(put(dev, ct.astype(np.int16))) == ops.foreground_stats(ct.astype(np.int16))


def test_foreground_stats_errors(dev):
    with pytest.raises(ValueError):
        gpu_ops.foreground_stats(put(dev, np.full((4, 4, 4), 7.0, np.float32)))
    bad = np.zeros((4, 4, 4), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        gpu_ops.foreground_stats(put(dev, bad))


def test_select_ranks_exact(dev):
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 1000, 50_001):
        v = (rng.standard_normal(n) * 50).astype(np.float32)
        if n > 10:
            v[::7] = v[0]  # ties
            v[1::11] = -0.0
            v[2::13] = np.float32(3.5e-42)  # subnormal
        ranks = sorted({0, n - 1, n // 2, int(rng.integers(0, n))})
        srt = np.sort(v)
        assert gpu_ops.select_ranks(put(dev, v), ranks) == [float(srt[r]) for r in ranks]
        sel = np.sort(v[v > 0.25])
        if sel.size:
            r = [0, sel.size - 1]
            assert gpu_ops.select_ranks(put(dev, v), r, threshold=0.25) == [float(sel[k]) for k in r]


# -- intensity transforms ---------------------------------------------------------------


def test_normalize_and_min_max(dev):
    rng = np.random.default_rng(6)
    for shape, order in [((9, 17, 23), "C"), ((8, 32, 40), "F"), ((1, 1, 5), "C")]:
        ct = np.asarray((rng.standard_normal(shape) * 400).round(), dtype=np.float32, order=order)
        stats = ops.foreground_stats(ct)
        for got, ref in [
            (gpu_ops.normalize(put(dev, ct), stats), ops.normalize(ct, stats)),
            (gpu_ops.min_max(put(dev, ct)), ops.min_max(ct)),
            (gpu_ops.normalize_min_max(put(dev, ct), stats), ops.normalize_min_max(ct, stats)),
            (gpu_ops.normalize_min_max(put(dev, ct.astype(np.int16)), stats), ops.normalize_min_max(ct.astype(np.int16), stats)),
        ]:
            assert same(get(dev, got), ref)
    flat = np.full((3, 4, 5), 2.5, np.float32)
    assert same(get(dev, gpu_ops.min_max(put(dev, flat))), ops.min_max(flat))
    flat[1, 2, 3] = np.nan
    assert same(get(dev, gpu_ops.min_max(put(dev, flat))), ops.min_max(flat))


# -- sliding windows, paste, final mask ---------------------------------------------------


def _plan(rng):
    roi = [int(s) for s in rng.integers(3, 40, 3)]
    window = [int(rng.integers(2, 12)) for _ in range(3)]
    pads = ops.pad_for_windows(roi, window)
    padded = [r + a + b for r, (a, b) in zip(roi, pads)]
    starts = ops.window_starts(roi, window, 0.5)
    windows = rng.standard_normal((len(starts), *window)).astype(np.float32)
    return padded, pads, starts, windows


def test_blend_windows_and_box(dev):
    rng = np.random.default_rng(7)
    for _ in range(10):
        padded, pads, starts, windows = _plan(rng)
        ref = ops.blend_windows(windows, starts, padded)
        assert same(get(dev, gpu_ops.blend_windows(put(dev, windows), starts, padded)), ref)
        box = tuple(a for a, _ in pads) + tuple(n - b for n, (_, b) in zip(padded, pads))
        got = gpu_ops.blend_windows_box(put(dev, windows), starts, padded, box)
        assert same(get(dev, got), ops.blend_windows_box(windows, starts, padded, box))
    # voxels that no window covers are NaN on both sides
    w = np.ones((1, 2, 2, 2), np.float32)
    assert same(get(dev, gpu_ops.blend_windows(put(dev, w), [(1, 1, 1)], (4, 4, 4))),
                ops.blend_windows(w, [(1, 1, 1)], (4, 4, 4)))


def test_blend_accumulate_in_batches(dev):
    rng = np.random.default_rng(8)
    for _ in range(6):
        padded, _, starts, windows = _plan(rng)
        total, count = np.zeros(padded, np.float32), np.zeros(padded, np.float32)
        total_d, count_d = put(dev, total), put(dev, count)
        for lo in range(0, len(starts), 3):
            ops.blend_accumulate(total, count, windows[lo : lo + 3], starts[lo : lo + 3])
            gpu_ops.blend_accumulate(total_d, count_d, put(dev, windows[lo : lo + 3]), starts[lo : lo + 3])
        assert same(get(dev, total_d), total) and same(get(dev, count_d), count)
        blended = gpu_ops.blend_divide(total_d, count_d)
        assert same(get(dev, blended), ops.blend_divide(total, count))
        assert same(get(dev, blended), ops.blend_windows(windows, starts, padded))


def test_paste(dev):
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.uint8, np.bool_):
        dst = _volume((10, 12, 14), dtype, rng)
        src = _volume((4, 12, 5), dtype, rng)
        ref = ops.paste(dst.copy(), src, (3, 0, 9))
        got = gpu_ops.paste(put(dev, dst), put(dev, src), (3, 0, 9))
        assert same(get(dev, got), ref)
    with pytest.raises(ValueError):
        gpu_ops.paste(put(dev, dst), put(dev, src), (7, 0, 0))


def test_scan_mask(dev):
    rng = np.random.default_rng(10)
    perms = [(2, 1, 0), (0, 1, 2), (1, 2, 0), (2, 0, 1)]
    for trial in range(16):
        scan = tuple(int(s) for s in rng.integers(1, 25, 3))
        perm = perms[trial % len(perms)]
        flips = tuple(bool(f) for f in rng.integers(0, 2, 3)) if trial % 2 else (False,) * 3
        model = [scan[p] for p in perm]
        crop = tuple(int(rng.integers(1, m + 6)) for m in model)
        origin = tuple(int(rng.integers(-5, m)) for m in model)
        logits = rng.standard_normal(crop).astype(np.float32)
        roi, roi_start = None, (0, 0, 0)
        if trial % 3:
            box = _random_box(crop, rng)
            roi_start = box[:3]
            roi = rng.standard_normal([b - a for a, b in zip(box[:3], box[3:])]).astype(np.float32)
        ref = ops.scan_mask(logits, scan, perm, flips, origin, roi, roi_start)
        got = gpu_ops.scan_mask(put(dev, logits), scan, perm, flips, origin,
                                None if roi is None else put(dev, roi), roi_start)
        assert same(get(dev, got), ref), (scan, perm, flips, crop, origin)


# -- NumPy twins and plumbing that need no kernel ---------------------------------------------


def test_scan_mask_twin_official_swap():
    """Default mapping: model (D, H, W) = (k, j, i), crop at `origin` in model space."""
    rng = np.random.default_rng(11)
    scan = (6, 7, 8)
    logits = rng.standard_normal((5, 4, 3)).astype(np.float32)
    origin = (2, 1, -1)
    model = np.zeros((8, 7, 6), np.uint8)
    for (d, h, w), v in np.ndenumerate(ops.positive_mask(logits)):
        md, mh, mw = d + origin[0], h + origin[1], w + origin[2]
        if 0 <= md < 8 and 0 <= mh < 7 and 0 <= mw < 6:
            model[md, mh, mw] = v
    expected = model.transpose(2, 1, 0)
    assert same(ops.scan_mask(logits, scan, (2, 1, 0), (False,) * 3, origin), expected)
    flipped = ops.scan_mask(logits, scan, (2, 1, 0), (True, False, False), origin)
    assert same(flipped, expected[:, :, ::-1])


def test_scan_mask_matches_geometry(dev):
    """scan_mask with scan_mapping(geometry) == geometry.crop_to_scan of the positive mask."""
    from segvol_rt.pipeline.geometry import Geometry, Reorient

    rng = np.random.default_rng(12)
    orderings = [(0, 1, 2), (2, 0, 1), (1, 0, 2), (2, 1, 0)]
    for trial in range(8):
        scan = tuple(int(s) for s in rng.integers(3, 20, 3))
        reorient = None
        if trial % 2:
            axes = orderings[trial % len(orderings)]
            ornt = tuple((axes[i], int(rng.choice([-1, 1]))) for i in range(3))
            reorient = Reorient(scan, ornt)
        oriented = reorient.out_shape if reorient else scan
        model = oriented[::-1]
        box = _random_box(model, rng)
        crop_box = box[:3] + tuple(b - 1 for b in box[3:])
        geo = Geometry.build(scan, crop_box, (8, 16, 16), reorient)
        logits = rng.standard_normal(geo.crop.out_shape).astype(np.float32)
        expected = np.asarray(geo.crop_to_scan(np.asarray(ops.positive_mask(logits), dtype=np.uint8)))
        mapping = geo.scan_mapping()
        assert same(ops.scan_mask(logits, scan, *mapping), expected), (scan, reorient, crop_box)
        assert same(get(dev, gpu_ops.scan_mask(put(dev, logits), scan, *mapping)), expected)


def test_emulator_checks_argument_types():
    if not emu.available():
        pytest.skip("no g++ on PATH")
    k = emu.kernel("blend_divide")
    a = np.zeros(4, np.float32)
    with pytest.raises(TypeError):
        k((1,), (1,), (a, a, a, np.int32(4), np.float32(0)))  # n is int64 in the kernel
    with pytest.raises(TypeError):
        k((1,), (1,), (a, a, a.astype(np.float64), np.int64(4), np.float32(0)))


def test_gpu_path_errors_name_the_cause():
    """No cupy: the error names the gpu extra; cupy but no GPU: 'no CUDA device'."""
    import segvol_rt._optional as opt
    from segvol_rt import kernels

    if not opt.available("cupy"):
        pattern = r"segvol-rt\[gpu\]"
    else:
        import cupy

        try:
            if cupy.cuda.runtime.getDeviceCount() > 0:
                pytest.skip("a CUDA device is present")
        except Exception:  # noqa: BLE001
            pass
        pattern = "no CUDA device"
    with pytest.raises(SegVolError, match=pattern):
        kernels.function("blend_divide")
    gpu_ops._cupy_device.cache_clear()
    with pytest.raises(SegVolError, match=pattern):
        gpu_ops.device()


# -- subnormals: the GPU flushes them (CuPy's -ftz=true), the twins keep them -------------

TINY = np.finfo(np.float32).tiny  # smallest normal float32


def flush(a):
    """``a`` with float32 subnormals replaced by zeros of their sign (what -ftz does)."""
    a = np.array(a, dtype=np.float32, copy=True)
    sub = (a != 0) & (np.abs(a) < TINY)
    a[sub] = np.copysign(np.float32(0), a[sub])
    return a


def _with_subnormals(shape, seed=21):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 100).astype(np.float32)
    flat = x.reshape(-1)
    flat[::5] = np.float32(3.5e-42) * rng.choice([-1, 1], flat[::5].size).astype(np.float32)
    flat[1::17] = np.float32(-1e-39)
    return x


def _subnormal_cases():
    """(name, gpu call, twin call, input, differs): float outputs of kernels whose
    arithmetic sees the subnormals; ``differs``: the flush shows in the output
    (normalize: ``(s - mean) / std`` rounds to the same float as ``-mean / std``)."""
    x = _with_subnormals((9, 14, 11))
    windows = np.stack([_with_subnormals((4, 6, 5), seed=s) for s in range(3)])
    starts = [(0, 0, 0), (2, 3, 1), (5, 8, 6)]
    stats = ops.foreground_stats((np.random.default_rng(3).standard_normal((8, 8, 8)) * 300).astype(np.float32))
    return [
        ("trilinear", lambda a: gpu_ops.resize(a, (13, 9, 17), "trilinear"),
         lambda a: ops.resize(a, (13, 9, 17), "trilinear"), x, True),
        ("normalize", lambda a: gpu_ops.normalize(a, stats), lambda a: ops.normalize(a, stats), x, False),
        ("blend", lambda a: gpu_ops.blend_windows(a, starts, (9, 14, 11)),
         lambda a: ops.blend_windows(a, starts, (9, 14, 11)), windows, True),
    ]


def test_subnormals_are_flushed_as_on_the_gpu(dev):
    """The documented exception to bit-identity: on the device (and the default
    emulator) subnormal float32 inputs and results of the kernels are zero, so
    the result is the twin's on flushed inputs, flushed; the twins keep
    subnormals (torch's CPU semantics, SegVol's)."""
    for name, gpu, twin, x, differs in _subnormal_cases():
        got = get(dev, gpu(put(dev, x)))
        assert same(got, flush(twin(flush(x)))), name
        assert same(got, twin(x)) is not differs, f"{name}: the flush should {'' if differs else 'not '}show"


def test_masks_do_not_depend_on_subnormals(dev):
    """Every mask threshold is a normal number, so flushing subnormal logits
    changes no mask voxel and no box: masks stay bit-identical to the twins."""
    logits = _with_subnormals((12, 10, 14), seed=4)
    logits[3:6, 2:7, 4:9] = np.float32(2e-39)  # positive subnormals: sigmoid > 0.5 on neither side
    mapping = ((2, 1, 0), (False, True, False), (1, -2, 0))
    scan = (16, 12, 14)
    assert same(get(dev, gpu_ops.scan_mask(put(dev, logits), scan, *mapping)), ops.scan_mask(logits, scan, *mapping))
    assert gpu_ops.positive_box(put(dev, logits)) == ops.positive_box(logits)
    assert same(get(dev, gpu_ops.positive_mask(put(dev, logits))), ops.positive_mask(logits))


def test_emulator_without_ftz_matches_the_twins_on_subnormals():
    """With ftz off the emulator keeps subnormals and the kernels match the twins
    bit for bit: the flush is the only difference."""
    if not emu.available():
        pytest.skip("no g++ on PATH")
    if not emu.ftz_supported():
        pytest.skip("the emulator cannot switch subnormal flushing on this CPU")
    with gpu_ops.use(emu.backend(poison=True, ftz=False)) as ieee:
        for name, gpu, twin, x, _ in _subnormal_cases():
            assert same(get(ieee, gpu(put(ieee, x))), twin(x)), name
