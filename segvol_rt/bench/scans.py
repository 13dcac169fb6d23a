"""Synthetic scans and prompts of the benchmarks (phantoms of :mod:`segvol_rt.demo.phantom`).

Scan shapes are ``(I, J, K)`` scan voxel counts; prompts are scan-space
strings as ``segvol-rt infer`` takes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from segvol_rt.demo.phantom import Phantom

# Official demo's preprocessed (crop) size, (D, H, W), for the 32x256x256 window.
DEMO_CROP = (200, 352, 480)
OFFICIAL_WINDOW = (32, 256, 256)
# Target names of the multi-target case (SegVol vocabulary; table lookups).
TARGET_NAMES = ("liver", "spleen", "right kidney", "pancreas", "stomach")


# -- scans ----------------------------------------------------------------------------


def scaled_crop(window: Sequence[int], crop: Sequence[int] = DEMO_CROP) -> tuple[int, int, int]:
    """The demo crop scaled from the official window to ``window`` (same window count)."""
    return tuple(max(int(w), round(c * w / o)) for c, w, o in zip(crop, window, OFFICIAL_WINDOW))  # type: ignore[return-value]


def synthetic_scan(scan_shape: Sequence[int], seed: int = 0, fill_air: bool = True) -> tuple[Any, np.ndarray]:
    """A phantom (:class:`segvol_rt.demo.phantom.Phantom`) of ``scan_shape`` (I, J, K)
    and its image, int16 HU, Fortran order.

    With ``fill_air`` the air around the body is replaced by noise around 0 HU
    so the preprocessed crop is the whole volume (the official demo's crop
    size can then be asked for exactly)."""
    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.ops.boxes import int3

    ph = make_phantom(seed, int3(scan_shape), spacing=(0.8, 0.8, 1.5))
    image = ph.image
    if fill_air:
        rng = np.random.default_rng([seed, 7])
        air = image < -500
        image = np.asfortranarray(image.copy())
        image[air] = rng.normal(0.0, 40.0, int(air.sum())).astype(np.int16)
    return ph, image


def write_scan(path: str | os.PathLike[str], phantom: Phantom) -> Path:
    """Write a phantom's image as an int16 NIfTI file, atomically; ``.nii.gz`` is compressed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return phantom.save(p)[0]


def scan_box(scan_shape: Sequence[int], index: int = 0) -> str:
    """A scan-space box prompt ``"i0,j0,k0,i1,j1,k1"`` in the middle of the scan,
    shifted a little per target index."""
    lo, hi = [], []
    for n in scan_shape:
        shift = (index % 3 - 1) * 0.04
        lo.append(int(n * (0.3 + shift)))
        hi.append(max(int(n * (0.7 + shift)), int(n * (0.3 + shift))))
    return ",".join(str(v) for v in lo + hi)


def requests_for(scan_shape: Sequence[int], n_targets: int) -> list[dict[str, Any]]:
    """``n_targets`` text + box targets, as the official demo prompts."""
    return [{"text": TARGET_NAMES[i % len(TARGET_NAMES)], "box": scan_box(scan_shape, i)} for i in range(n_targets)]


