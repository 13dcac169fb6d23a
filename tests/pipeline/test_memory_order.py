"""An array volume gives the same masks whatever its memory order, and the
same as the same values read from a NIfTI file (nibabel's Fortran order): the
preprocessing's float32 sums depend on the order, so the runtime fixes one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segvol_rt.demo.model import shipped_artifacts_dir
from segvol_rt.demo.phantom import make_phantom
from segvol_rt.runtime import SegVolRuntime


def test_c_and_fortran_order_and_file_give_identical_results(tmp_path: Path) -> None:
    phantom = make_phantom(0)  # default size: there C and Fortran order sums differ
    path, _ = phantom.save(tmp_path / "scan.nii.gz")
    rt = SegVolRuntime.load(shipped_artifacts_dir(), backend="onnxruntime", device="cpu")
    centre = tuple(int(v) for v in phantom.centroid("liver"))
    results = []
    for volume in (np.ascontiguousarray(phantom.image), np.asfortranarray(phantom.image), path):
        if isinstance(volume, Path):
            rt.set_volume(volume)
        else:
            rt.set_volume(volume, affine=phantom.affine)
        results.append(rt.segment(text="liver", points=[centre], probabilities=True))
    first = results[0]
    for other in results[1:]:
        assert np.array_equal(first.mask, other.mask)
        assert np.array_equal(first.probabilities, other.probabilities)
