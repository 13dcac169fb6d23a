"""The anatomy of a phantom: body outline, fat, muscle and cavity, bowel gas,
spine and ribs, the labelled organs, and the final CT noise and blur.

:func:`_render` paints a whole phantom on a :class:`segvol_rt.demo.phantom_grid._Grid`
(RAS voxel order, k-major) from per-part random streams of the seed;
``_ORGANS`` lists the labelled organs (deformed ellipsoids :class:`_Blob` and
vessels :class:`_Tube`, in body units) in painting order. The label ids are
those of :data:`segvol_rt.demo.phantom.PHANTOM_LABELS`; the public entry
points are in :mod:`segvol_rt.demo.phantom`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segvol_rt.demo.phantom_grid import (
    _Grid,
    _slabs,
    _smooth_curve,
    _SmoothField,
    _volume,
)
from segvol_rt.ops.boxes import int3

_AIR, _FAT, _MUSCLE, _SOFT, _VISCERAL_FAT = -1000.0, -100.0, 50.0, 40.0, -90.0
_GAS = -850.0
_NOISE_SIGMA = (12.0, 20.0)  # HU after the in-plane blur
_BLUR_GAIN = 0.375  # std of unit white noise after [1,2,1]/4 along two axes: (6/16)**2 ** 0.5


# --------------------------------------------------------------------------
# body, bones, background texture
# --------------------------------------------------------------------------


def _render(grid: _Grid, seed: int, wanted: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Image (int16 HU) and labels (uint8), (I, J, K) in RAS voxel order, k-major."""
    body = _BodyShape.make(grid, np.random.default_rng([seed, 1]))
    image, cavity = body.render(grid, np.random.default_rng([seed, 2]))
    _bowel_gas(grid, image, cavity, np.random.default_rng([seed, 3]))
    bone = _spine(grid, image, np.random.default_rng([seed, 4]))
    _ribs(grid, body, image, bone, np.random.default_rng([seed, 5]))
    cavity &= ~bone
    labels = _volume(grid, np.uint8)
    for organ in _ORGANS:  # painting order: later organs win overlaps
        if organ.label in wanted:
            rng = np.random.default_rng([seed, 100 + organ.label])
            organ.paint(grid, image, labels, cavity, rng)
    return _finish(image, np.random.default_rng([seed, 6])), labels


