"""Scans of the CPU benchmarks (cpu_batch.py, cpu_tier.py): the real CT of
``../shared/data`` resampled to 1.5 mm, and the 512x512x200 raw phantom.
Written once into a work directory and reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"
RAW_SHAPE = (512, 512, 200)


def resampled_ct(work: Path, spacing: float = 1.5, source: Path = SHARED_CT) -> Path:
    """``source`` (3 mm, 122x101x30) resampled linearly to ``spacing`` mm (about
    244x202x60 at 1.5 mm), int16 HU, same orientation and origin."""
    import nibabel as nib
    from scipy import ndimage

    out = work / f"ct_{spacing:g}mm.nii.gz"
    if out.is_file():
        return out
    if not source.is_file():
        raise SystemExit(f"{source} is missing (the shared test data); pass --scan instead")
    img = nib.load(source)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    factor = zooms / spacing
    data = ndimage.zoom(np.asarray(img.dataobj, dtype=np.float32), factor, order=1)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / factor  # columns scaled: the same axes at the new spacing
    work.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.rint(data).astype(np.int16), affine), out)
    return out


def raw_phantom(work: Path, shape: tuple[int, int, int] = RAW_SHAPE, seed: int = 0) -> Path:
    """The benchmark's raw int16 phantom (``segvol_rt.bench.scans.synthetic_scan``)."""
    from segvol_rt.bench.scans import synthetic_scan, write_scan

    out = work / f"raw_{'x'.join(map(str, shape))}_seed{seed}.nii.gz"
    if not out.is_file():
        work.mkdir(parents=True, exist_ok=True)
        phantom, _ = synthetic_scan(shape, seed, fill_air=False)
        write_scan(out, phantom)
    return out
