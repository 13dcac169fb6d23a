"""Array operations of the pipeline: NumPy reference implementations, written
against the array namespace of their input so the same code runs on numpy and
cupy arrays; on cupy inputs the hot ones first try their CUDA twin in
``segvol_rt.gpu_ops`` (see :func:`_gpu_twin`).

Volumes are 3D arrays in model space, axis order (D, H, W). Boxes are
``(d0, h0, w0, d1, h1, w1)``; whether the max corner is inclusive or
half-open is stated per function. Every resize matches
``torch.nn.functional.interpolate`` on a (1, 1, D, H, W) tensor with an
explicit ``size`` (never ``scale_factor``), ``align_corners=False``.

Groups, in file order:

* namespace and GPU dispatch;
* resize index tables (host numpy; the CUDA twins use the same tables);
* resize, fused upsample-then-nearest;
* sigmoid, positive mask, bounding boxes;
* intensity normalisation (official ForegroundNormalization, MinMaxNormalization)
  with numpy 1.x float32 semantics reproduced bit for bit;
* sliding-window plan and blending (MONAI ``sliding_window_inference``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

Box = tuple[int, int, int, int, int, int]
MODES = ("nearest", "nearest-exact", "trilinear")

# -- namespace and GPU dispatch ----------------------------------------------


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def array_namespace(x: Any) -> Any:
    """numpy for numpy arrays, cupy for cupy arrays."""
    if _is_cupy(x):
        import cupy  # only reachable when the caller already holds a cupy array

        return cupy
    return np


def _gpu_twin(name: str, x: Any) -> Callable[..., Any] | None:
    """The CUDA twin ``segvol_rt.gpu_ops.<name>`` for a cupy ``x``, else None.

    The seam for the kernels: a twin takes the same arguments and returns the
    same result as the function it replaces. numpy inputs never look for one;
    cupy inputs fall back to this module's array code when there is none."""
    if not _is_cupy(x):
        return None
    try:
        from . import gpu_ops  # type: ignore[attr-defined]
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.gpu_ops":
            raise
        return None
    return getattr(gpu_ops, name, None)


def _host(values: Any) -> np.ndarray:
    """A small device array (indices, per-chunk sums) as a numpy array."""
    return values.get() if _is_cupy(values) else np.asarray(values)


# -- resize index tables (torch ATen UpSample.h, CPU) --------------------------


def _check_sizes(in_size: int, out_size: int) -> None:
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")


def _fma_f32(a: Any, b: Any, c: Any) -> Any:
    """float32 ``fma(a, b, c)``: the float32 product is exact in float64, so one
    float64 add and a rounding to float32 give the fused result (a double
    rounding could differ in the last bit only on an exact float32 tie)."""
    xp = array_namespace(a)
    out = xp.asarray(a, dtype=xp.float64) * xp.asarray(b, dtype=xp.float64)
    out += c
    return out.astype(xp.float32)


def _source_coordinate(in_size: int, out_size: int) -> np.ndarray:
    """``max(scale * (dst + 0.5) - 0.5, 0)`` in float32 with ``scale = float32(in) / out``.

    torch's x86 CPU kernels (AVX2/AVX512 builds, i.e. any recent x86-64) are
    compiled with the multiply-subtract contracted into one FMA; that rounding
    is reproduced here. (The scalar DEFAULT build rounds the product first and
    differs for a few size pairs.)"""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    src = _fma_f32(np.full(out_size, scale, dtype=f32), np.arange(out_size, dtype=f32) + f32(0.5), -0.5)
    return np.maximum(src, f32(0))


