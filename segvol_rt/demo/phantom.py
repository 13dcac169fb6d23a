"""Synthetic CT-like abdominal phantoms with organ labels, seeded and fast.

A DEMONSTRATION phantom, not anatomy: it looks CT-like enough to exercise the
pipeline, to train the tiny demo model and to write an example file, but the
organs are deformed ellipsoids and tubes placed at plausible relative
positions, not a model of any real body. Never use it to judge a real model.

Anatomy (patient frame, in body units, see ``_ORGANS``): air (-1000 HU)
around an elliptic body outline that is flatter at the back and varies
slice to slice; a subcutaneous fat layer (~-100 HU); an abdominal wall of
muscle (~50 HU); a cavity of soft tissue (~40 HU) with blobs of visceral
fat and bowel gas; a spine (vertebral bodies ~+700 HU with a brighter
cortex, discs, spinal canal, posterior processes) and ribs on the upper
slices; and the labelled organs of :data:`PHANTOM_LABELS`, each with its
own mean HU, slow texture and random position, size and shape. Noise
blurred in-plane ([1,2,1] per axis) gives ~10-20 HU (std) of near-Gaussian,
grainy CT texture and slightly soft edges.

Geometry. A volume is stored as nibabel holds it: ``(i, j, k)`` with ``k``
the axial slice axis, and a 4x4 affine to RAS+ world millimetres (the NIfTI
convention: +x toward the patient's Right, +y Anterior, +z Superior). The
arrays are Fortran-ordered like the ones nibabel loads, so their (k, j, i)
transpose, the runtime's (D, H, W), is C-contiguous. The phantom is
generated in RAS voxel order (i toward the patient's right, j anterior, k
superior), then stored in the requested orientation: an axis whose code
letter is the opposite one (L, P or I) is flipped in the array and gets a
negative affine column whose origin moves to the other end, so every voxel
keeps its world position. In an LPS-stored file (DICOM-like) the liver, on
the patient's right, therefore sits at LOW i, while in a RAS-stored one it
sits at high i; both put it at positive world x (relative to the body).

Scale. In-plane, the body fills most of the field of view whatever the
pixel count and spacing (a 90 mm field holds a "small" body). Along k the
organs are laid out over the slab's extent (up to 2.5 body half-widths),
so even a 40-slice volume holds every organ (flattened when the slab is
thin). Everything random comes from ``numpy.random.default_rng`` streams
derived from the seed, one per part, so the same seed gives the same body
in any orientation, and leaving organs out does not change the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError

# Fixed label ids. Names are plain text-prompt vocabulary (SegVol's category
# names), so a label can be prompted by its name as it stands.
PHANTOM_LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "left kidney",
    4: "right kidney",
    5: "aorta",
    6: "inferior vena cava",
    7: "stomach",
    8: "pancreas",
    9: "gallbladder",
    10: "bladder",
}
_LABEL_OF_NAME = {name: label for label, name in PHANTOM_LABELS.items()}

DEFAULT_SHAPE = (192, 192, 64)  # (i, j, k): 64 slices of 192 x 192
DEFAULT_SPACING = (0.9, 0.9, 3.0)  # mm along (i, j, k)
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))  # (as generated, flipped)

_AIR, _FAT, _MUSCLE, _SOFT, _VISCERAL_FAT = -1000.0, -100.0, 50.0, 40.0, -90.0
_GAS = -850.0
_NOISE_SIGMA = (12.0, 20.0)  # HU after the in-plane blur
_BLUR_GAIN = 0.375  # std of unit white noise after [1,2,1]/4 along two axes: (6/16)**2 ** 0.5


# --------------------------------------------------------------------------
# the phantom record
# --------------------------------------------------------------------------


@dataclass
class Phantom:
    """One synthetic CT volume and its organ labels.

    ``image``: int16 HU, shape ``(I, J, K)`` (nibabel voxel order, K slices).
    ``labels``: uint8, same shape, ids of :data:`PHANTOM_LABELS` (0 elsewhere).
    ``affine``: 4x4 float64, voxel ``(i, j, k, 1)`` to RAS+ world mm.
    ``label_names``: ``{id: name}`` of the organs painted into this volume.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str]
    orientation: str = "RAS"
    seed: int = 0

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (i, j, k)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def mask(self, organ: int | str) -> np.ndarray:
        """Boolean ``(I, J, K)`` mask of one organ, by id or name."""
        return self.labels == _label_id(organ)

    def centroid(self, organ: int | str, world: bool = False) -> np.ndarray:
        """Centroid of an organ: voxel ``(i, j, k)``, or RAS world mm if ``world``."""
        idx = np.argwhere(self.mask(organ))
        if idx.size == 0:
            raise SegVolError(f"organ {organ!r} is not in this phantom")
        ijk = idx.mean(axis=0)
        return self.affine[:3, :3] @ ijk + self.affine[:3, 3] if world else ijk

    def save(self, image_path: str | os.PathLike, label_path: str | os.PathLike | None = None
             ) -> tuple[Path, Path | None]:
        """Write the image (int16) and optionally the labels (uint8) as NIfTI.

        Each file is written to a temporary name beside it and renamed, so a
        reader never sees half a file. The extension picks the format
        (``.nii`` or ``.nii.gz``).
        """
        image_path = Path(image_path)
        _write_nifti(self.image, self.affine, image_path)
        if label_path is None:
            return image_path, None
        label_path = Path(label_path)
        _write_nifti(self.labels, self.affine, label_path)
        return image_path, label_path


