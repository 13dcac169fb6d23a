"""CUDA twins of the registered :mod:`segvol_rt.ops` functions, for cupy arrays.

``segvol_rt.ops.<name>`` calls ``segvol_rt.ops.cuda.<name>`` with the same
arguments when its first argument is a cupy array (:mod:`segvol_rt.ops.dispatch`);
each function here returns what its NumPy twin returns, from
the kernels of ``kernels/*.cu`` (see :mod:`segvol_rt.kernels`). Where the twin
is exact float32 arithmetic the result is bit-identical; the exception is
:func:`sigmoid` (the GPU's ``expf`` is within 2 ulp of numpy's) - the
positive-logit rules never use it, they compare against the twin's exact
threshold (:func:`positive_threshold`).

Subnormals: CuPy compiles every kernel (and its own elementwise ops) with
``-ftz=true``, appended after our options, so float32 subnormal inputs and
results are flushed to zero here, while the twins keep them (torch's CPU
semantics). Bit-identity therefore holds for data free of subnormals; with
them a float result equals the twin's on flushed inputs, flushed. Masks and
boxes never differ: every threshold they compare with is a normal number.
tests/runtime/test_kernels.py checks both; the CPU emulator flushes the same way.

Arrays stay on the device; only small results (boxes, histograms, block sums)
come back to the host. Volumes are (D, H, W), boxes ``(d0, h0, w0, d1, h1, w1)``.

Host logic and kernel launches go through a :class:`Device` - cupy with the
NVRTC-compiled kernels by default. The tests swap in numpy arrays with a CPU
emulator of the kernels (tests/support/kernel_emu.py) through :func:`use`, so
this module's host code runs on machines without a GPU too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvol_rt.ops import intensity as I
from segvol_rt.ops import numpy1 as N
from segvol_rt.ops.boxes import (
    HalfOpenBox,
    InclusiveBox,
    box_bounds,
    check_volume,
    int3,
    int_box,
    placed_box,
)
from segvol_rt.ops.interpolate import MODES
from segvol_rt.ops.masks import positive_mask as np_positive_mask

BLOCK = 256  # = kernels.BLOCK = SEGVOL_BLOCK of kernels/common.cuh
MAX_GRID = 1 << 20  # grid-stride loops cover the rest
REDUCE_GRID = 1024  # blocks of the atomic reductions (about 8 per SM on an H200)
INT_MAX = 2**31 - 1
Scalar = float | np.floating[Any]  # host scalars handed to the kernels as float32

# -- device ---------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """Where this module allocates and launches.

    ``xp``: the array module; ``kernel``: name expression -> callable
    ``f((grid,), (block,), args)``; ``to_host``: device array -> numpy;
    ``poison``: fill fresh outputs with NaN / 0xAB bytes (tests)."""

    xp: Any
    kernel: Callable[[str], Any]
    to_host: Callable[[Any], np.ndarray]
    poison: bool = False

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        """An output array; poisoned when asked so unwritten elements show."""
        dtype = np.dtype(dtype)
        if not self.poison:
            return self.xp.empty(tuple(shape), dtype=dtype)
        if dtype.kind == "f":
            return self.xp.full(tuple(shape), np.nan, dtype=dtype)
        out = self.xp.empty(tuple(shape), dtype=dtype)
        out.view(np.uint8)[...] = 0xAB
        return out

    def launch(self, name: str, n: int | np.integer[Any], args: Sequence[Any], grid_cap: int = MAX_GRID) -> None:
        """Run kernel ``name`` over ``n`` work items (grid-stride, BLOCK threads)."""
        grid = max(1, min(-(-int(n) // BLOCK), grid_cap))
        self.kernel(name)((grid,), (BLOCK,), tuple(args))


_override: Device | None = None


@functools.cache
def _cupy_device() -> Device:
    from segvol_rt import kernels

    cupy = kernels.cupy_module()  # names the gpu extra, or says there is no CUDA device
    return Device(xp=cupy, kernel=kernels.function, to_host=cupy.asnumpy)


def device() -> Device:
    """The active device: cupy + NVRTC kernels unless :func:`use` swapped it."""
    return _override if _override is not None else _cupy_device()


@contextlib.contextmanager
def use(dev: Device) -> Iterator[Device]:
    """Run this module on ``dev`` inside the block (tests: numpy + CPU emulator)."""
    global _override
    previous, _override = _override, dev
    try:
        yield dev
    finally:
        _override = previous


# -- argument helpers ---------------------------------------------------------------


def _i64(*values: int) -> list[np.int64]:
    return [np.int64(v) for v in values]


def _f32(*values: Scalar) -> list[np.float32]:
    return [np.float32(v) for v in values]


def _strides(x: Any) -> list[np.int64]:
    """Element strides of ``x`` (may be negative or zero)."""
    return _i64(*(s // x.itemsize for s in x.strides))


def _scales(ins: Sequence[int], outs: Sequence[int]) -> list[np.float32]:
    """ATen's float32 ``in / out`` per axis."""
    return [np.float32(i) / np.float32(o) for i, o in zip(ins, outs)]