def nearest_source_index(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """Source index of each output index along one axis, int64 ``(out_size,)``,
    as torch's CPU kernel: ``scale = float32(in) / out`` and float32 arithmetic;

    * ``nearest``: ``min(floor(dst * scale), in - 1)``;
    * ``nearest-exact``: ``min(floor(float32(src + 0.5)), in - 1)`` with ``src``
      from :func:`_source_coordinate` (the FMA-contracted form)."""
    _check_sizes(in_size, out_size)
    f32 = np.float32
    if mode == "nearest":
        src = np.floor(np.arange(out_size, dtype=f32) * (f32(in_size) / f32(out_size)))
    elif mode == "nearest-exact":
        src = np.floor((_source_coordinate(in_size, out_size).astype(np.float64) + 0.5).astype(f32))
    else:
        raise ValueError(f"unknown nearest mode {mode!r}")
    return np.minimum(src.astype(np.int64), in_size - 1)


class LinearTable(NamedTuple):
    """Linear interpolation along one axis: ``out[o] = fma(x[i0[o]], w0[o], x[i1[o]] * w1[o])``."""

    i0: np.ndarray  # int64 (n,)
    i1: np.ndarray  # int64 (n,)
    w0: np.ndarray  # float32 (n,)
    w1: np.ndarray  # float32 (n,)

    def take(self, positions: np.ndarray) -> "LinearTable":
        return LinearTable(*(a[positions] for a in self))

    def shift(self, offset: int) -> "LinearTable":
        return LinearTable(self.i0 + offset, self.i1 + offset, self.w0, self.w1)


def linear_source_index(in_size: int, out_size: int) -> LinearTable:
    """Trilinear (``align_corners=False``) sources and weights along one axis, as
    torch's CPU kernel: ``src`` from :func:`_source_coordinate`, ``i0 = floor(src)``,
    ``i1 = i0 + (i0 < in - 1)``, ``w1 = clip(src - i0, 0, 1)``, ``w0 = 1 - w1``."""
    _check_sizes(in_size, out_size)
    f32 = np.float32
    src = _source_coordinate(in_size, out_size)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    i1 = i0 + (i0 < in_size - 1)
    return LinearTable(i0, i1, (f32(1) - w1).astype(f32), w1)


# -- resize ----------------------------------------------------------------


def _check_volume(x: Any) -> None:
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"expected a 3D (D, H, W) array, got shape {getattr(x, 'shape', None)}")


