"""numpy 1.x float32 statistics, reproduced bit for bit on numpy 2 and cupy.

The official ForegroundNormalization ran on float32 arrays under numpy 1.x;
the sums, means, standard deviations and percentiles here give its exact
float32 results (see the notes below). :mod:`segvol_rt.ops.intensity` builds
the normalisation on them; the CUDA twins reuse the block layout and the
host-side percentile arithmetic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segvol_rt.ops.dispatch import array_namespace, host_values, is_cupy

#
# The official ForegroundNormalization and MinMaxNormalization ran on float32
# arrays under numpy 1.x. Their float32 results depend on numpy 1.x details
# that numpy 2 changed, so they are reproduced explicitly here:
#
# * float32 sums (np.mean / np.std) are pairwise sums over blocks of 8192
#   elements (the ufunc buffer), the block sums added one after another; numpy
#   2 sums the whole array pairwise. See sum_f32.
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

NP1_BLOCK = 8192  # numpy 1.x ufunc buffer size: the unit of its float32 sums
_PW_LEAF = 128  # numpy pairwise-sum leaf size (8 interleaved accumulators)
SLAB = 1 << 17  # elements per cache-sized slab in the blocked numpy loops


def pairwise_rows(a: Any) -> Any:
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
    return pairwise_rows(a[:, :half]) + pairwise_rows(a[:, half:])


def emulated_block_sums(blocks: Any) -> Any:
    """numpy's pairwise sum of each full 8192-element block, (nblocks, 8192) -> (nblocks,).

    8192 = 64 leaves of 128; each leaf adds 16 rows of 8 accumulators in
    sequence, folds them as ((0+1)+(2+3))+((4+5)+(6+7)), then the 64 leaf sums
    combine as a balanced binary tree. Vectorised over blocks and leaves."""
    v = blocks.reshape(blocks.shape[0], NP1_BLOCK // _PW_LEAF, _PW_LEAF // 8, 8)
    r = v[:, :, 0, :].copy()
    for k in range(1, v.shape[2]):
        r += v[:, :, k, :]
    s = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
    while s.shape[1] > 1:
        s = s[:, 0::2] + s[:, 1::2]
    return s[:, 0]


@functools.cache
def numpy_rows_are_pairwise() -> bool:
    """Whether this numpy sums each contiguous float32 row with the pairwise
    algorithm emulated above (true for numpy 1.9 to 2.x). Then a row-wise
    ``np.add.reduce`` gives the block sums at memory speed."""
    rows = np.random.default_rng(0).normal(0, 1000, (4, NP1_BLOCK)).astype(np.float32)
    short = rows[:, :5003]
    return bool(
        np.array_equal(np.add.reduce(rows, axis=1), emulated_block_sums(rows))
        and np.array_equal(np.add.reduce(short, axis=1), pairwise_rows(short))
    )


def block_sums(blocks: Any) -> Any:
    if not is_cupy(blocks) and numpy_rows_are_pairwise():
        return np.add.reduce(blocks, axis=1)
    return emulated_block_sums(blocks)


def tail_sum(rest: Any) -> Any:
    """Pairwise sum of the last, partial block (fewer than 8192 elements), shape (1,)."""
    rows = rest.reshape(1, -1)
    if not is_cupy(rest) and numpy_rows_are_pairwise():
        return np.add.reduce(rows, axis=1)
    return pairwise_rows(rows)


def sum_f32(flat: Any, transform: Callable[[Any], Any] | None = None) -> np.float32:
    """numpy 1.x ``np.add.reduce`` of a 1D float32 array, bit for bit.

    ``transform`` maps a slab of ``flat`` to the values to sum (e.g. squared
    deviations) so no full-size temporary is made."""
    n = flat.shape[0]
    full = n - n % NP1_BLOCK
    # slabs only bound the transform's temporaries; plain sums run in one call
    slab = full if (is_cupy(flat) or transform is None) else max(SLAB - SLAB % NP1_BLOCK, NP1_BLOCK)
    partial = []
    for s in range(0, full, slab or 1):
        part = flat[s : min(s + slab, full)]
        part = transform(part) if transform else part
        partial.append(block_sums(part.reshape(-1, NP1_BLOCK)))
    sums = [host_values(p) for p in partial]
    if full < n:
        rest = flat[full:]
        rest = transform(rest) if transform else rest
        sums.append(host_values(tail_sum(rest)))
    if not sums:
        return np.float32(0)
    # the block sums accumulate one after another from 0, as numpy 1.x did
    return np.add.accumulate(np.concatenate(sums).astype(np.float32))[-1]


def np1_mean(flat: Any) -> np.float32:
    """numpy 1.x ``np.mean`` of a float32 vector."""
    return np.float32(float(sum_f32(flat)) / flat.shape[0])


def np1_std(flat: Any) -> np.float32:
    """numpy 1.x ``np.std`` of a float32 vector."""
    xp = array_namespace(flat)
    n = flat.shape[0]
    center = xp.float32(sum_f32(flat) / np.float32(n))

    def squared_deviation(part: Any) -> Any:
        d = part - center
        d *= d
        return d

    var = np.float32(float(sum_f32(flat, squared_deviation)) / n)
    return np.sqrt(var)


def percentile_positions(n: int, q: float) -> tuple[int, int, float]:
    """numpy 1.x linear-method neighbours (prev, next) and weight of percentile q."""
    v = (n - 1) * (q / 100)
    if v >= n - 1:
        return n - 1, n - 1, 0.0
    prev = math.floor(v)
    return prev, prev + 1, v - prev


def lerp64(a: float, b: float, t: float) -> float:
    """numpy 1.x ``_lerp`` for float32 neighbours: difference in float32, rest in float64."""
    diff = float(np.float32(b) - np.float32(a))
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def select_ranks(flat: Any, ranks: Sequence[int], low: bool) -> list[float]:
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
    return [float(host_values(part[k : k + 1])[0]) for k in local]


def percentiles_np1(flat: Any) -> tuple[float, float]:
    """numpy 1.x ``np.percentile(flat, 0.05)`` and ``np.percentile(flat, 99.95)``."""
    n = flat.shape[0]
    lo_prev, lo_next, lo_t = percentile_positions(n, 0.05)
    hi_prev, hi_next, hi_t = percentile_positions(n, 99.95)
    a, b = select_ranks(flat, [lo_prev, lo_next], low=True)
    c, d = select_ranks(flat, [hi_prev, hi_next], low=False)
    return lerp64(a, b, lo_t), lerp64(c, d, hi_t)


