"""The voxel grid of a phantom and the raw material of its anatomy.

:class:`_Grid`: RAS-ordered voxel centres in world mm, the body frame on them
and the affine of the stored array; :func:`_volume` / :func:`_slabs`: the
k-major (I, J, K) volumes and the slab-by-slab passes over them;
:class:`_SmoothField` / :func:`_smooth_curve`: seeded smooth random fields
(cubic B-splines) behind every shape and texture of the phantom. Used by
:mod:`segvol_rt.demo.phantom_anatomy` and :mod:`segvol_rt.demo.phantom`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segvol_rt.ops.boxes import int3

# --------------------------------------------------------------------------
# the voxel grid and the body frame
# --------------------------------------------------------------------------


@dataclass
class _Grid:
    """RAS-ordered voxel centres in world mm and the body frame on them.

    ``x``, ``y``, ``z``: 1-D world coordinates along i, j, k (RAS order).
    Body frame: ``(x - cx) / A``, ``(y - cy) / B``, ``(z - cz) / L`` where
    A, B are the body's mean half-axes and L the organs' half-height.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    first: tuple[float, float, float]  # world mm of voxel (0, 0, 0), exact
    center: tuple[float, float, float]
    half_axes: tuple[float, float, float]  # A, B, L in mm

    @classmethod
    def make(cls, shape, spacing, rng: np.random.Generator) -> _Grid:
        origin = rng.uniform(-20.0, 20.0, 3)  # world position of the volume centre
        first = tuple(float(origin[d] - (n - 1) / 2 * spacing[d]) for d, n in enumerate(shape))
        coords = [(first[d] + np.arange(n) * spacing[d]).astype(np.float32)
                  for d, n in enumerate(shape)]
        fov_x, fov_y = shape[0] * spacing[0], shape[1] * spacing[1]
        ratio = rng.uniform(0.62, 0.78)  # B / A
        a = min(rng.uniform(0.36, 0.43) * fov_x, 0.42 * fov_y / ratio)
        length = min(0.93 * 0.5 * shape[2] * spacing[2], 2.5 * a)
        center = (float(origin[0] + rng.uniform(-0.04, 0.04) * fov_x),
                  float(origin[1] + rng.uniform(-0.04, 0.04) * fov_y), float(origin[2]))
        x, y, z = coords
        return cls(int3(shape), (float(spacing[0]), float(spacing[1]), float(spacing[2])), x, y, z,
                   (first[0], first[1], first[2]), center, (float(a), float(a * ratio), float(length)))

    def affine(self, flips: tuple[bool, bool, bool]) -> np.ndarray:
        """Voxel-to-RAS affine of the array stored with ``flips`` applied."""
        aff = np.eye(4)
        for d, flip in enumerate(flips):
            step = self.spacing[d]
            aff[d, d] = -step if flip else step
            # a flipped axis starts at the other end, so every voxel keeps its world position
            aff[d, 3] = self.first[d] + (self.shape[d] - 1) * step if flip else self.first[d]
        return aff

    def to_mm(self, point) -> np.ndarray:
        """Body-frame point (x/A, y/B, z/L) to world mm."""
        return np.asarray(self.center) + np.asarray(point) * np.asarray(self.half_axes)

    def index_range(self, axis: int, lo_mm: float, hi_mm: float) -> slice:
        """Voxels along ``axis`` whose centres lie in [lo_mm, hi_mm] (maybe empty)."""
        first, step = self.first[axis], self.spacing[axis]
        lo = max(int(np.ceil((lo_mm - first) / step)), 0)
        hi = min(int(np.floor((hi_mm - first) / step)) + 1, self.shape[axis])
        return slice(lo, max(lo, hi))


# --------------------------------------------------------------------------
# volumes, smooth random fields
# --------------------------------------------------------------------------

_SLAB = 8  # slices per slab in the full-volume passes: temporaries stay in cache


def _volume(grid: _Grid, dtype, fill: float | None = 0) -> np.ndarray:
    """An (I, J, K) array stored k-major: C-contiguous (K, J, I), seen through ``.T``.

    Slabs of slices are then contiguous blocks (fast whole-volume passes),
    the stored order is nibabel's (Fortran), and the runtime's (D, H, W) =
    (k, j, i) view of the array is C-contiguous for free.
    """
    shape = grid.shape[::-1]
    return (np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)).T


def _slabs(n: int):
    return (slice(s, min(s + _SLAB, n)) for s in range(0, n, _SLAB))


def _bspline_matrix(n: int, cells: int) -> np.ndarray:
    """(n, cells + 3) cubic B-spline weights over ``cells`` spans, rows of unit norm.

    Unit-norm rows make a field sampled from i.i.d. N(0, 1) control points
    have a standard deviation of exactly 1 at every sample.
    """
    t = np.abs(np.linspace(0.0, cells, n)[:, None] - (np.arange(cells + 3) - 1)[None, :])
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def _banded_matmul(m: np.ndarray, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``m @ data`` for a banded ``m`` (B-spline weights: 4 non-zeros per row).

    Rows go a few at a time, each chunk through the few columns its band
    touches, as vector multiply-adds: no BLAS, whose threads make tiny
    products slow on a busy machine and fight a training loop for cores.
    """
    out = np.empty((len(m), data.shape[1]), np.float32) if out is None else out
    for start in range(0, len(m), _SLAB):
        rows, chunk = m[start:start + _SLAB], out[start:start + _SLAB]
        used = np.flatnonzero(rows.any(axis=0))
        np.multiply(rows[:, used[0], None], data[used[0]], out=chunk)
        for c in range(used[0] + 1, used[-1] + 1):
            chunk += rows[:, c, None] * data[c]
    return out


class _SmoothField:
    """A float32 random field of ``shape``, ~``cells`` bumps per axis, std 1.

    Separable cubic B-splines over random control points. Axes 2 and 1 are
    contracted up front, so ``slab(s)``, a range along axis 0, costs ~5
    multiply-adds per voxel whatever ``cells`` is.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int],
                 cells: tuple[int, int, int]):
        m0, m1, m2 = (_bspline_matrix(n, max(1, c)) for n, c in zip(shape, cells))
        (c0, c1, c2), (_, n1, n2) = (m0.shape[1], m1.shape[1], m2.shape[1]), shape
        coarse = rng.standard_normal((c0, c1, c2)).astype(np.float32)
        t = _banded_matmul(m2, coarse.transpose(2, 0, 1).reshape(c2, c0 * c1))  # [n2, c0, c1]
        t = t.reshape(n2, c0, c1).transpose(2, 1, 0).reshape(c1, c0 * n2)
        t = _banded_matmul(m1, t)  # [n1, c0, n2]
        self._rest = t.reshape(n1, c0, n2).transpose(1, 0, 2).reshape(c0, n1 * n2)
        self._m0, self._shape = m0, shape

    def slab(self, s: slice = slice(None)) -> np.ndarray:
        """The field's rows ``s`` along axis 0: (len, n1, n2) float32."""
        return _banded_matmul(self._m0[s], self._rest).reshape(-1, *self._shape[1:])


def _smooth_curve(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """1-D float32 smooth random curve of n samples, std 1."""
    return _bspline_matrix(n, cells) @ rng.standard_normal(cells + 3).astype(np.float32)
