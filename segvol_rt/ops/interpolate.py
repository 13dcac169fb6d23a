"""Resize: torch ``F.interpolate`` on a ``(1, 1, D, H, W)`` tensor, exactly.

Every resize matches ``torch.nn.functional.interpolate`` with an explicit
``size`` (never ``scale_factor``) and ``align_corners=False``: the index tables
(host numpy, shared with the CUDA twins) reproduce torch's float32 index
arithmetic, and the trilinear passes its float32 roundings. Volumes are 3D
``(D, H, W)`` arrays; boxes are half-open (:data:`segvol_rt.ops.boxes.HalfOpenBox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from segvol_rt.ops.boxes import HalfOpenBox, box_bounds, check_volume
from segvol_rt.ops.dispatch import array_namespace, cuda_twin
from segvol_rt.ops.masks import positive_mask

MODES = ("nearest", "nearest-exact", "trilinear")
# elements per slab of a trilinear pass (:func:`_linear_pass`): its float64 temporaries
# (1 MiB each) stay in cache and are reused from the heap
PASS_CHUNK = 1 << 17

# -- resize index tables (torch ATen UpSample.h, CPU) --------------------------


def _check_sizes(in_size: int, out_size: int) -> None:
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")


def _fma_f32(a: Any, b: Any, c: Any, out: Any | None = None) -> Any:
    """float32 ``fma(a, b, c)``, into ``out`` (float32, the broadcast shape) when given:
    the float32 product is exact in float64, so one float64 add and a rounding
    to float32 give the fused result (a double rounding could differ in the last
    bit only on an exact float32 tie)."""
    xp = array_namespace(a)
    exact = xp.multiply(xp.asarray(a, dtype=xp.float32), xp.asarray(b, dtype=xp.float32), dtype=xp.float64)
    exact += c
    if out is None:
        return exact.astype(xp.float32)
    out[...] = exact  # rounds to nearest, as astype
    return out


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

    def take(self, positions: np.ndarray) -> LinearTable:
        return LinearTable(*(a[positions] for a in self))

    def shift(self, offset: int) -> LinearTable:
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
    def kept(axis: int) -> float:  # the fraction of an axis its gather keeps
        idx = indices[axis]
        return 1.0 if idx is None else len(idx) / x.shape[axis]

    order = sorted(range(3), key=kept)
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
    x86 CPU kernel: ``fma(a, w0, float32(b * w1))``.

    Computed in slabs of the first axis of about :data:`PASS_CHUNK` elements:
    whole-volume temporaries (the float64 ones twice the output's size) were
    fresh mappings, faulted in on every call; slabs reuse heap memory that stays
    in cache (a zoom-in window's 8x64x64 -> 32x256x256 upsampling: 22 -> 4.5 ms on a
    2-core AMD EPYC)."""
    xp = array_namespace(x)
    shape = list(x.shape)
    shape[axis] = len(table.i0)
    out = xp.empty(shape, dtype=xp.float32)
    weights = [1, 1, 1]
    weights[axis] = len(table.i0)
    i0, i1 = xp.asarray(table.i0), xp.asarray(table.i1)
    w0, w1 = xp.asarray(table.w0).reshape(weights), xp.asarray(table.w1).reshape(weights)
    step = max(1, PASS_CHUNK // max(1, shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        rows = slice(start, start + step)
        if axis == 0:  # the slab's output rows read their own source rows
            a, b, v0, v1 = xp.take(x, i0[rows], axis=0), xp.take(x, i1[rows], axis=0), w0[rows], w1[rows]
        else:
            a, b, v0, v1 = xp.take(x[rows], i0, axis=axis), xp.take(x[rows], i1, axis=axis), w0, w1
        b *= v1
        _fma_f32(a, v0, b, out=out[rows])
    return out


def _trilinear(x: Any, tables: Sequence[LinearTable]) -> Any:
    """Separable trilinear resampling, float32.

    torch nests the interpolation with W innermost, then H, then D, so the W
    pass runs first; with the same float32 roundings per output the result
    matches torch's CPU kernel bit for bit. Only the source rows a table reads are
    gathered first (a pure copy) so downsampling stays cheap."""
    xp = array_namespace(x)
    used: list[np.ndarray | None] = []
    local: list[LinearTable] = []
    for t in tables:
        rows = np.unique(np.concatenate([t.i0, t.i1]))
        used.append(rows)
        local.append(LinearTable(np.searchsorted(rows, t.i0), np.searchsorted(rows, t.i1), t.w0, t.w1))
    sub = _gather(x, used)
    if sub.dtype != xp.float32:
        sub = sub.astype(xp.float32)
    for axis in (2, 1, 0):
        sub = _linear_pass(sub, axis, local[axis])
    return sub


@cuda_twin
def resize(x: Any, size: Sequence[int], mode: str, box: HalfOpenBox | None = None) -> Any:
    """Crop ``x`` (D, H, W) to the half-open ``box`` (whole volume if None), then
    resize to ``size`` with ``mode`` exactly as torch's ``F.interpolate``.

    Returns a new array: float32 for ``trilinear`` (any input dtype is read as
    float32), ``x.dtype`` for the nearest modes (bool, integers, floats)."""
    check_volume(x)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise ValueError(f"size must have 3 entries, got {size}")
    start, stop = box_bounds(x.shape, box)
    extent = [b - a for a, b in zip(start, stop)]
    if mode in ("nearest", "nearest-exact"):
        return _gather(x, [nearest_source_index(n, s, mode) + a for n, s, a in zip(extent, size, start)])
    if mode == "trilinear":
        return _trilinear(x, [linear_source_index(n, s).shift(a) for n, s, a in zip(extent, size, start)])
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {MODES}")


@cuda_twin
def upsample_then_nearest(low_res: Any, mid_size: Sequence[int], out_size: Sequence[int]) -> Any:
    """``resize(resize(low_res, mid_size, "trilinear"), out_size, "nearest")`` fused:
    the decoder's low-res logits (4d, 4h, 4w) -> window size -> crop-space size.

    The nearest step only selects grid positions of the trilinear result, so
    the trilinear samples are computed once for each selected position and
    then repeated: the same float32 arithmetic per voxel, bit-identical to the
    two resizes, without the intermediate volume. Returns float32."""
    samples, repeat = _selected_samples(low_res, mid_size, out_size)
    return _gather(samples, repeat) if any(r is not None for r in repeat) else samples


def upsample_then_nearest_positive(low_res: np.ndarray, mid_size: Sequence[int], out_size: Sequence[int]) -> np.ndarray:
    """bool ``positive_mask(upsample_then_nearest(low_res, mid_size, out_size))``
    without the float32 volume of ``out_size``: the nearest step only repeats
    trilinear samples, so the samples are thresholded first and the flags
    repeated (the same voxels; a quarter of the bytes: 20 MiB instead of 80 for
    a 512x512x200 crop). Host arrays (the CPU path's memory saver; the device
    keeps :func:`upsample_then_nearest`)."""
    samples, repeat = _selected_samples(low_res, mid_size, out_size)
    flags = positive_mask(samples)
    return _gather(flags, repeat) if any(r is not None for r in repeat) else flags


def _selected_samples(low_res: Any, mid_size: Sequence[int], out_size: Sequence[int]) -> tuple[Any, list[Any]]:
    """The trilinear samples (``low_res`` -> ``mid_size``) the nearest step to
    ``out_size`` selects, each once, and per axis the index repeating them to
    ``out_size`` (None where each is selected once, in order)."""
    check_volume(low_res)
    tables, repeat = [], []
    for n, m, o in zip(low_res.shape, mid_size, out_size):
        picks = nearest_source_index(int(m), int(o), "nearest")
        unique, inverse = np.unique(picks, return_inverse=True)
        tables.append(linear_source_index(int(n), int(m)).take(unique))
        repeat.append(None if len(unique) == len(picks) else inverse.reshape(-1))
    return _trilinear(low_res, tables), repeat


