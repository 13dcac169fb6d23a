"""The napari widget's model without Qt (segvol_rt.napari.session), on the demo
model and its phantom: results equal the runtime's, follow-ups reuse the
cached encodings, undo goes back, and saving writes what `segvol-rt infer`
writes (NIfTI masks with the sidecar; a DICOM SEG for a DICOM series)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from segvol_rt.demo.model import shipped_artifacts_dir  # noqa: E402
from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.napari.session import ModelChoice, Session, target_names  # noqa: E402
from segvol_rt.runtime import SegVolRuntime  # noqa: E402
from segvol_rt.types import Request  # noqa: E402

CHOICE = ModelChoice(artifacts=str(shipped_artifacts_dir()), backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    ph = make_phantom(0)
    path = tmp_path_factory.mktemp("scan") / "phantom.nii.gz"
    ph.save(path)
    return ph, path


@pytest.fixture(scope="module")
def reference(phantom: tuple[Any, Path]) -> SegVolRuntime:
    rt = SegVolRuntime.load(shipped_artifacts_dir(), backend="onnxruntime", threads=1)
    rt.set_volume(phantom[1])
    return rt


def _centre(ph: Any, organ: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.rint(ph.centroid(organ)))  # type: ignore[return-value]


def test_follow_ups_reuse_the_encodings_and_undo_goes_back(phantom, reference):
    ph, path = phantom
    session = Session()
    session.open(path, CHOICE)
    c = _centre(ph, "liver")
    first = session.segment("liver", Request(text="liver", points=[c]))
    np.testing.assert_array_equal(first.mask, reference.segment(text="liver", points=[c]).mask)
    stats = session.model.stats
    encoded, calls = stats["timings"]["encode_zoom_out"], stats["encoder_calls"]
    follow = [c, (c[0] + 6, c[1], c[2], 0)]
    second = session.segment("liver", Request(text="liver", points=follow))
    np.testing.assert_array_equal(second.mask, reference.segment(text="liver", points=follow).mask)
    assert session.model.stats["timings"]["encode_zoom_out"] == encoded  # no zoom-out encoding again
    assert session.model.stats["encoder_calls"] == calls  # nor a window encoding
    assert session.undo("liver") is first
    assert session.undo("liver") is None and session.current("liver") is None
    with pytest.raises(SegVolError, match="nothing to undo"):
        session.undo("liver")
    session.close()


def test_save_writes_the_cli_files(phantom, tmp_path):
    ph, path = phantom
    session = Session()
    with pytest.raises(SegVolError, match="no scan"):
        session.segment("liver", Request(text="liver"))
    session.open(path, CHOICE)
    with pytest.raises(SegVolError, match="nothing to save"):
        session.save(tmp_path / "out.nii.gz")
    liver = session.segment("liver", Request(text="liver"))
    spleen = session.segment("spleen", Request(text="spleen", points=[_centre(ph, "spleen")]))
    files = session.save(tmp_path / "out.nii.gz")
    assert [f.name for f in files] == ["out_liver.nii.gz", "out_spleen.nii.gz", "out.json"]
    for file, seg in zip(files, (liver, spleen)):
        img = nib.load(str(file))
        np.testing.assert_array_equal(np.asarray(img.dataobj), seg.mask)
        np.testing.assert_allclose(img.affine, ph.affine)
    sidecar = json.loads(files[2].read_text())
    assert [t["name"] for t in sidecar["targets"]] == ["liver", "spleen"]
    assert set(sidecar["files"]) == {"out_liver.nii.gz", "out_spleen.nii.gz"}
    with pytest.raises(SegVolError, match="dcm"):  # a SEG needs a DICOM scan
        session.save(tmp_path / "out.dcm")
    with pytest.raises(SegVolError):  # the output checks of the CLI: a folder in the way
        session.save(tmp_path / "out_liver.nii.gz" / "x.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out_liver.nii.gz", "out_spleen.nii.gz"]
    session.close()


def test_a_dicom_series_saves_a_seg(phantom, tmp_path):
    pytest.importorskip("highdicom")
    from tests.support.dicom_series import SeriesSpec, write_series

    ph, _ = phantom
    write_series(tmp_path / "series", ph.image, SeriesSpec())
    session = Session()
    scan = session.open(tmp_path / "series", CHOICE)
    assert scan.shape == ph.image.shape
    seg = session.segment("liver", Request(text="liver"))
    files = session.save(tmp_path / "liver.dcm")
    assert [f.name for f in files] == ["liver.dcm"]
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "liver"
    # what 3D Slicer's QuantitativeReporting runs on a SEG: dcmqi reads our mask back at its world points
    from tests.support.dicom_tools import dcmqi_segments, world_set

    decoded = dcmqi_segments(files[0], tmp_path / "dcmqi")
    assert decoded == {"liver": world_set(np.argwhere(seg.mask), scan.affine)}
    session.close()


def test_completion_names_come_from_the_text_table():
    names = target_names(CHOICE)
    assert "liver" in names and "spleen" in names
    assert "liver" in target_names(ModelChoice(server="http://127.0.0.1:1"))  # served: SegVol's vocabulary


def test_the_local_model_runs_on_the_backend_and_precision_asked(phantom, reference, tmp_path, monkeypatch):
    """ModelChoice's backend and precision reach SegVolRuntime.load: OpenVINO fp32 gives the
    runtime's mask here; a precision the backend cannot compute in is its one line."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / "cache"))
    ph, path = phantom
    choice = ModelChoice(artifacts=str(shipped_artifacts_dir()), backend="openvino", threads=1, precision="fp32")
    assert choice.describe().endswith("(openvino fp32)")
    session = Session()
    session.open(path, choice)
    try:
        assert session.model.provenance["backend"] == "openvino" and session.model.provenance["precision"] == "fp32"
        c = _centre(ph, "liver")
        got = session.segment("liver", Request(text="liver", points=[c])).mask
        want = reference.segment(text="liver", points=[c]).mask  # ONNX Runtime: the same up to a few voxels
        assert 2 * np.count_nonzero(got & want) / (np.count_nonzero(got) + np.count_nonzero(want)) > 0.999
    finally:
        session.close()
    with pytest.raises(SegVolError, match="openvino backend computes in"):
        Session().open(path, ModelChoice(artifacts=str(shipped_artifacts_dir()), backend="openvino", precision="fp16"))