def _box_bounds(shape: Sequence[int], box: Box | None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(start, stop) of a half-open box, checked against ``shape``."""
    if box is None:
        return (0, 0, 0), tuple(int(s) for s in shape)  # type: ignore[return-value]
    start = tuple(int(v) for v in box[:3])
    stop = tuple(int(v) for v in box[3:])
    for a, b, n in zip(start, stop, shape):
        if not 0 <= a < b <= n:
            raise ValueError(f"box {tuple(box)} is empty or outside a volume of shape {tuple(shape)}")
    return start, stop  # type: ignore[return-value]


def _gather(x: Any, indices: Sequence[np.ndarray | None]) -> Any:
    """``x[i0][:, i1][:, :, i2]`` for per-axis int index arrays (None: whole
    axis), as a new C-contiguous array.

    The gathers run in the memory order of ``x`` (a transposed view of a
    Fortran-ordered volume reads as fast as a C-ordered one), shrinking axes
    first so the intermediate arrays stay small; contiguous runs are slices."""
    perm = sorted(range(3), key=lambda a: -abs(x.strides[a]))
    out = _gather_c(x.transpose(perm), [indices[a] for a in perm])
    out = out.transpose([perm.index(a) for a in range(3)])
    return array_namespace(x).ascontiguousarray(out)


def _gather_c(x: Any, indices: Sequence[np.ndarray | None]) -> Any:
    xp = array_namespace(x)
    out, copied = x, False
    order = sorted(range(3), key=lambda a: len(indices[a]) / x.shape[a] if indices[a] is not None else 1.0)
    for axis in order:
        idx = indices[axis]
        if idx is None:
            continue
        first = int(idx[0])
        if np.array_equal(idx, np.arange(first, first + len(idx))):
            sl = [slice(None)] * 3
            sl[axis] = slice(first, first + len(idx))
            out = out[tuple(sl)]
        else:
            out, copied = xp.take(out, xp.asarray(idx), axis=axis), True
    return out if copied else out.copy()


def _linear_pass(x: Any, axis: int, table: LinearTable) -> Any:
    """Linear interpolation along ``axis`` of a float32 array, rounded as torch's
    x86 CPU kernel: ``fma(a, w0, float32(b * w1))``."""
    xp = array_namespace(x)
    shape = [1, 1, 1]
    shape[axis] = len(table.i0)
    b = xp.take(x, xp.asarray(table.i1), axis=axis)
    b *= xp.asarray(table.w1).reshape(shape)
    a = xp.take(x, xp.asarray(table.i0), axis=axis)
    return _fma_f32(a, xp.asarray(table.w0).reshape(shape), b)


def _trilinear(x: Any, tables: Sequence[LinearTable]) -> Any:
    """Separable trilinear resampling, float32.

    torch nests the interpolation with W innermost, then H, then D, so the W
    pass runs first; with the same float32 roundings per output the result
    matches torch's CPU kernel bit for bit. Only the source rows a table reads are
    gathered first (a pure copy) so downsampling stays cheap."""
    xp = array_namespace(x)
    used: list[np.ndarray | None] = []
    local: list[LinearTable] = []
    for axis, t in enumerate(tables):
        rows = np.unique(np.concatenate([t.i0, t.i1]))
        used.append(rows)
        local.append(LinearTable(np.searchsorted(rows, t.i0), np.searchsorted(rows, t.i1), t.w0, t.w1))
    sub = _gather(x, used)
    if sub.dtype != xp.float32:
        sub = sub.astype(xp.float32)
    for axis in (2, 1, 0):
        sub = _linear_pass(sub, axis, local[axis])
    return sub


def resize(x: Any, size: Sequence[int], mode: str, box: Box | None = None) -> Any:
    """Crop ``x`` (D, H, W) to the half-open ``box`` (whole volume if None), then
    resize to ``size`` with ``mode`` exactly as torch's ``F.interpolate``.

    Returns a new array: float32 for ``trilinear`` (any input dtype is read as
    float32), ``x.dtype`` for the nearest modes (bool, integers, floats)."""
    twin = _gpu_twin("resize", x)
    if twin is not None:
        return twin(x, size, mode, box)
    _check_volume(x)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise ValueError(f"size must have 3 entries, got {size}")
    start, stop = _box_bounds(x.shape, box)
    extent = [b - a for a, b in zip(start, stop)]
    if mode in ("nearest", "nearest-exact"):
        return _gather(x, [nearest_source_index(n, s, mode) + a for n, s, a in zip(extent, size, start)])
    if mode == "trilinear":
        return _trilinear(x, [linear_source_index(n, s).shift(a) for n, s, a in zip(extent, size, start)])
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {MODES}")


def upsample_then_nearest(low_res: Any, mid_size: Sequence[int], out_size: Sequence[int]) -> Any:
    """``resize(resize(low_res, mid_size, "trilinear"), out_size, "nearest")`` fused:
    the decoder's low-res logits (4d, 4h, 4w) -> window size -> crop-space size.

    The nearest step only selects grid positions of the trilinear result, so
    the trilinear samples are computed once for each selected position and
    then repeated: the same float32 arithmetic per voxel, bit-identical to the
    two resizes, without the intermediate volume. Returns float32."""
    twin = _gpu_twin("upsample_then_nearest", low_res)
    if twin is not None:
        return twin(low_res, mid_size, out_size)
    _check_volume(low_res)
    tables, repeat = [], []
    for n, m, o in zip(low_res.shape, mid_size, out_size):
        picks = nearest_source_index(int(m), int(o), "nearest")
        unique, inverse = np.unique(picks, return_inverse=True)
        tables.append(linear_source_index(int(n), int(m)).take(unique))
        repeat.append(None if len(unique) == len(picks) else inverse.reshape(-1))
    samples = _trilinear(low_res, tables)
    return _gather(samples, repeat) if any(r is not None for r in repeat) else samples


# -- sigmoid, masks, boxes ------------------------------------------------------

# torch.sigmoid(x) > 0.5 in float32 exactly when x > 3 * 2**-25: below that,
# exp(-x) rounds to 1 - 2**-24 or above and 1 + exp(-x) rounds to 2.
# (Checked against torch on every float32 near the boundary.)
_POSITIVE_LOGIT = float(3 * 2.0**-25)


def sigmoid(x: Any) -> Any:
    """float32 logistic function ``1 / (1 + exp(-x))``, the formula torch uses;
    numpy's float32 exp may differ from torch's by 1 ulp, so threshold logits
    with :func:`positive_mask`, not this."""
    twin = _gpu_twin("sigmoid", x)
    if twin is not None:
        return twin(x)
    xp = array_namespace(x)
    y = xp.negative(xp.asarray(x, dtype=xp.float32))
    xp.exp(y, out=y)
    y += xp.float32(1)
    xp.reciprocal(y, out=y)
    return y


def positive_mask(logits: Any) -> Any:
    """bool ``torch.sigmoid(logits) > 0.5`` in float32 (the official prediction rule).

    Not the same as ``logits > 0``: for positive logits up to 3 * 2**-25 the
    float32 sigmoid is exactly 0.5. torch's float32 exp rounds correctly there,
    so the rule is the threshold compare below, without computing a sigmoid."""
    twin = _gpu_twin("positive_mask", logits)
    if twin is not None:
        return twin(logits)
    xp = array_namespace(logits)
    return xp.asarray(logits) > xp.float32(_POSITIVE_LOGIT)


def _extent(flags: Any) -> tuple[int, int]:
    idx = _host(array_namespace(flags).flatnonzero(flags))
    return int(idx[0]), int(idx[-1])


def bounding_box(mask: Any) -> Box | None:
    """Inclusive bounding box ``(d0, h0, w0, d1, h1, w1)`` of nonzero voxels, or None."""
    twin = _gpu_twin("bounding_box", mask)
    if twin is not None:
        return twin(mask)
    _check_volume(mask)
    if mask.dtype != bool:
        mask = mask != 0
    along_d = mask.any(axis=(1, 2))
    if not bool(along_d.any()):
        return None
    d0, d1 = _extent(along_d)
    plane = mask[d0 : d1 + 1].any(axis=0)
    h0, h1 = _extent(plane.any(axis=1))
    w0, w1 = _extent(plane.any(axis=0))
    return (d0, h0, w0, d1, h1, w1)


def positive_box(logits: Any) -> Box | None:
    """Inclusive bounding box of ``sigmoid(logits) > 0.5`` (official ROI source), or None."""
    twin = _gpu_twin("positive_box", logits)
    if twin is not None:
        return twin(logits)
    return bounding_box(positive_mask(logits))


# -- intensity normalisation -------------------------------------------------------
#
# The official ForegroundNormalization and MinMaxNormalization ran on float32
# arrays under numpy 1.x. Their float32 results depend on numpy 1.x details
# that numpy 2 changed, so they are reproduced explicitly here:
#
# * float32 sums (np.mean / np.std) are pairwise sums over blocks of 8192
#   elements (the ufunc buffer), the block sums added one after another; numpy
#   2 sums the whole array pairwise. See _sum_f32.
# * np.mean of a float32 array: float32 sum / count in float64, rounded to
#   float32. np.std: mean as float32 sum / float32(count) in float32, squared
#   deviations in float32, their sum / count in float64, rounded, float32 sqrt.
# * np.percentile (linear) interpolates in float64; np.clip then applies the
#   bounds rounded to float32 (value-based casting). numpy 2 returns float32.
# * Every other step stays float32 (float64 scalars never promote a float32
#   array under numpy 1.x; here they are cast to float32 explicitly).
#
# The element order of those sums is the memory order of the scan array (the
# official flattened a C-ordered array). For a C-contiguous input the stats
# are bit-identical to the official ones; for another layout (nibabel's
# Fortran order) only the float32 summation order differs (about 1 ulp in the
# mean and std) because re-ordering 200 MB costs more than all the rest.

_NP1_BLOCK = 8192  # numpy 1.x ufunc buffer size: the unit of its float32 sums
_PW_LEAF = 128  # numpy pairwise-sum leaf size (8 interleaved accumulators)
_SLAB = 1 << 17  # elements per cache-sized slab in the blocked numpy loops


class ForegroundStats(NamedTuple):
    """Official ForegroundNormalization statistics of the voxels above the volume mean.

    ``lower``/``upper``: 0.05th/99.95th percentiles as numpy 1.x computed them
    (float64); ``mean``/``std``: float32 values (held as Python floats)."""

    lower: float
    upper: float
    mean: float
    std: float


def _pairwise_rows(a: Any) -> Any:
    """numpy's pairwise float32 sum of each row of ``a`` (rows, n), any n."""
    xp = array_namespace(a)
    rows, n = a.shape
    if n < 8:
        res = xp.zeros(rows, dtype=xp.float32)
        for i in range(n):
            res = res + a[:, i]
        return res
    if n <= _PW_LEAF:
        whole = n - n % 8
        r = a[:, :8].copy()
        for i in range(8, whole, 8):
            r += a[:, i : i + 8]
        res = ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))
        for i in range(whole, n):
            res = res + a[:, i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_rows(a[:, :half]) + _pairwise_rows(a[:, half:])


def _emulated_block_sums(blocks: Any) -> Any:
    """numpy's pairwise sum of each full 8192-element block, (nblocks, 8192) -> (nblocks,).

    8192 = 64 leaves of 128; each leaf adds 16 rows of 8 accumulators in
    sequence, folds them as ((0+1)+(2+3))+((4+5)+(6+7)), then the 64 leaf sums
    combine as a balanced binary tree. Vectorised over blocks and leaves."""
    v = blocks.reshape(blocks.shape[0], _NP1_BLOCK // _PW_LEAF, _PW_LEAF // 8, 8)
    r = v[:, :, 0, :].copy()
    for k in range(1, v.shape[2]):
        r += v[:, :, k, :]
    s = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
    while s.shape[1] > 1:
        s = s[:, 0::2] + s[:, 1::2]
    return s[:, 0]


@functools.lru_cache(maxsize=None)
def _numpy_rows_are_pairwise() -> bool:
    """Whether this numpy sums each contiguous float32 row with the pairwise
    algorithm emulated above (true for numpy 1.9 to 2.x). Then a row-wise
    ``np.add.reduce`` gives the block sums at memory speed."""
    rows = np.random.default_rng(0).normal(0, 1000, (4, _NP1_BLOCK)).astype(np.float32)
    short = rows[:, :5003]
    return bool(
        np.array_equal(np.add.reduce(rows, axis=1), _emulated_block_sums(rows))
        and np.array_equal(np.add.reduce(short, axis=1), _pairwise_rows(short))
    )


def _block_sums(blocks: Any) -> Any:
    if not _is_cupy(blocks) and _numpy_rows_are_pairwise():
        return np.add.reduce(blocks, axis=1)
    return _emulated_block_sums(blocks)


def _tail_sum(rest: Any) -> Any:
    """Pairwise sum of the last, partial block (fewer than 8192 elements), shape (1,)."""
    rows = rest.reshape(1, -1)
    if not _is_cupy(rest) and _numpy_rows_are_pairwise():
        return np.add.reduce(rows, axis=1)
    return _pairwise_rows(rows)


def _sum_f32(flat: Any, transform: Callable[[Any], Any] | None = None) -> np.float32:
    """numpy 1.x ``np.add.reduce`` of a 1D float32 array, bit for bit.

    ``transform`` maps a slab of ``flat`` to the values to sum (e.g. squared
    deviations) so no full-size temporary is made."""
    n = flat.shape[0]
    full = n - n % _NP1_BLOCK
    # slabs only bound the transform's temporaries; plain sums run in one call
    slab = full if (_is_cupy(flat) or transform is None) else max(_SLAB - _SLAB % _NP1_BLOCK, _NP1_BLOCK)
    partial = []
    for s in range(0, full, slab or 1):
        part = flat[s : min(s + slab, full)]
        part = transform(part) if transform else part
        partial.append(_block_sums(part.reshape(-1, _NP1_BLOCK)))
    sums = [_host(p) for p in partial]
    if full < n:
        rest = flat[full:]
        rest = transform(rest) if transform else rest
        sums.append(_host(_tail_sum(rest)))
    if not sums:
        return np.float32(0)
    # the block sums accumulate one after another from 0, as numpy 1.x did
    return np.add.accumulate(np.concatenate(sums).astype(np.float32))[-1]


def _np1_mean(flat: Any) -> np.float32:
    """numpy 1.x ``np.mean`` of a float32 vector."""
    return np.float32(float(_sum_f32(flat)) / flat.shape[0])


def _np1_std(flat: Any) -> np.float32:
    """numpy 1.x ``np.std`` of a float32 vector."""
    xp = array_namespace(flat)
    n = flat.shape[0]
    center = xp.float32(_sum_f32(flat) / np.float32(n))

    def squared_deviation(part: Any) -> Any:
        d = part - center
        d *= d
        return d

    var = np.float32(float(_sum_f32(flat, squared_deviation)) / n)
    return np.sqrt(var)


def _np1_percentile_positions(n: int, q: float) -> tuple[int, int, float]:
    """numpy 1.x linear-method neighbours (prev, next) and weight of percentile q."""
    v = (n - 1) * (q / 100)
    if v >= n - 1:
        return n - 1, n - 1, 0.0
    prev = math.floor(v)
    return prev, prev + 1, v - prev


def _lerp64(a: float, b: float, t: float) -> float:
    """numpy 1.x ``_lerp`` for float32 neighbours: difference in float32, rest in float64."""
    diff = float(np.float32(b) - np.float32(a))
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _select_ranks(flat: Any, ranks: Sequence[int], low: bool) -> list[float]:
    """Exact order statistics ``sorted(flat)[r]`` for ranks near one end.

    A threshold from a strided sample keeps only the tail (all values <= t for
    the low end, >= t for the high end: ranks inside the tail equal ranks in
    the whole) and np.partition runs on that tail; the threshold widens until
    the tail holds the ranks. Same values as a full partition or sort."""
    xp = array_namespace(flat)
    n = flat.shape[0]
    need = (max(ranks) + 1) if low else (n - min(ranks))
    step = max(1, n // 65536)
    sample = xp.sort(flat[::step])
    m = sample.shape[0]
    frac = need / n
    while True:
        j = min(m - 1, int(frac * m * 1.5) + 64)
        t = sample[j] if low else sample[m - 1 - j]
        tail = flat[flat <= t] if low else flat[flat >= t]
        if tail.shape[0] >= need or j == m - 1:
            break
        frac = min(1.0, frac * 4 + 64 / m)
    if tail.shape[0] < need:  # the sample missed: fall back to the whole array
        tail = flat
    local = [r if low else r - (n - tail.shape[0]) for r in ranks]
    part = xp.partition(tail, sorted(set(local)))
    return [float(_host(part[k : k + 1])[0]) for k in local]


def _percentiles_np1(flat: Any) -> tuple[float, float]:
    """numpy 1.x ``np.percentile(flat, 0.05)`` and ``np.percentile(flat, 99.95)``."""
    n = flat.shape[0]
    lo_prev, lo_next, lo_t = _np1_percentile_positions(n, 0.05)
    hi_prev, hi_next, hi_t = _np1_percentile_positions(n, 99.95)
    a, b = _select_ranks(flat, [lo_prev, lo_next], low=True)
    c, d = _select_ranks(flat, [hi_prev, hi_next], low=False)
    return _lerp64(a, b, lo_t), _lerp64(c, d, hi_t)


def _memory_order(volume: Any) -> Any:
    """The elements of ``volume`` as a 1D float32 array in memory order (a view when contiguous)."""
    xp = array_namespace(volume)
    flat = volume.ravel(order="K")
    return flat if flat.dtype == xp.float32 else flat.astype(xp.float32)


def foreground_stats(volume: Any) -> ForegroundStats:
    """Official ForegroundNormalization statistics of the voxels above the volume mean:
    (0.05th percentile, 99.95th percentile, mean, std); see the module notes.

    Raises ValueError when no voxel lies above the mean (constant volume,
    NaN/inf); callers turn that into a user error."""
    twin = _gpu_twin("foreground_stats", volume)
    if twin is not None:
        return twin(volume)
    flat = _memory_order(volume)
    if flat.shape[0] == 0:
        raise ValueError("empty volume")
    xp = array_namespace(flat)
    threshold = _np1_mean(flat)
    if not np.isfinite(threshold):
        raise ValueError("volume contains NaN or infinite values")
    selected = flat[flat > xp.float32(threshold)]
    if selected.shape[0] == 0:
        raise ValueError("volume is constant: no voxel lies above its mean")
    lower, upper = _percentiles_np1(selected)
    return ForegroundStats(lower, upper, float(_np1_mean(selected)), float(_np1_std(selected)))


def _std_divisor(std: float) -> np.float32:
    # official: max(std, 1e-8); a float64 1e-8 divides a float32 array as float32
    return np.float32(std) if std > 1e-8 else np.float32(1e-8)


def _normalize_into(src: Any, stats: ForegroundStats, out: Any) -> Any:
    xp = array_namespace(src)
    xp.clip(src, xp.float32(stats.lower), xp.float32(stats.upper), out=out)
    out -= xp.float32(stats.mean)
    out /= xp.float32(_std_divisor(stats.std))
    return out


def _min_max_into(src: Any, low: Any, scale: Any, out: Any) -> Any:
    xp = array_namespace(src)
    xp.subtract(src, low, out=out)
    out /= scale
    return out


def _blocked(volume: Any, out: Any, fn: Callable[[Any, Any], Any]) -> Any:
    """Apply the elementwise ``fn(src, dst)`` slab by slab in memory order so
    chained in-place steps stay in cache; whole arrays on cupy or odd layouts."""
    src, dst = _flat_view(volume), _flat_view(out)
    if src is None or dst is None or _is_cupy(volume):
        fn(volume, out)
        return out
    for s in range(0, src.shape[0], _SLAB):
        fn(src[s : s + _SLAB], dst[s : s + _SLAB])
    return out


def _flat_view(a: Any) -> Any:
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if a.flags.f_contiguous:
        return a.T.reshape(-1)
    return None


def _float32_like(volume: Any, out: Any | None) -> Any:
    xp = array_namespace(volume)
    if out is None:
        layout = "F" if (volume.flags.f_contiguous and not volume.flags.c_contiguous) else "C"
        out = xp.empty(volume.shape, dtype=xp.float32, order=layout)
    if out.shape != volume.shape or out.dtype != xp.float32:
        raise ValueError(f"out must be float32 of shape {volume.shape}")
    return out


def normalize(volume: Any, stats: ForegroundStats | Sequence[float], out: Any | None = None) -> Any:
    """Clip to the percentiles and z-score with mean/std, float32 (official
    ForegroundNormalization's transform). ``out`` may be ``volume`` itself."""
    twin = _gpu_twin("normalize", volume)
    if twin is not None:
        return twin(volume, stats, out)
    stats = ForegroundStats(*stats)
    out = _float32_like(volume, out)
    return _blocked(volume, out, lambda s, d: _normalize_into(s, stats, d))


def min_max(volume: Any, out: Any | None = None) -> Any:
    """Official MinMaxNormalization to [0, 1]: ``(x - min) / max(max - min, 1e-8)``, float32.

    ``max(x - min)`` equals ``float32(max(x) - min)`` (rounding is monotonic),
    so both extremes come from one reduction each on the input."""
    twin = _gpu_twin("min_max", volume)
    if twin is not None:
        return twin(volume, out)
    xp = array_namespace(volume)
    low = xp.float32(volume.min())
    scale = _min_max_scale(low, xp.float32(volume.max()))
    out = _float32_like(volume, out)
    return _blocked(volume, out, lambda s, d: _min_max_into(s, low, scale, d))


def _min_max_scale(low: np.float32, high: np.float32) -> np.float32:
    span = np.float32(high - low)
    return span if span > 1e-8 else np.float32(1e-8)


def normalize_min_max(volume: Any, stats: ForegroundStats | Sequence[float]) -> Any:
    """``min_max(normalize(volume, stats))`` in one cache-blocked pass, bit-identical.

    The normalisation is monotonic in float32 (clip, subtract, divide by a
    positive number), so the extremes of its result are the normalised
    extremes of the input: no second pass over the volume to find them."""
    twin = _gpu_twin("normalize_min_max", volume)
    if twin is not None:
        return twin(volume, stats)
    xp = array_namespace(volume)
    stats = ForegroundStats(*stats)
    ends = xp.stack([xp.min(volume), xp.max(volume)]).astype(xp.float32)
    low, high = _host(_normalize_into(ends, stats, xp.empty_like(ends)))
    scale = _min_max_scale(np.float32(low), np.float32(high))
    low32, scale32 = xp.float32(low), xp.float32(scale)

    def both(s: Any, d: Any) -> None:
        _normalize_into(s, stats, d)
        _min_max_into(d, low32, scale32, d)

    return _blocked(volume, _float32_like(volume, None), both)


# -- sliding windows (MONAI sliding_window_inference, constant blending) --------------


def pad_for_windows(image_size: Sequence[int], roi_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Per-axis (before, after) zero padding that makes each axis at least the
    window size: ``diff = max(roi - size, 0)``, ``before = diff // 2``."""
    pads = []
    for size, roi in zip(image_size, roi_size):
        diff = max(int(roi) - int(size), 0)
        pads.append((diff // 2, diff - diff // 2))
    return tuple(pads)


def _scan_interval(size: int, roi: int, overlap: float) -> int:
    if roi == size:
        return roi
    return max(int(roi * (1 - overlap)), 1)


def _axis_starts(size: int, roi: int, interval: int) -> list[int]:
    count = 1
    if interval > 0:
        candidates = [d for d in range(int(math.ceil(size / interval))) if d * interval + roi >= size]
        count = candidates[0] + 1 if candidates else 1
    return [min(i * interval, size - roi) for i in range(count)]


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
    """Window start corners in padded coordinates, in MONAI order (meshgrid "ij":
    the last axis varies fastest). ``image_size`` is the unpadded size.

    Per axis: ``interval = int(roi * (1 - overlap))`` (``roi`` if the padded
    size equals the window, at least 1); windows until ``d * interval + roi >=
    size``; starts clamped to ``size - roi``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    padded = [max(int(s), int(r)) for s, r in zip(image_size, roi_size)]
    axes = [_axis_starts(s, int(r), _scan_interval(s, int(r), overlap)) for s, r in zip(padded, roi_size)]
    return [(d, h, w) for d in axes[0] for h in axes[1] for w in axes[2]]


def blend_windows(windows: Any, starts: Sequence[Sequence[int]], out_shape: Sequence[int]) -> Any:
    """Constant-weight average of window logits ``(n, wd, wh, ww)`` placed at
    ``starts`` in a volume of ``out_shape`` (padded coordinates), float32.

    As MONAI: windows added in order into a zero float32 volume, a float32
    count of the windows covering each voxel, then sum / count. Voxels no
    window covers are 0 / 0 = NaN (a full window plan covers every voxel)."""
    twin = _gpu_twin("blend_windows", windows)
    if twin is not None:
        return twin(windows, starts, out_shape)
    xp = array_namespace(windows)
    if windows.ndim != 4 or len(starts) != windows.shape[0]:
        raise ValueError(f"expected (n, d, h, w) windows with n starts, got {windows.shape} and {len(starts)}")
    total = xp.zeros(tuple(int(s) for s in out_shape), dtype=xp.float32)
    count = xp.zeros_like(total)
    wd, wh, ww = windows.shape[1:]
    for window, (d, h, w) in zip(windows, starts):
        region = (slice(d, d + wd), slice(h, h + wh), slice(w, w + ww))
        total[region] += window
        count[region] += xp.float32(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total /= count
    return total


def unpad(volume: Any, pads: Sequence[tuple[int, int]]) -> Any:
    """Remove the :func:`pad_for_windows` padding again (a view)."""
    index = tuple(slice(b, n - a) for (b, a), n in zip(pads, volume.shape))
    return volume[index]
