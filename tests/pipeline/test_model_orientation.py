"""The voxel orientation a model declares (manifest ``voxel_orientation``, issue 25).

The demo model was trained on phantoms generated in RAS voxel order and
declares it; a DICOM series reaches the runtime in dcm2niix's voxel order, a
mirror image of RAS for an axial series, so without the declaration the model
segmented the mirror image (liver and spleen swapped sides). With it, the
runtime reorients each scan to RAS and maps the masks back: the demo's DICOM
path gives the Dice of its NIfTI path. SegVol's own weights declare nothing
and keep the stored order (tested where the runtime's geometry is)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from segvol_rt import SegVolRuntime  # noqa: E402
from segvol_rt.demo.model import shipped_artifacts_dir  # noqa: E402
from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.evaluation import dice  # noqa: E402
from segvol_rt.io.artifacts import Artifacts, check_orientation  # noqa: E402
from segvol_rt.io.scans import read_any  # noqa: E402
from segvol_rt.pipeline.geometry import model_orientation  # noqa: E402
from tests.support.dicom_series import phantom_spec, write_series  # noqa: E402

SEED, SHAPE = 1012, (128, 128, 40)  # held out: the demo model was trained on seeds below 1000
ORGANS = {"liver": 1, "spleen": 2}


def _canonical(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``mask`` in RAS voxel order (nibabel's closest canonical), to compare grids stored differently."""
    return np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(mask.astype(np.uint8), affine)).dataobj) > 0


def _dice(rt: SegVolRuntime, scan_affine: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: dice(_canonical(np.asarray(rt.segment(text=name).mask), scan_affine), labels == label)
            for name, label in ORGANS.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, float]]:
    root = tmp_path_factory.mktemp("orientation")
    ras = make_phantom(SEED, SHAPE)  # the demo's NIfTI path: RAS-stored
    nii, _ = ras.save(root / "ct.nii.gz")
    lps = make_phantom(SEED, SHAPE, orientation="LPS")  # the same body as a DICOM-typical axial series
    write_series(root / "series", lps.image, phantom_spec(lps.affine))
    labels = np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(ras.labels, ras.affine)).dataobj)
    rt = SegVolRuntime.load(shipped_artifacts_dir(), backend="onnxruntime", device="cpu", threads=2)
    out = {}
    for name, path, reorient in (("nifti", nii, None), ("dicom", root / "series", None),
                                 ("dicom-stored", root / "series", "stored")):
        scan = read_any(path)
        rt.set_volume(scan.data, scan.affine, reorient=reorient)
        out[name] = _dice(rt, scan.affine, labels)
    return out


def test_the_demo_model_declares_ras():
    assert Artifacts.load(shipped_artifacts_dir()).voxel_orientation == "RAS"
    assert SegVolRuntime.load(shipped_artifacts_dir()).voxel_orientation == "RAS"


def test_dicom_path_gives_the_dice_of_the_nifti_path(runs):
    for organ in ORGANS:
        assert runs["nifti"][organ] > 0.6, runs
        assert abs(runs["dicom"][organ] - runs["nifti"][organ]) < 0.02, runs  # the series rounds HU to integers


def test_the_stored_order_segments_the_mirror_image(runs):
    """What the declaration fixes: in dcm2niix's order the spleen's side is the liver's."""
    assert runs["dicom-stored"]["spleen"] < runs["dicom"]["spleen"] - 0.3, runs


def test_orientation_choice():
    assert model_orientation(None, None) is None  # SegVol's weights: the stored order
    assert model_orientation(None, "RAS") == "RAS"
    assert model_orientation("lps", "RAS") == "LPS"
    assert model_orientation("stored", "RAS") is None
    with pytest.raises(SegVolError):
        model_orientation(" ", "RAS")
    for bad in ("RRS", "RA", "XYZ"):  # nibabel alone would build a reorientation from "RRS" that is no permutation
        with pytest.raises(SegVolError, match="three axis codes"):
            model_orientation(bad, None)
    assert check_orientation("las") == "LAS"
    for bad in ("RRS", "RA", "XYZ", "RASL"):
        with pytest.raises(SegVolError):
            check_orientation(bad)


def test_export_writes_the_declaration(tmp_path: Path):
    from segvol_rt.export.exporter import _orientation

    assert _orientation(None) == {}
    assert _orientation("ras") == {"voxel_orientation": "RAS"}