def _ctype(dtype: Any) -> str:
    from segvol_rt.kernels import CTYPES

    return CTYPES[np.dtype(dtype).name]


def _as_kernel_dtype(x: Any, allowed: Sequence[str], what: str) -> Any:
    """bool as uint8 (same bytes); other dtypes must be in ``allowed``."""
    if x.dtype == np.bool_:
        return x.view(np.uint8)
    if x.dtype.name not in allowed:
        raise ValueError(f"{what}: unsupported dtype {x.dtype}; supported: bool, {', '.join(allowed)}")
    return x


def _float32(x: Any) -> Any:
    xp = device().xp
    return x if x.dtype == np.float32 else x.astype(xp.float32)


def _size3(size: Sequence[int]) -> tuple[int, int, int]:
    out = tuple(int(s) for s in size)
    if len(out) != 3:
        raise ValueError(f"size must have 3 entries, got {out}")
    for s in out:
        if s < 1:
            raise ValueError(f"resize sizes must be positive, got {out}")
    return int3(out)


# -- resize ------------------------------------------------------------------------


def resize(x: Any, size: Sequence[int], mode: str, box: HalfOpenBox | None = None) -> Any:
    """Twin of :func:`segvol_rt.ops.resize`: crop to the half-open ``box`` and
    resize exactly as torch's ``F.interpolate`` (kernels/resize.cu)."""
    from segvol_rt.kernels import NEAREST_DTYPES, TRILINEAR_DTYPES

    dev = device()
    check_volume(x)
    size = _size3(size)
    start, stop = box_bounds(x.shape, box)
    extent = [b - a for a, b in zip(start, stop)]
    geometry = _strides(x) + _i64(*start) + _i64(*extent) + _i64(*size) + _scales(extent, size)
    if mode in ("nearest", "nearest-exact"):
        src = _as_kernel_dtype(x, NEAREST_DTYPES, "resize")
        out = dev.empty(size, src.dtype)
        exact = int(mode == "nearest-exact")
        dev.launch(f"resize_nearest<{_ctype(src.dtype)}, {exact}>", np.prod(size), [src, out] + geometry)
        return out.view(np.bool_) if x.dtype == np.bool_ else out
    if mode == "trilinear":
        src = x.view(np.uint8) if x.dtype == np.bool_ else x
        if src.dtype.name not in TRILINEAR_DTYPES:
            src = src.astype(dev.xp.float32)
            geometry[:3] = _strides(src)
        out = dev.empty(size, np.float32)
        dev.launch(f"resize_trilinear<{_ctype(src.dtype)}>", np.prod(size), [src, out] + geometry)
        return out
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {MODES}")


def upsample_then_nearest(low_res: Any, mid_size: Sequence[int], out_size: Sequence[int]) -> Any:
    """Twin of :func:`segvol_rt.ops.upsample_then_nearest`: trilinear to ``mid_size``
    then nearest to ``out_size``, computing only the picked samples. float32."""
    dev = device()
    check_volume(low_res)
    mid, size = _size3(mid_size), _size3(out_size)
    low = _float32(low_res)
    out = dev.empty(size, np.float32)
    args = [low, out] + _strides(low) + _i64(*low.shape) + _i64(*mid) + _i64(*size)
    args += _scales(low.shape, mid) + _scales(mid, size)
    dev.launch("upsample_then_nearest", np.prod(size), args)
    return out


# -- sigmoid, positive voxels, boxes -------------------------------------------------


