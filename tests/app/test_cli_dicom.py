"""``segvol-rt infer`` on DICOM, through the real console entry point and the
shipped demo model: the masks equal those of running on dcm2niix's NIfTI; DICOM
SEG outputs pass dciodvfy with no errors and decode through dcmqi to our masks
in world coordinates; coded segments; ``--split``; ``--probabilities`` refused;
all-or-nothing when the read-back fails; bad inputs end in one line and exit 2;
and a DICOMweb round trip with a real Orthanc on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
nib = pytest.importorskip("nibabel")

from segvol_rt.demo.model import shipped_artifacts_dir  # noqa: E402
from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from tests.app.test_cli_infer import run_cli  # noqa: E402
from tests.support.dicom_series import SeriesSpec, dcm2niix, write_series  # noqa: E402
from tests.support.dicom_tools import (  # noqa: E402
    Orthanc,
    dciodvfy,
    dcmqi_levels,
    dcmqi_segments,
    ensure_tools,
    world_levels,
    world_set,
)

ART = str(shipped_artifacts_dir())
SHAPE = (96, 96, 32)
# a DICOM-typical LPS axial series, but with a negated column cosine and descending positions
SPEC = SeriesSpec(pixel_spacing=(1.2, 1.1), slice_step=-3.0, col_cos=(0.0, -1.0, 0.0), description="phantom abdomen",
                  series_uid="1.2.826.0.1.3680043.8.498.31337")


def infer(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(*map(str, args), "--artifacts", ART, "--threads", "2", "--quiet")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    ensure_tools("dcm2niix", "dciodvfy")
    root = tmp_path_factory.mktemp("dicom_cli")
    # stored L, A, S: SPEC's directions, so the body is at its true orientation (not a mirror image), as
    # the demo model, which declares RAS, needs it
    ph = make_phantom(2, SHAPE, orientation="LAS")
    files = write_series(root / "series", ph.image, SPEC)
    [nii] = dcm2niix(root / "series", root / "nii")
    return SimpleNamespace(root=root, dir=root / "series", files=files, nii=nii, phantom=ph)


def _mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def test_dicom_folder_gives_the_masks_of_dcm2niix_nifti(data, tmp_path: Path) -> None:
    for prompt in (("--text", "liver", "--text", "spleen"), ("--box", "20,20,5,60,70,25")):
        ok(infer(data.dir, *prompt, "--out", tmp_path / "from_dicom.nii.gz"))
        ok(infer(data.nii, *prompt, "--out", tmp_path / "from_nifti.nii.gz"))
        a, aff_a = _mask(tmp_path / "from_dicom.nii.gz")
        b, aff_b = _mask(tmp_path / "from_nifti.nii.gz")
        assert a.any() and np.array_equal(a, b)
        assert np.abs(aff_a - aff_b).max() < 1e-4


@pytest.fixture(scope="module")
def seg_run(data) -> SimpleNamespace:
    out = data.root / "out"
    names = ["left kidney", "liver", "a bright blob"]
    args = [a for n in names for a in ("--text", n)]
    ok(infer(data.dir, *args, "--out", out / "seg.dcm"))
    ok(infer(data.dir, *args, "--out", out / "labels.nii.gz"))
    return SimpleNamespace(seg=out / "seg.dcm", labels=out / "labels.nii.gz", names=names, sidecar=out / "seg.json")


def test_seg_passes_dciodvfy(seg_run) -> None:
    assert dciodvfy(seg_run.seg) == []


def test_seg_decodes_through_dcmqi_to_our_masks(seg_run, tmp_path: Path) -> None:
    labels, affine = _mask(seg_run.labels)
    decoded = dcmqi_segments(seg_run.seg, tmp_path / "dcmqi")
    # and dcmqi (what Slicer loads SEGs with) reads back the codes and colours of the table
    from segvol_rt.io.dicom_seg import segment_code

    meta = json.loads((tmp_path / "dcmqi" / "meta.json").read_text())
    by_label = {a["SegmentLabel"]: a for group in meta["segmentAttributes"] for a in group}
    for name, attrs in by_label.items():
        code = segment_code(name)
        assert attrs["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == code.type[0]
        assert tuple(attrs["recommendedDisplayRGBValue"]) == code.rgb
    if "left kidney" in by_label:
        assert by_label["left kidney"]["SegmentedPropertyTypeModifierCodeSequence"]["CodeMeaning"] == "Left"
    for i, name in enumerate(seg_run.names, start=1):
        ours = world_set(np.argwhere(labels == i), affine)  # the targets do not overlap here
        if ours:
            assert decoded[name] == ours, name
        else:
            assert not decoded.get(name)


def test_seg_segments_are_coded(seg_run, data) -> None:
    ds = pydicom.dcmread(seg_run.seg)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.Manufacturer == "segvol-rt" and ds.SeriesInstanceUID != SPEC.series_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SPEC.series_uid
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in data.files}
    kidney, liver, blob = ds.SegmentSequence
    assert kidney.SegmentLabel == "left kidney"
    kind = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("64033007", "SCT")
    assert kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # Left
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert blob.SegmentLabel == "a bright blob"
    assert blob.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # Tissue: never another organ's code
    assert len(liver.RecommendedDisplayCIELabValue) == 3
    algo = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "segvol-rt" and algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    sha = json.loads(seg_run.sidecar.read_text())["provenance"]["checkpoint_sha256"]
    assert sha and f"checkpoint_sha256={sha}" in algo.AlgorithmParameters
    # empty frames are omitted: fewer frames than slices x segments
    assert int(ds.NumberOfFrames) < SHAPE[2] * 3


def test_split_writes_one_valid_seg_per_target(data, tmp_path: Path) -> None:
    ok(infer(data.dir, "--text", "liver", "--text", "spleen", "--split", "--out", tmp_path / "s.dcm"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["s.json", "s_liver.dcm", "s_spleen.dcm"]
    for name in ("s_liver.dcm", "s_spleen.dcm"):
        assert dciodvfy(tmp_path / name) == []
        assert len(pydicom.dcmread(tmp_path / name).SegmentSequence) == 1


def test_default_output_is_a_seg_beside_the_folder(data, tmp_path: Path) -> None:
    import shutil

    series = tmp_path / "ct"
    shutil.copytree(data.dir, series)
    ok(infer(series, "--text", "liver"))
    assert (tmp_path / "ct_segvol.dcm").is_file()


def test_probabilities_as_fractional_segs(data, tmp_path: Path) -> None:
    ok(infer(data.dir, "--text", "liver", "--text", "spleen", "--probabilities", "--out", tmp_path / "s.dcm"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.dcm", "s.json", "s_prob_liver.dcm", "s_prob_spleen.dcm"]
    ok(infer(data.dir, "--text", "liver", "--text", "spleen", "--probabilities", "--out", tmp_path / "n" / "p.nii.gz"))
    import highdicom

    from segvol_rt.io.dicom import read_dicom_series

    scan = read_dicom_series(data.dir)
    uids = [str(ds.SOPInstanceUID) for ds in scan.source_datasets()]
    for name in ("liver", "spleen"):
        path = tmp_path / f"s_prob_{name}.dcm"
        assert dciodvfy(path) == []
        ds = pydicom.dcmread(path)
        assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
        assert ds.SegmentSequence[0].SegmentLabel == name
        decoded = highdicom.seg.segread(path).get_pixels_by_source_instance(uids, segment_numbers=[1],
                                                                            assert_missing_frames_are_empty=True)[..., 0]
        probs = np.asanyarray(nib.load(tmp_path / "n" / f"p_prob_{name}.nii.gz").dataobj)
        expected = np.round(scan.to_source_frames(probs) * 255) / np.float32(255)
        assert np.abs(decoded - expected).max() < 1e-6 and decoded.max() > 0.5
        # dcmqi decodes the stored levels: equal to ours in world coordinates
        levels = np.round(probs.astype(np.float64) * 255).astype(int)
        ijk = np.argwhere(levels > 0)
        ours = world_levels(ijk, levels[tuple(ijk.T)], scan.affine)
        assert dcmqi_levels(path, tmp_path / f"qi_{name}") == ours


def test_seg_needs_dicom_input(data, tmp_path: Path) -> None:
    refused(infer(data.nii, "--text", "liver", "--out", tmp_path / "s.dcm"), "DICOM input")
    refused(infer(data.nii, "--text", "liver", "--series", "1.2.3", "--out", tmp_path / "s.nii.gz"), "--series", "not a DICOM")
    refused(infer(data.dir, "--text", "liver", "--store", "http://127.0.0.1:9/dicom-web", "--out", tmp_path / "s.nii.gz"),
            "--store", ".dcm")
    assert not any(tmp_path.iterdir())


def test_multiframe_seg_is_valid_and_decodes(data, tmp_path: Path) -> None:
    write_series(tmp_path / "mf", data.phantom.image, SeriesSpec(multiframe=True, slice_step=2.0))
    ok(infer(tmp_path / "mf", "--text", "liver", "--out", tmp_path / "mf.dcm"))
    ok(infer(tmp_path / "mf", "--text", "liver", "--out", tmp_path / "mf.nii.gz"))
    assert dciodvfy(tmp_path / "mf.dcm") == []
    mask, affine = _mask(tmp_path / "mf.nii.gz")
    assert dcmqi_segments(tmp_path / "mf.dcm", tmp_path / "qi")["liver"] == world_set(np.argwhere(mask > 0), affine)


def test_failed_read_back_leaves_nothing(data, tmp_path: Path, monkeypatch) -> None:
    from segvol_rt.app.infer import InferOptions, run_infer
    from segvol_rt.io import dicom_seg
    from segvol_rt.runtime import SegVolRuntime

    def broken(*_args: object) -> None:
        raise SegVolError("the DICOM SEG read back differs from the masks written; nothing was written")

    monkeypatch.setattr(dicom_seg, "check_seg", broken)
    opts = InferOptions(texts=("liver", "spleen"), out=str(tmp_path / "s.dcm"))
    with pytest.raises(SegVolError, match="read back"):
        run_infer(data.dir, opts, lambda: SegVolRuntime.load(ART, threads=2))
    assert list(tmp_path.iterdir()) == []


def test_runtime_set_volume_reads_a_series(data) -> None:
    from segvol_rt.runtime import SegVolRuntime

    rt = SegVolRuntime.load(ART, threads=2)
    rt.set_volume(data.dir, series=SPEC.series_uid)
    a = rt.segment("liver").mask
    rt.set_volume(data.nii)
    assert np.array_equal(a, rt.segment("liver").mask)
    with pytest.raises(SegVolError, match="not in"):
        rt.set_volume(data.dir, series="1.2.3.4")


def test_runtime_set_volume_refuses_degenerate_spacing(data, tmp_path: Path) -> None:
    """PixelSpacing 0 was nibabel's HeaderDataError out of set_volume(DIR), 1e-30 was accepted: one line each."""
    from segvol_rt.runtime import SegVolRuntime

    rt = SegVolRuntime.load(ART, threads=2)
    for n, spacing in enumerate((["0", "0"], ["1e-30", "1e-30"])):
        for f in write_series(tmp_path / str(n), data.phantom.image[:, :, :6], SeriesSpec()):
            ds = pydicom.dcmread(f)
            ds.PixelSpacing = spacing
            ds.save_as(f)
        with pytest.raises(SegVolError, match="geometry is broken") as err:
            rt.set_volume(tmp_path / str(n))
        assert "\n" not in str(err.value)