@dataclass
class _BodyShape:
    """The body outline: an ellipse per slice, flatter at the back, with bumps.

    ``q2(ks)`` is the squared body radius of the voxels of slices ``ks``,
    shaped (len(ks), J, I): 1 on the skin, ``(1 - fat)**2`` under the
    subcutaneous fat, ``(1 - fat - wall)**2`` inside the abdominal wall.
    """

    x2: np.ndarray  # (I,) squared body-frame x
    y2: np.ndarray  # (J,) squared body-frame y, the back flattened
    outline: np.ndarray  # (J, I) 1 / squared outline radius (the bumps)
    a_k: np.ndarray  # (K,) slice-wise scale of the half-axes A, B
    b_k: np.ndarray
    fat: float
    wall: float

    @classmethod
    def make(cls, grid: _Grid, rng: np.random.Generator) -> _BodyShape:
        (a, b, _), (cx, cy, _) = grid.half_axes, grid.center
        cells = max(2, int(np.ptp(grid.z) / (0.8 * a)) + 1)
        a_k = 1.0 + 0.06 * _smooth_curve(rng, grid.shape[2], cells)
        b_k = 1.0 + 0.06 * _smooth_curve(rng, grid.shape[2], cells)
        back = rng.uniform(0.78, 0.9)  # the back's half-axis as a fraction of the belly's
        x = (grid.x - cx) / a
        y = (grid.y - cy) / b
        y = np.where(y < 0, y / back, y)
        theta = np.arctan2(y[:, None], x[None, :])
        radius = np.ones_like(theta)
        for m in (3, 4, 5):
            radius = radius + rng.uniform(0, 0.025) * np.cos(m * theta + rng.uniform(0, 2 * np.pi))
        return cls(x2=x**2, y2=y**2, outline=(1.0 / radius**2).astype(np.float32), a_k=a_k, b_k=b_k,
                   fat=float(rng.uniform(0.05, 0.12)), wall=float(rng.uniform(0.04, 0.07)))

    def q2(self, ks) -> np.ndarray:
        q2 = (1.0 / self.a_k[ks] ** 2)[:, None, None] * self.x2[None, None, :] \
            + (1.0 / self.b_k[ks] ** 2)[:, None, None] * self.y2[None, :, None]
        q2 *= self.outline
        return q2

    def render(self, grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(I, J, K) float32 HU of air, fat, wall muscle and cavity tissue; the cavity mask."""
        a = grid.half_axes[0]
        # blobs of fat between the organs, ~0.1 A across in-plane, longer along z
        sizes = ((grid.z, 0.25), (grid.y, 0.12), (grid.x, 0.12))
        cells = int3(max(2, int(np.ptp(c) / (f * a))) for c, f in sizes)
        visceral = _SmoothField(rng, grid.shape[::-1], cells)
        threshold = rng.uniform(0.3, 0.8)
        table = np.array([_AIR, _FAT + rng.normal(0, 8), _MUSCLE + rng.normal(0, 5),
                          _SOFT + rng.normal(0, 5), _VISCERAL_FAT + rng.normal(0, 8)], np.float32)
        image, cavity = _volume(grid, np.float32, None), _volume(grid, bool, None)
        image_kji, cavity_kji = image.T, cavity.T
        for ks in _slabs(grid.shape[2]):
            q2 = self.q2(ks)
            region = (q2 < 1.0).view(np.uint8)  # 0 air, 1 fat, 2 wall, 3 cavity, 4 visceral fat
            region += q2 < (1.0 - self.fat) ** 2
            inside = np.less(q2, (1.0 - self.fat - self.wall) ** 2, out=cavity_kji[ks])
            region += inside
            region += (visceral.slab(ks) > threshold) & inside
            np.take(table, region, out=image_kji[ks])
        return image, cavity


def _bowel_gas(grid: _Grid, image: np.ndarray, cavity: np.ndarray,
               rng: np.random.Generator) -> None:
    """Small gas pockets in the anterior, lower cavity (unlabelled bowel)."""
    a, _, length = grid.half_axes
    for _ in range(int(rng.integers(6, 16))):
        where = (rng.uniform(-0.55, 0.55), rng.uniform(0.0, 0.6), rng.uniform(-0.8, 0.1))
        centre = grid.to_mm(where)
        radii = a * rng.uniform(0.025, 0.06, 3)
        radii[2] = min(radii[2], 0.15 * length)
        box = tuple(grid.index_range(d, centre[d] - radii[d], centre[d] + radii[d])
                    for d in range(3))
        u = ((grid.x[box[0]] - centre[0]) / radii[0]) ** 2
        v = ((grid.y[box[1]] - centre[1]) / radii[1]) ** 2
        w = ((grid.z[box[2]] - centre[2]) / radii[2]) ** 2
        inside = (u[:, None, None] + v[None, :, None] + w[None, None, :] < 1.0) & cavity[box]
        image[box][inside] = _GAS + rng.normal(0, 30)


def _spine(grid: _Grid, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint vertebrae (cortex, marrow, posterior arch), discs and the canal; the bone mask.

    In-plane shapes are in units of the vertebral body radius r, centred on
    the vertebral body; -y is posterior.
    """
    (a, b, length), (cx, cy, cz) = grid.half_axes, grid.center
    r = a * rng.uniform(0.08, 0.095)
    body_y = cy - b * rng.uniform(0.38, 0.42)
    box = (grid.index_range(0, cx - 2.0 * r, cx + 2.0 * r),
           grid.index_range(1, body_y - 3.0 * r, body_y + r), slice(None))
    x = (grid.x[box[0]] - cx)[:, None] / r
    y = (grid.y[box[1]] - body_y)[None, :] / r
    d_body = np.hypot(x, y)
    d_canal = np.hypot(x, y + 1.6)
    spinous = (x / 0.22) ** 2 + ((y + 2.45) / 0.35) ** 2 < 1
    transverse = ((np.abs(x) - 1.2) / 0.55) ** 2 + ((y + 1.2) / 0.2) ** 2 < 1
    arch = (d_canal < 0.85) & (d_canal >= 0.5)
    posterior = (spinous | transverse | arch) & (d_body >= 1.0)
    shape2d = (d_body < 1.0) | posterior
    cortex, marrow = rng.uniform(900, 1100), rng.uniform(550, 750)
    hu2d = np.where(d_body < 0.82, marrow, cortex).astype(np.float32)
    hu2d[posterior] = 0.9 * cortex
    # discs: every ~0.35 L a band of slices where the vertebral body is disc
    w = (grid.z - cz) / length
    disc = ((w / rng.uniform(0.3, 0.4) + rng.uniform()) % 1.0) < 0.14
    disc_hu = np.float32(rng.uniform(70, 110))
    bone = _volume(grid, bool)
    sub, sub_bone = image[box], bone[box]
    for k in range(grid.shape[2]):  # per slice: contiguous in the k-major layout
        plane, plane_bone = sub[:, :, k], sub_bone[:, :, k]
        plane[shape2d] = hu2d[shape2d]
        plane_bone[shape2d] = True
        if disc[k]:
            plane[d_body < 1.0] = disc_hu
            plane_bone[d_body < 1.0] = False
        plane[d_canal < 0.5] = 15.0  # spinal canal (CSF)
    return bone


def _ribs(grid: _Grid, body: _BodyShape, image: np.ndarray, bone: np.ndarray,
          rng: np.random.Generator) -> None:
    """Rib cross-sections inside the abdominal wall on the upper slices."""
    (a, b, length), (cx, cy, cz) = grid.half_axes, grid.center
    w = (grid.z - cz) / length
    period, phase = rng.uniform(0.14, 0.2), rng.uniform()
    ks = np.flatnonzero((w > -0.15) & (((w / period + phase) % 1.0) < 0.45))
    x = ((grid.x - cx) / a)[:, None]
    y = ((grid.y - cy) / b)[None, :]
    theta = np.arctan2(y, x)
    side = np.abs(np.cos(theta)) > 0.35  # not at the front or back midline
    inner = 1.0 - body.fat - body.wall
    hu = np.float32(rng.uniform(500, 800))
    for k in ks:  # the ribs' angle drifts from slice to slice (they are oblique)
        q2 = body.q2(slice(k, k + 1))[0].T
        rib = (q2 > (inner - 0.01) ** 2) & (q2 < (inner + 0.6 * body.wall) ** 2)
        rib &= side & (np.cos(9 * theta + 6.0 * w[k]) > 0.55)
        image[:, :, k][rib] = hu
        bone[:, :, k] |= rib


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise, in-plane [1,2,1]/4 blur, rounding to int16 HU, slab by slab.

    The noise is the sum of two uniform bytes (ten times cheaper to draw
    than normals); after the 3x3 blur it is near-Gaussian (excess kurtosis
    about -0.15), of std ``sigma`` HU.
    """
    sigma = rng.uniform(*_NOISE_SIGMA) / _BLUR_GAIN  # before the blur
    scale = np.float32(sigma / np.sqrt(2 * (256**2 - 1) / 12))
    src = image.T  # (K, J, I) C-contiguous
    out = np.empty(src.shape, np.int16)
    for ks in _slabs(len(src)):
        slab = src[ks]
        raw = np.frombuffer(rng.bytes(2 * slab.size), np.uint8).reshape(2, *slab.shape)
        noise = np.add(raw[0], raw[1], dtype=np.float32)
        noise -= np.float32(255.0)
        noise *= scale
        slab += noise
        for axis in (1, 2):
            _blur121(slab, axis, noise)
        np.clip(slab, -1024, 3071, out=slab)
        np.rint(slab, out=slab)
        out[ks] = slab
    return out.T


def _blur121(vol: np.ndarray, axis: int, scratch: np.ndarray) -> None:
    """In-place [1, 2, 1] / 4 filter along ``axis`` with replicated edges."""
    np.copyto(scratch, vol)
    v, s = np.moveaxis(vol, axis, 0), np.moveaxis(scratch, axis, 0)
    v *= np.float32(2.0)
    v[1:] += s[:-1]
    v[:-1] += s[1:]
    v[0] += s[0]
    v[-1] += s[-1]
    v *= np.float32(0.25)


# --------------------------------------------------------------------------
# organs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Blob:
    """A deformed ellipsoid organ, in body units (x/A, y/B, z/L).

    ``angle``: in-plane rotation of the first radius from +x toward +y
    (degrees). ``taper``: the y and z radii grow by (1 + taper * u) along the
    organ's own x (u in -1..1), e.g. the liver is thick on the right.
    ``core``: (r2, HU) of an inner zone (kidney medulla). ``gas``: fraction
    of the anterior part filled with gas (stomach).
    """

    label: int
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float
    angle: float = 0.0
    taper: float = 0.0
    deform: float = 0.3
    core: tuple[float, float] | None = None
    gas: float = 0.0

    def paint(self, grid: _Grid, image, labels, cavity, rng: np.random.Generator) -> None:
        """Paint HU and the label where the (deformed) organ lies in the cavity."""
        a, b, length = grid.half_axes
        centre = [float(c) for c in grid.to_mm(np.add(self.center, rng.normal(0, 0.04, 3)))]
        # axis-aligned organs scale with the body's AP axis, rotated ones stay round
        scale = (a, b if self.angle == 0 else a, length)
        radii = [float(r * s * rng.uniform(0.85, 1.15)) for r, s in zip(self.radii, scale)]
        angle = float(np.deg2rad(self.angle + rng.normal(0, 6)))
        box = self._box(grid, centre, radii)
        if any(s.stop <= s.start for s in box):
            return
        r2, v, w = self._shape(grid, box, centre, radii, angle)
        shape_noise = _SmoothField(rng, r2.shape, (3, 3, 3)).slab()
        r2 += np.float32(self.deform) * np.clip(shape_noise, -1.5, 1.5)
        inside = r2 < 1.0
        inside &= cavity[box]
        texture = _SmoothField(rng, r2.shape, (5, 5, 4)).slab()[inside]
        hu = np.float32(self.hu + rng.normal(0, 6)) + np.float32(6.0) * texture
        if self.core is not None:
            hu[r2[inside] < self.core[0]] = self.core[1] + rng.normal(0, 6)
        if self.gas > 0:  # a gas cap on the anterior, upper part
            cap = (v[:, :, None] > 1 - 2 * self.gas) & (w[None, None, :] > -0.2)
            hu[cap[inside]] = _GAS
        image[box][inside] = hu
        labels[box][inside] = self.label

    def _box(self, grid: _Grid, centre, radii) -> tuple[slice, slice, slice]:
        # the deformation moves the surface out to r2 = 1 + 1.5 deform at most
        grow = np.sqrt(1.0 + 1.5 * self.deform)
        taper = 1.0 + abs(self.taper)
        reach = (grow * radii[0], grow * taper * radii[1], grow * taper * radii[2])
        extent = (max(reach[:2]),) * 2 + (reach[2],)  # any in-plane rotation fits
        s0, s1, s2 = (grid.index_range(d, centre[d] - extent[d], centre[d] + extent[d]) for d in range(3))
        return s0, s1, s2

    def _shape(self, grid: _Grid, box, centre, radii, angle):
        """Squared normalised radius (box-shaped) and the in-plane v and axial w coordinates."""
        c, s = np.cos(angle), np.sin(angle)
        dx = (grid.x[box[0]] - centre[0])[:, None]
        dy = (grid.y[box[1]] - centre[1])[None, :]
        u = (c * dx + s * dy) / radii[0]
        grow = np.clip(1.0 + self.taper * u, 0.25, None)  # taper: thicker toward +u
        v = (-s * dx + c * dy) / radii[1] / grow
        w = (grid.z[box[2]] - centre[2]) / radii[2]
        r2 = (w**2)[None, None, :] * (1.0 / grow**2)[:, :, None]
        r2 += (u**2 + v**2)[:, :, None]
        return r2, v, w


@dataclass(frozen=True)
class _Tube:
    """A vertical vessel from z0 to z1 (body units) with a gently wandering centre."""

    label: int
    xy: tuple[float, float]
    z_range: tuple[float, float]
    radii: tuple[float, float]  # in units of A (round vessels stay round)
    hu: float

    def paint(self, grid: _Grid, image, labels, cavity, rng: np.random.Generator) -> None:
        """Paint HU and the label where the vessel lies in the cavity."""
        a, _, length = grid.half_axes
        z0, z1 = (grid.center[2] + (np.array(self.z_range) + rng.normal(0, 0.04, 2)) * length)
        ks = grid.index_range(2, z0, z1)
        if ks.stop <= ks.start:
            return
        n = ks.stop - ks.start
        base = [float(c) for c in grid.to_mm((*np.add(self.xy, rng.normal(0, 0.02, 2)), 0.0))]
        wander = 0.03 * a * np.stack([_smooth_curve(rng, n, 2), _smooth_curve(rng, n, 2)])
        radii = [float(r * a * rng.uniform(0.85, 1.15)) for r in self.radii]
        reach = 1.2 * max(radii) + np.abs(wander).max()
        box = (grid.index_range(0, base[0] - reach, base[0] + reach),
               grid.index_range(1, base[1] - reach, base[1] + reach), ks)
        if any(s.stop <= s.start for s in box):
            return
        dx = (grid.x[box[0]] - base[0])[:, None, None] - wander[0][None, None, :]
        dy = (grid.y[box[1]] - base[1])[None, :, None] - wander[1][None, None, :]
        inside = ((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 < 1.0) & cavity[box]
        image[box][inside] = self.hu + rng.normal(0, 15)
        labels[box][inside] = self.label


# Painting order is overlap priority: big organs first, organs that sit in
# or against them (gallbladder, pancreas, vessels, kidneys) after.
_ORGANS: tuple[_Blob | _Tube, ...] = (
    _Blob(1, center=(0.40, 0.03, 0.45), radii=(0.50, 0.70, 0.40), hu=60, taper=0.35),
    _Blob(2, center=(-0.55, -0.22, 0.50), radii=(0.28, 0.14, 0.20), hu=50, angle=-60),
    _Blob(7, center=(-0.30, 0.30, 0.42), radii=(0.24, 0.30, 0.25), hu=25, gas=0.15),
    _Blob(10, center=(0.0, 0.25, -0.76), radii=(0.22, 0.25, 0.17), hu=10, deform=0.15),
    _Blob(8, center=(-0.08, 0.02, 0.12), radii=(0.38, 0.07, 0.08), hu=45, angle=20, deform=0.2),
    _Blob(9, center=(0.25, 0.35, 0.20), radii=(0.07, 0.09, 0.12), hu=15, deform=0.15),
    _Blob(3, center=(-0.33, -0.38, 0.05), radii=(0.16, 0.10, 0.20), hu=150, angle=-55,
          deform=0.15, core=(0.35, 105)),
    _Blob(4, center=(0.33, -0.38, -0.05), radii=(0.16, 0.10, 0.20), hu=150, angle=55,
          deform=0.15, core=(0.35, 105)),
    _Tube(6, xy=(0.12, -0.12), z_range=(-0.5, 0.7), radii=(0.075, 0.05), hu=130),
    _Tube(5, xy=(-0.05, -0.13), z_range=(-0.45, 1.05), radii=(0.065, 0.065), hu=200),
)