def sigmoid(x: Any) -> Any:
    """Twin of :func:`segvol_rt.ops.sigmoid`: ``1 / (1 + exp(-x))`` in float32
    (cupy's ``exp``: within 2 ulp of numpy's, so not bit-identical)."""
    xp = device().xp
    y = xp.negative(xp.asarray(x, dtype=xp.float32))
    xp.exp(y, out=y)
    y += xp.float32(1)
    xp.reciprocal(y, out=y)
    return y


@functools.cache
def positive_threshold() -> np.float32:
    """The smallest float32 ``t`` that :func:`segvol_rt.ops.positive_mask` (the
    twin of ``torch.sigmoid(x) > 0.5``) calls positive.

    The rule is monotonic in ``x``, so it equals ``x >= t`` for every float32
    (NaN: false on both sides); the kernels test that, whatever form the twin
    takes. Found by bisection over the bit patterns of (0, 1] on the host."""
    def positive(bits: int) -> bool:
        value = np.array([bits], dtype=np.uint32).view(np.float32)
        return bool(np.asarray(np_positive_mask(value))[0])

    lo, hi = 0, int(np.array([1.0], np.float32).view(np.uint32)[0])  # 0.0: false, 1.0: true
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if positive(mid) else (mid, hi)
    return np.array([hi], dtype=np.uint32).view(np.float32)[0]


def positive_mask(logits: Any) -> Any:
    """Twin of :func:`segvol_rt.ops.positive_mask`: bool ``torch.sigmoid(logits) > 0.5``."""
    xp = device().xp
    return xp.asarray(logits, dtype=xp.float32) >= xp.float32(positive_threshold())


def _box(x: Any, name: str, threshold: float) -> InclusiveBox | None:
    dev = device()
    x = dev.xp.ascontiguousarray(x)
    box = dev.xp.asarray(np.array([INT_MAX] * 3 + [-1] * 3, dtype=np.int32))
    dev.launch(name, x.size, [x] + _i64(*x.shape) + _f32(threshold) + [box], REDUCE_GRID)
    b = dev.to_host(box)
    return None if b[3] < 0 else tuple(int(v) for v in b)  # type: ignore[return-value]


def bounding_box(mask: Any) -> InclusiveBox | None:
    """Twin of :func:`segvol_rt.ops.bounding_box`: inclusive box of nonzero voxels, or None."""
    from segvol_rt.kernels import NEAREST_DTYPES

    check_volume(mask)
    m = _as_kernel_dtype(mask, NEAREST_DTYPES, "bounding_box")
    return _box(m, f"bbox<{_ctype(m.dtype)}, 0>", 0.0)


def positive_box(logits: Any) -> InclusiveBox | None:
    """Twin of :func:`segvol_rt.ops.positive_box`: inclusive box of
    ``sigmoid(logits) > 0.5`` in one pass, no mask array."""
    check_volume(logits)
    return _box(_float32(logits), "bbox<float, 1>", float(positive_threshold()))


# -- foreground statistics -------------------------------------------------------------


def _memory_order(volume: Any) -> Any:
    """``volume``'s elements as float32 in memory order (the order ops sums in)."""
    xp = device().xp
    if volume.flags.c_contiguous:
        flat = volume.reshape(-1)
    elif volume.flags.f_contiguous:
        flat = volume.T.reshape(-1)
    else:
        flat = xp.ascontiguousarray(volume).reshape(-1)
    return _float32(flat)


def _sum_f32(flat: Any, center: np.float32 | None = None) -> np.float32:
    """numpy 1.x's float32 sum of ``flat`` (or of ``(flat - center)**2``), bit for
    bit as :func:`segvol_rt.N.sum_f32`: full 8192-blocks on the device
    (np1_leaf_sums, np1_block_sums), the tail and the running sum on the host."""
    dev = device()
    n = flat.shape[0]
    block = N.NP1_BLOCK
    nblocks = n // block
    sums = []
    squared = center is not None
    c = np.float32(center if squared else 0.0)
    if nblocks:
        leaves = dev.empty((nblocks * 64,), np.float32)
        dev.launch("np1_leaf_sums", nblocks * 64, [flat, np.int64(nblocks * 64), c, np.int32(squared), leaves])
        blocks = dev.empty((nblocks,), np.float32)
        dev.launch("np1_block_sums", nblocks, [leaves, np.int64(nblocks), blocks])
        sums.append(dev.to_host(blocks))
    if nblocks * block < n:
        rest = np.array(dev.to_host(flat[nblocks * block :]), dtype=np.float32)
        if squared:
            rest -= c
            rest *= rest
        sums.append(np.asarray(N.tail_sum(rest), dtype=np.float32).reshape(-1))
    if not sums:
        return np.float32(0)
    return np.add.accumulate(np.concatenate(sums).astype(np.float32))[-1]


