"""Synthetic CT-like abdominal phantoms with organ labels, seeded and fast.

A DEMONSTRATION phantom, not anatomy: it looks CT-like enough to exercise the
pipeline, to train the tiny demo model and to write an example file, but the
organs are deformed ellipsoids and tubes placed at plausible relative
positions, not a model of any real body. Never use it to judge a real model.

Anatomy (patient frame, in body units, see ``_ORGANS`` in
:mod:`segvol_rt.demo.phantom_anatomy`): air (-1000 HU)
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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.demo.phantom_anatomy import _render
from segvol_rt.demo.phantom_grid import _Grid
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
        si, sj, sk = (float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))
        return si, sj, sk

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


def nifti_image(array: np.ndarray, affine: np.ndarray) -> Any:
    """A phantom volume ``(I, J, K)`` as a ``nibabel.Nifti1Image``: its own dtype,
    mm units, qform and sform both ``affine`` (code 1, scanner-anatomical)."""
    nib = require("nibabel")
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib = require("nibabel")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise SegVolError(f"{path}: a phantom is written as .nii or .nii.gz")
    if not path.parent.is_dir():
        raise SegVolError(f"{path.parent}: no such directory")
    img = nifti_image(array, affine)
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
        fi, fj, fk = (c == pair[1] for c, pair in zip(code, _AXIS_LETTERS))
        return fi, fj, fk
    raise SegVolError("phantom orientation must be like 'RAS' or 'LPS' (axes i, j, k in that "
                      f"order), got {orientation!r}")