# -- bad input ---------------------------------------------------------------------------------


def test_non_dicom_file_is_skipped_with_a_warning(data, tmp_path: Path) -> None:
    import shutil

    series = tmp_path / "ct"
    shutil.copytree(data.dir, series)
    (series / "README.txt").write_text("exported by a viewer")
    proc = ok(run_cli(series, "--text", "liver", "--out", tmp_path / "s.dcm", "--artifacts", ART, "--threads", "2"))
    assert "warning: skipped 1 non-DICOM file(s)" in proc.stderr and "README.txt" in proc.stderr


def test_bad_series_end_in_one_line(data, tmp_path: Path) -> None:
    import shutil

    (tmp_path / "noct").mkdir()
    (tmp_path / "noct" / "a.txt").write_text("x")
    refused(infer(tmp_path / "noct", "--text", "liver", "--out", tmp_path / "o1.dcm"), "no CT series")
    trunc = tmp_path / "trunc"
    shutil.copytree(data.dir, trunc)
    victim = sorted(trunc.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-1000])
    refused(infer(trunc, "--text", "liver", "--out", tmp_path / "o2.dcm"), str(victim))
    gap = tmp_path / "gap"
    shutil.copytree(data.dir, gap)
    by_z = sorted(gap.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    by_z[10].unlink()
    refused(infer(gap, "--text", "liver", "--out", tmp_path / "o3.dcm"), "missing slice")
    two = tmp_path / "two"
    write_series(two / "a", data.phantom.image[:, :, :8], SeriesSpec(series_uid="1.2.826.0.1.3680043.8.498.7"))
    write_series(two / "b", data.phantom.image[:, :, :9], SeriesSpec(series_uid="1.2.826.0.1.3680043.8.498.8"))
    refused(infer(two, "--text", "liver", "--out", tmp_path / "o4.dcm"), "--series", "1.2.826.0.1.3680043.8.498.7 (")
    ok(infer(two, "--text", "liver", "--series", "1.2.826.0.1.3680043.8.498.8", "--out", tmp_path / "o4.dcm"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".dcm") == ["o4.dcm"]


def test_no_output_is_a_file_of_any_series_in_the_input(data, tmp_path: Path) -> None:
    """``--series A --out <a file of series B>.dcm`` (or a name --split/--probabilities derive, or a
    skipped non-DICOM file of the folder) is refused before any work; every byte stays."""
    import hashlib

    a, b = "1.2.826.0.1.3680043.8.498.2221", "1.2.826.0.1.3680043.8.498.2222"
    two = tmp_path / "two"
    write_series(two / "a", data.phantom.image[:, :, :8], SeriesSpec(series_uid=a))
    files_b = write_series(two / "b", data.phantom.image[:, :, :6], SeriesSpec(series_uid=b))
    for f, name in zip(files_b, ("IM1.dcm", "x_liver.dcm", "p_prob.dcm")):
        f.rename(two / "b" / name)
    (two / "old.nii.gz").write_bytes(b"not DICOM: skipped, but read")

    def snapshot() -> dict[str, str]:
        return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(two.rglob("*")) if f.is_file()}

    before = snapshot()
    series_b = f"refusing to overwrite the input DICOM file of series {b}"
    for extra, out, needle in (([], two / "b" / "IM1.dcm", series_b),
                               (["--split"], two / "b" / "x.dcm", series_b),
                               (["--probabilities"], two / "b" / "p.dcm", series_b),
                               ([], two / "old.nii.gz", "refusing to overwrite the input file of the DICOM folder")):
        refused(infer(two, "--series", a, "--text", "liver", *extra, "--out", out), needle)
        assert snapshot() == before
    # the chosen series' own files, as before
    own = sorted((two / "a").iterdir())[0]
    own.rename(own.with_suffix(".dcm"))
    refused(infer(two, "--series", a, "--text", "liver", "--out", own.with_suffix(".dcm")),
            "refusing to overwrite the input DICOM file /")


# -- a real PACS: Orthanc with DICOMweb on 127.0.0.1 ----------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    ensure_tools("Orthanc")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


def test_dicomweb_round_trip_with_orthanc(orthanc, data, tmp_path: Path) -> None:
    # a JPEG 2000 series: Orthanc 1.10 cannot transcode it, so the fetch must ask for the stored syntax
    spec = SeriesSpec(transfer_syntax="1.2.840.10008.1.2.4.90", series_uid="1.2.826.0.1.3680043.8.498.4242",
                      study_uid="1.2.826.0.1.3680043.8.498.4241", pixel_spacing=(1.2, 1.1), slice_step=-3.0)
    files = write_series(tmp_path / "j2k", data.phantom.image, spec)
    orthanc.upload(files)
    url = f"{orthanc.dicomweb}/studies/{spec.study_uid}/series/{spec.series_uid}"
    env = {**os.environ, "SEGVOL_RT_DICOMWEB_AUTH": orthanc.auth}
    out = tmp_path / "out" / "seg.dcm"
    args = ["--text", "liver", "--artifacts", ART, "--threads", "2", "--store", orthanc.dicomweb, "--out", str(out)]
    from tests.app.test_cli_infer import cli

    proc = subprocess.run([*cli(), "infer", url, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "stored 1 SEG instance(s)" in proc.stdout
    assert orthanc.PASSWORD not in proc.stdout + proc.stderr
    assert dciodvfy(out) == []
    local = pydicom.dcmread(out)
    # the SEG is in the PACS, in the source study, and decodes to the same frames
    from dicomweb_client.api import DICOMwebClient
    from requests import Session

    session = Session()
    session.auth = (orthanc.USER, orthanc.PASSWORD)
    client = DICOMwebClient(url=orthanc.dicomweb, session=session)
    found = client.search_for_series(spec.study_uid, search_filters={"Modality": "SEG"})
    assert [s["0020000E"]["Value"][0] for s in found] == [local.SeriesInstanceUID]
    [stored] = client.retrieve_series(spec.study_uid, local.SeriesInstanceUID)
    assert stored.SOPInstanceUID == local.SOPInstanceUID
    assert np.array_equal(stored.pixel_array, local.pixel_array)
    # the same masks as reading the series from disk
    ok(infer(tmp_path / "j2k", "--text", "liver", "--out", tmp_path / "disk.dcm"))
    assert np.array_equal(pydicom.dcmread(tmp_path / "disk.dcm").pixel_array, local.pixel_array)


def test_dicomweb_errors_are_one_line(orthanc, tmp_path: Path) -> None:
    url = f"{orthanc.dicomweb}/studies/1.2.3/series/4.5.6"
    bad = {**os.environ, "SEGVOL_RT_DICOMWEB_AUTH": "segvol:wrong"}
    from tests.app.test_cli_infer import cli

    def run(source: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli(), "infer", source, "--text", "liver", "--artifacts", ART, *extra,
                               "--out", str(tmp_path / "s.dcm")], capture_output=True, text=True, timeout=120, env=env)

    assert "HTTP 401" in refused(run(url, bad))
    creds = url.replace("http://", f"http://{orthanc.auth}@")
    line = refused(run(creds, dict(os.environ)), "no credentials in the URL")
    assert orthanc.PASSWORD not in line
    assert not (tmp_path / "s.dcm").exists()


# -- the real CT of ../shared, written as a DICOM series ---------------------------------------


def test_real_ct_as_a_series(real_ct: Path, tmp_path: Path) -> None:
    """The real CT's voxels and geometry as a pydicom series (LPS, DICOM's usual axial storage):
    the same scan as dcm2niix's, the same masks, and a SEG that passes dciodvfy and dcmqi."""
    ensure_tools("dcm2niix", "dciodvfy")
    img = nib.load(real_ct)
    vol = np.asanyarray(img.dataobj).astype(np.int16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    zooms = np.linalg.norm(lps[:3, :3], axis=0)
    spec = SeriesSpec(row_cos=tuple(lps[:3, 0] / zooms[0]), col_cos=tuple(lps[:3, 1] / zooms[1]),
                      pixel_spacing=(float(zooms[1]), float(zooms[0])), slice_step=float(zooms[2]),
                      origin=tuple(lps[:3, 3]), description="real CT (shared)", signed=True, intercept=0.0)
    assert np.allclose(spec.normal * zooms[2], lps[:3, 2])
    write_series(tmp_path / "dcm", vol, spec)
    [nii] = dcm2niix(tmp_path / "dcm", tmp_path / "nii")
    from segvol_rt.io.dicom import read_dicom_series
    from segvol_rt.io.nifti import read_scan

    ours, ref = read_dicom_series(tmp_path / "dcm"), read_scan(nii)
    assert np.array_equal(ours.data, ref.data) and np.abs(ours.affine - ref.affine).max() < 1e-4
    ok(infer(tmp_path / "dcm", "--text", "liver", "--out", tmp_path / "a.nii.gz"))
    ok(infer(nii, "--text", "liver", "--out", tmp_path / "b.nii.gz"))
    a, affine = _mask(tmp_path / "a.nii.gz")
    assert np.array_equal(a, _mask(tmp_path / "b.nii.gz")[0])
    ok(infer(tmp_path / "dcm", "--text", "liver", "--out", tmp_path / "seg.dcm"))
    assert dciodvfy(tmp_path / "seg.dcm") == []
    assert dcmqi_segments(tmp_path / "seg.dcm", tmp_path / "qi").get("liver", set()) == world_set(np.argwhere(a > 0), affine)


def test_anonymised_series_gives_a_valid_seg_with_warnings(data, tmp_path: Path) -> None:
    import shutil

    series = tmp_path / "anon"
    shutil.copytree(data.dir, series)
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            setattr(ds, key, "")
        ds.save_as(f)
    proc = ok(run_cli(series, "--text", "liver", "--out", tmp_path / "s.dcm", "--artifacts", ART, "--threads", "2"))
    for key in ("SOPInstanceUID in the dataset; using the file meta's", "StudyInstanceUID; generated",
                "SeriesInstanceUID; generated", "FrameOfReferenceUID; generated"):
        assert key in proc.stderr, proc.stderr
    assert dciodvfy(tmp_path / "s.dcm") == []
    seg = pydicom.dcmread(tmp_path / "s.dcm")
    metas = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for f in series.iterdir()}
    refs = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs <= metas and seg.StudyInstanceUID and seg.FrameOfReferenceUID


def test_infer_dot_inside_the_series_folder(data, tmp_path: Path) -> None:
    """`segvol-rt infer .` from inside the series folder: the default SEG goes beside the folder."""
    import shutil

    series = tmp_path / "series"
    shutil.copytree(data.dir, series)
    ok(run_cli(".", "--text", "liver", "--artifacts", ART, "--threads", "2", "--quiet", cwd=series))
    assert (tmp_path / "series_segvol.dcm").is_file(), sorted(tmp_path.iterdir())


def test_series_description_option(data, tmp_path: Path) -> None:
    ok(infer(data.dir, "--text", "liver", "--series-description", "CT abdomen: liver (run 2)", "--out", tmp_path / "s.dcm"))
    assert pydicom.dcmread(tmp_path / "s.dcm").SeriesDescription == "CT abdomen: liver (run 2)"
    refused(infer(data.dir, "--text", "liver", "--series-description", "x", "--out", tmp_path / "s.nii.gz"),
            "--series-description")
    refused(infer(data.dir, "--text", "liver", "--series-description", " ", "--out", tmp_path / "t.dcm"), "empty")