def _float_of_key(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.astype(np.uint32).view(np.float32)


def select_ranks(flat: Any, ranks: Sequence[int], threshold: float | None = None) -> list[float]:
    """Exact order statistics ``sorted(v)[r]`` of the float32 vector ``flat`` (or of
    its elements ``> threshold``), by an 8-bit radix select over the float bits:
    four histogram passes (kernels/reduce.cu: radix_histogram) for up to four
    ranks at once. NaNs must not be among the counted values."""
    dev = device()
    wanted = sorted(set(int(r) for r in ranks))
    if len(wanted) > 4:
        raise ValueError("select_ranks takes at most 4 distinct ranks")
    prefix = np.zeros(4, dtype=np.uint32)
    remaining = np.array(wanted, dtype=np.int64)
    filt = [np.int32(threshold is not None), np.float64(threshold if threshold is not None else 0.0)]
    for shift in (24, 16, 8, 0):
        hist = dev.xp.zeros(len(wanted) * 256, dtype=dev.xp.uint32)
        args = [flat, np.int64(flat.shape[0])] + filt
        args += [dev.xp.asarray(prefix), np.int32(len(wanted)), np.int32(shift), hist]
        dev.launch("radix_histogram", flat.shape[0], args, REDUCE_GRID)
        counts = dev.to_host(hist).reshape(len(wanted), 256).astype(np.int64)
        for q in range(len(wanted)):
            cum = np.cumsum(counts[q])
            if remaining[q] >= cum[-1]:
                raise ValueError(f"rank {wanted[q]} out of range for {int(cum[-1])} values")
            digit = int(np.searchsorted(cum, remaining[q], side="right"))
            remaining[q] -= cum[digit - 1] if digit else 0
            prefix[q] |= np.uint32(digit << shift)
    values = dict(zip(wanted, _float_of_key(prefix[: len(wanted)]).tolist()))
    return [values[int(r)] for r in ranks]


def foreground_stats(volume: Any) -> I.ForegroundStats:
    """Twin of :func:`segvol_rt.ops.foreground_stats`, bit for bit: the numpy 1.x
    float32 sums of the mean/std reproduced on the device, the percentiles'
    order statistics found exactly by radix select."""
    xp = device().xp
    flat = _memory_order(volume)
    n = flat.shape[0]
    if n == 0:
        raise ValueError("empty volume")
    threshold = np.float32(float(_sum_f32(flat)) / n)
    if not np.isfinite(threshold):
        raise ValueError("volume contains NaN or infinite values")
    selected = flat[flat > xp.float32(threshold)]
    m = selected.shape[0]
    if m == 0:
        raise ValueError("volume is constant: no voxel lies above its mean")
    lo = N.percentile_positions(m, 0.05)
    hi = N.percentile_positions(m, 99.95)
    a, b, c, d = select_ranks(selected, [lo[0], lo[1], hi[0], hi[1]])
    total = _sum_f32(selected)
    mean = np.float32(float(total) / m)
    center = np.float32(total / np.float32(m))
    std = np.sqrt(np.float32(float(_sum_f32(selected, center)) / m))
    return I.ForegroundStats(N.lerp64(a, b, lo[2]), N.lerp64(c, d, hi[2]), float(mean), float(std))


# -- intensity transforms ------------------------------------------------------------------


def _flat_pair(volume: Any) -> tuple[Any, Any, Any]:
    """(float32 input in memory order, the float32 output of the same layout, its flat view)."""
    dev = device()
    xp = dev.xp
    src = volume if volume.dtype == np.float32 else volume.astype(xp.float32)
    if src.flags.f_contiguous and not src.flags.c_contiguous:
        out = dev.empty(src.shape[::-1], np.float32).T
        return src.T.reshape(-1), out, out.T.reshape(-1)
    src = xp.ascontiguousarray(src)
    out = dev.empty(src.shape, np.float32)
    return src.reshape(-1), out, out.reshape(-1)


def _affine(volume: Any, lo: Scalar, hi: Scalar, sub1: Scalar, div1: Scalar, sub2: Scalar, div2: Scalar) -> Any:
    flat, out, out_flat = _flat_pair(volume)
    args = [flat, out_flat, np.int64(flat.shape[0])] + _f32(lo, hi, sub1, div1, sub2, div2)
    device().launch("normalize_affine", flat.shape[0], args)
    return out


def _extremes(volume: Any) -> tuple[np.float32, np.float32]:
    """float32 (min, max) of ``volume``; NaN for both if it holds a NaN (numpy's min/max)."""
    dev = device()
    flat = _memory_order(volume)
    keys = dev.xp.asarray(np.array([0xFFFFFFFF, 0], dtype=np.uint32))
    dev.launch("minmax_keys", flat.shape[0], [flat, np.int64(flat.shape[0]), keys], REDUCE_GRID)
    lo_key, hi_key = (int(k) for k in dev.to_host(keys))
    inf_keys = _key_of(np.array([-np.inf, np.inf], dtype=np.float32))
    if lo_key < inf_keys[0] or hi_key > inf_keys[1]:
        return np.float32(np.nan), np.float32(np.nan)
    lo, hi = _float_of_key(np.array([lo_key, hi_key], dtype=np.uint32))
    return np.float32(lo), np.float32(hi)


def _key_of(values: np.ndarray) -> list[int]:
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    keys = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return [int(k) for k in keys.astype(np.uint32)]


def normalize(volume: Any, stats: Any, out: Any | None = None) -> Any:
    """Twin of :func:`segvol_rt.ops.normalize` (``out`` is ignored: a new array)."""
    s = I.ForegroundStats(*stats)
    return _affine(volume, s.lower, s.upper, s.mean, I.std_divisor(s.std), 0.0, 1.0)


def min_max(volume: Any, out: Any | None = None) -> Any:
    """Twin of :func:`segvol_rt.ops.min_max` (``out`` is ignored: a new array)."""
    low, high = _extremes(volume)
    return _affine(volume, -np.inf, np.inf, 0.0, 1.0, low, I.min_max_scale(low, high))


def normalize_min_max(volume: Any, stats: Any, out: Any | None = None) -> Any:
    """Twin of :func:`segvol_rt.ops.normalize_min_max`: one pass over the volume
    (``out`` is ignored: a new array)."""
    s = I.ForegroundStats(*stats)
    low, high = I.normalize_into(np.array(_extremes(volume), np.float32), s, np.empty(2, np.float32))
    scale = I.min_max_scale(np.float32(low), np.float32(high))
    return _affine(volume, s.lower, s.upper, s.mean, I.std_divisor(s.std), low, scale)


# -- sliding windows, paste, final mask ------------------------------------------------------


def _windows(windows: Any, starts: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    xp = device().xp
    if windows.ndim != 4 or len(starts) != windows.shape[0]:
        raise ValueError(f"expected (n, d, h, w) windows with n starts, got {windows.shape} and {len(starts)}")
    win = xp.ascontiguousarray(_float32(windows))
    st = xp.asarray(np.asarray(starts, dtype=np.int64).reshape(-1, 3))
    return win, st


def blend_windows(windows: Any, starts: Sequence[Sequence[int]], out_shape: Sequence[int]) -> Any:
    """Twin of :func:`segvol_rt.ops.blend_windows`: MONAI constant blending,
    bit-identical (same additions in the same order); uncovered voxels NaN."""
    shape = tuple(int(s) for s in out_shape)
    return blend_windows_box(windows, starts, shape, int_box((0, 0, 0) + shape))


def blend_windows_box(windows: Any, starts: Sequence[Sequence[int]], out_shape: Sequence[int], box: HalfOpenBox) -> Any:
    """Twin of :func:`segvol_rt.ops.blend_windows_box`: only the half-open
    ``box`` of the blended volume (e.g. the ROI without its window padding)."""
    dev = device()
    start, stop = box_bounds(tuple(int(s) for s in out_shape), box)
    size = [b - a for a, b in zip(start, stop)]
    win, st = _windows(windows, starts)
    out = dev.empty(size, np.float32)
    args = [win, st, np.int32(win.shape[0])] + _i64(*win.shape[1:]) + [out] + _i64(*size) + _i64(*start)
    dev.launch("blend_average", np.prod(size), args + [np.float32(np.nan)])
    return out


def _check_float32_volume(a: Any, shape: Sequence[int] | None, name: str) -> None:
    if a.dtype != np.float32 or a.ndim != 3 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 (D, H, W) array")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")


def blend_accumulate(total: Any, count: Any, windows: Any, starts: Sequence[Sequence[int]]) -> None:
    """Twin of :func:`segvol_rt.ops.blend_accumulate`: add a batch of windows
    into ``total`` and ``count`` in place (each voxel adds its windows in order)."""
    _check_float32_volume(total, None, "total")
    _check_float32_volume(count, total.shape, "count")
    win, st = _windows(windows, starts)
    if win.shape[0] == 0:
        return
    s = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
    lo, hi = s.min(axis=0), s.max(axis=0) + np.array(win.shape[1:])
    if (lo < 0).any() or (hi > np.array(total.shape)).any():
        raise ValueError(f"windows reach outside a volume of shape {total.shape}")
    args = [win, st, np.int32(win.shape[0])] + _i64(*win.shape[1:]) + [total, count]
    args += _i64(total.shape[1], total.shape[2]) + _i64(*lo) + _i64(*(hi - lo))
    device().launch("blend_accumulate", np.prod(hi - lo), args)


def blend_divide(total: Any, count: Any) -> Any:
    """Twin of :func:`segvol_rt.ops.blend_divide`: ``total / count``, NaN where 0."""
    dev = device()
    _check_float32_volume(total, None, "total")
    _check_float32_volume(count, total.shape, "count")
    out = dev.empty(total.shape, np.float32)
    dev.launch("blend_divide", total.size, [total, count, out, np.int64(total.size), np.float32(np.nan)])
    return out


def paste(dst: Any, src: Any, start: Sequence[int]) -> Any:
    """Twin of :func:`segvol_rt.ops.paste`: ``dst[start:start + src.shape] = src``
    in place (float32 or uint8/bool, dst C-contiguous); returns ``dst``."""
    d = _as_kernel_dtype(dst, ("float32", "uint8"), "paste")
    s = _as_kernel_dtype(src, ("float32", "uint8"), "paste")
    if d.dtype != s.dtype or d.ndim != 3 or s.ndim != 3 or not d.flags.c_contiguous:
        raise ValueError("paste needs 3D arrays of one dtype and a C-contiguous destination")
    box_bounds(d.shape, placed_box(start, s.shape))
    args = [s] + _strides(s) + _i64(*s.shape) + [d] + _i64(d.shape[1], d.shape[2]) + _i64(*start)
    device().launch(f"paste<{_ctype(d.dtype)}>", s.size, args)
    return dst


def scan_mask(
    crop_logits: Any,
    scan_shape: Sequence[int],
    perm: Sequence[int],
    flips: Sequence[bool],
    origin: Sequence[int],
    roi_logits: Any | None = None,
    roi_start: Sequence[int] = (0, 0, 0),
) -> Any:
    """Twin of :func:`segvol_rt.ops.scan_mask`: the uint8 scan-space mask
    ``sigmoid > 0.5`` straight from crop-space (and pasted ROI) logits."""
    dev = device()
    from segvol_rt.ops.assemble import check_scan_mapping

    check_scan_mapping(crop_logits.shape, scan_shape, perm, flips, origin, roi_logits, roi_start)
    crop = dev.xp.ascontiguousarray(_float32(crop_logits))
    rstart: Sequence[int]
    rshape: Sequence[int]
    if roi_logits is None:
        roi, rstart, rshape = crop, (0, 0, 0), (0, 0, 0)
    else:
        roi, rstart, rshape = dev.xp.ascontiguousarray(_float32(roi_logits)), roi_start, roi_logits.shape
    out = dev.empty(tuple(int(s) for s in scan_shape), np.uint8)
    args = [crop] + _i64(*crop.shape) + [roi] + _i64(*rstart) + _i64(*rshape) + [out] + _i64(*out.shape)
    args += [np.int32(p) for p in perm] + [np.int32(bool(f)) for f in flips] + _i64(*origin)
    dev.launch("scan_mask", out.size, args + [np.float32(positive_threshold())])
    return out