def _label_id(organ: int | str) -> int:
    if isinstance(organ, str):
        if organ not in _LABEL_OF_NAME:
            raise SegVolError(f"unknown phantom organ {organ!r}; known: {sorted(_LABEL_OF_NAME)}")
        return _LABEL_OF_NAME[organ]
    if int(organ) not in PHANTOM_LABELS:
        raise SegVolError(f"unknown phantom label {organ!r}; known: {sorted(PHANTOM_LABELS)}")
    return int(organ)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib = require("nibabel")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise SegVolError(f"{path}: a phantom is written as .nii or .nii.gz")
    if not path.parent.is_dir():
        raise SegVolError(f"{path.parent}: no such directory")
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)  # scanner-anatomical
    img.set_sform(affine, code=1)
    # the temporary name keeps the extension: nibabel picks gzip from it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{''.join(path.suffixes)}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# public generators
# --------------------------------------------------------------------------


def make_phantom(seed: int, shape: tuple[int, int, int] | None = None,
                 spacing: tuple[float, float, float] | None = None, orientation: str = "RAS",
                 organs: Iterable[int | str] | None = None) -> Phantom:
    """A seeded synthetic CT volume with labels.

    ``shape``: ``(I, J, K)`` voxels, K axial slices (default
    :data:`DEFAULT_SHAPE`); ``spacing``: mm along (i, j, k) (default
    :data:`DEFAULT_SPACING`); ``orientation``: axis codes of the stored
    array, "RAS" or "LPS" (any of the eight flips, e.g. "LAS", is accepted;
    axes are not permuted); ``organs``: names or ids of the organs to paint
    (default all). The same seed gives the same body for any orientation and
    organ subset.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SegVolError(f"phantom seed must be a non-negative integer, got {seed!r}")
    shape = _check_shape(DEFAULT_SHAPE if shape is None else shape)
    spacing = _check_spacing(DEFAULT_SPACING if spacing is None else spacing)
    flips = _check_orientation(orientation)
    wanted = sorted(PHANTOM_LABELS) if organs is None else sorted({_label_id(o) for o in organs})
    grid = _Grid.make(shape, spacing, np.random.default_rng([seed, 0]))
    image, labels = _render(grid, seed, wanted)
    flip = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return Phantom(
        image=np.asfortranarray(image[flip]),  # nibabel's order; no copy for RAS
        labels=np.asfortranarray(labels[flip]),
        affine=grid.affine(flips),
        label_names={label: PHANTOM_LABELS[label] for label in wanted},
        orientation=orientation.upper(),
        seed=int(seed),
    )


def random_phantom(rng: np.random.Generator, slices: tuple[int, int] = (40, 160),
                   pixels: tuple[int, int] = (128, 320),
                   organs: Iterable[int | str] | None = None) -> Phantom:
    """A phantom of random seed, shape, spacing and orientation (RAS or LPS).

    ``slices`` and ``pixels`` bound K and the in-plane size I = J
    (inclusive); in-plane spacing is 0.7-1.0 mm, slice spacing 1.5-5 mm.
    """
    seed = int(rng.integers(2**31))
    n = int(rng.integers(pixels[0], pixels[1] + 1))
    k = int(rng.integers(slices[0], slices[1] + 1))
    pixel = float(rng.uniform(0.7, 1.0))
    thickness = float(rng.choice([1.5, 2.0, 2.5, 3.0, 4.0, 5.0]))
    orientation = "RAS" if rng.random() < 0.5 else "LPS"
    return make_phantom(seed, (n, n, k), (pixel, pixel, thickness), orientation, organs)


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise SegVolError(f"phantom shape must be three integers (I, J, K), got {shape!r}") \
            from None
    if len(out) != 3 or min(out[:2]) < 32 or out[2] < 8:
        raise SegVolError(
            f"phantom shape must be (I, J, K) with I, J >= 32 and K >= 8, got {shape!r}")
    return out


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        out = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise SegVolError(f"phantom spacing must be three numbers in mm, got {spacing!r}") from None
    if len(out) != 3 or not all(np.isfinite(out)) or min(out) <= 0:
        raise SegVolError(f"phantom spacing must be three positive numbers in mm, got {spacing!r}")
    return out


def _check_orientation(orientation: str) -> tuple[bool, bool, bool]:
    code = str(orientation).upper()
    if len(code) == 3 and all(c in pair for c, pair in zip(code, _AXIS_LETTERS)):
        return tuple(c == pair[1] for c, pair in zip(code, _AXIS_LETTERS))
    raise SegVolError("phantom orientation must be like 'RAS' or 'LPS' (axes i, j, k in that "
                      f"order), got {orientation!r}")


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
    def make(cls, shape, spacing, rng: np.random.Generator) -> "_Grid":
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
        return cls(tuple(shape), tuple(spacing), *coords, first, center,
                   (float(a), float(a * ratio), float(length)))

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
    def make(cls, grid: _Grid, rng: np.random.Generator) -> "_BodyShape":
        (a, b, _), (cx, cy, _) = grid.half_axes, grid.center
        cells = max(2, int(np.ptp(grid.z) / (0.8 * a)) + 1)
        a_k = 1.0 + 0.06 * _smooth_curve(rng, grid.shape[2], cells)
        b_k = 1.0 + 0.06 * _smooth_curve(rng, grid.shape[2], cells)
        back = rng.uniform(0.78, 0.9)  # the back's half-axis as a fraction of the belly's
        x = (grid.x - cx) / a
        y = (grid.y - cy) / b
        y = np.where(y < 0, y / back, y)
        theta = np.arctan2(y[:, None], x[None, :])
        radius = 1.0
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
        cells = tuple(max(2, int(np.ptp(c) / (f * a))) for c, f in sizes)
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
        return tuple(grid.index_range(d, centre[d] - extent[d], centre[d] + extent[d])
                     for d in range(3))

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
