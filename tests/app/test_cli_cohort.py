"""``segvol-rt infer`` over a cohort (several scans, a folder, ``--list``) through the
console entry point: one failing case never stops the run, the run report and its
resume (also after SIGKILL), our own outputs never taken as cases, ``--statistics``
against an independent nibabel + numpy computation, ``--text all``,
``segvol-rt targets``, the runtime's cohort iterator and help at 80 columns."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from tests.support.dicom_series import SeriesSpec, write_series  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

SHAPE = (64, 64, 24)
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SERIES_UID = "1.2.826.0.1.3680043.8.498.24"


def cli() -> list[str]:
    exe = shutil.which("segvol-rt")
    return [exe] if exe else [sys.executable, "-m", "segvol_rt"]


def run_cli(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*cli(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


def _cohort(root: Path) -> SimpleNamespace:
    """3 NIfTI phantoms, a DICOM CT series, a truncated NIfTI file and an MR series, in one folder."""
    root.mkdir(parents=True, exist_ok=True)
    for seed in (1, 2, 3):
        make_phantom(seed, SHAPE).save(root / f"ct{seed}.nii.gz", root / f".labels{seed}.nii.gz")
    data = (root / "ct1.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    ph = make_phantom(4, SHAPE)
    write_series(root / "dicom" / "ct", ph.image, SeriesSpec(series_uid=SERIES_UID))
    for f in write_series(root / "dicom" / "mr", ph.image[:, :, :6], SeriesSpec(series_uid=SERIES_UID + ".1")):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
        ds.Modality = "MR"
        ds.save_as(f)
    return SimpleNamespace(root=root)


def _report(out: Path) -> dict:
    return json.loads((out / "segvol-rt-run.json").read_text())


def test_cohort_of_six_four_ok_two_failed_and_a_rerun_resumes(tmp_path, tiny):
    c = _cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    proc = run_cli("infer", c.root, "--out-dir", out, "--text", "liver", "--artifacts", tiny)
    assert proc.returncode == 1, proc.stderr
    doc = _report(out)
    status = {e["case"]: e["status"] for e in doc["cases"]}
    assert status == {"ct1": "ok", "ct2": "ok", "ct3": "ok", "truncated": "failed", SERIES_UID: "ok",
                      f"{SERIES_UID}.1": "failed"}
    failed = [e for e in doc["cases"] if e["status"] == "failed"]
    assert all(e["error"] and "\n" not in e["error"] for e in failed)
    assert "not CT" in next(e["error"] for e in failed if e["series"])
    assert "truncated" in next(e["error"] for e in failed if not e["series"])
    assert (out / f"{SERIES_UID}_segvol.dcm").is_file() and (out / "ct1_segvol.nii.gz").is_file()
    for e in doc["cases"]:
        for name, digest in e["outputs"].items():
            from segvol_rt.io.digests import sha256_file

            assert sha256_file(out / name) == digest
    rows = list(csv.DictReader((out / "segvol-rt-run.csv").open()))
    assert [r["case"] for r in rows] == [e["case"] for e in doc["cases"]]
    assert sum(f"[{i}/6]" in proc.stderr + proc.stdout for i in range(1, 7)) == 6
    # a rerun skips the four (the failed ones are tried again)
    again = run_cli("infer", c.root, "--out-dir", out, "--text", "liver", "--artifacts", tiny)
    assert again.returncode == 1
    doc2 = _report(out)
    assert doc2["summary"] == {"done": 6, "ok": 4, "failed": 2, "resumed": 4}
    # other options: every case runs again; --force too
    forced = run_cli("infer", c.root, "--out-dir", out, "--text", "liver", "--artifacts", tiny, "--force", "-q")
    assert forced.returncode == 1 and _report(out)["summary"]["resumed"] == 0 and forced.stdout == ""


def test_out_dir_inside_the_input_folder_never_becomes_a_case(tmp_path, tiny):
    root = tmp_path / "cohort"
    root.mkdir()
    for seed in (1, 2):
        make_phantom(seed, SHAPE).save(root / f"ct{seed}.nii.gz", root / f".labels{seed}.nii.gz")
    for out in ("results", "results2"):  # the second run sees the first run's folder in its input
        proc = run_cli("infer", root, "--out-dir", root / out, "--text", "liver", "--text", "spleen",
                       "--artifacts", tiny)
        assert proc.returncode == 0, proc.stderr
        assert [e["case"] for e in _report(root / out)["cases"]] == ["ct1", "ct2"]
    assert _report(root / "results2")["summary"]["resumed"] == 0


def test_usage_errors_exit_2_before_any_case(tmp_path, tiny):
    scan = tmp_path / "ct.nii.gz"
    make_phantom(1, SHAPE).save(scan, tmp_path / "labels.nii.gz")
    for args, words in (
        ((scan, scan), "--out-dir"),
        ((scan, "--out-dir", tmp_path / "o", "--text", "liver", "--box", "1,1,1,5,5,5"), "--box"),
        ((scan, "--out-dir", tmp_path / "o", "--text", "liver", "--reference", f"{scan}:1"), "--reference"),
        ((scan, "--out-dir", tmp_path / "o"), "--text"),
    ):
        proc = run_cli("infer", *args, "--artifacts", tiny)
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "o" / "segvol-rt-run.json").exists()


def test_list_file_and_statistics_match_nibabel(tmp_path, tiny):
    for seed in (1, 2):
        make_phantom(seed, SHAPE, orientation="LPS").save(tmp_path / f"ct{seed}.nii.gz", tmp_path / f"l{seed}.nii.gz")
    (tmp_path / "cases.txt").write_text("# cohort\nct1.nii.gz\n\nct2.nii.gz\n")
    out = tmp_path / "out"
    proc = run_cli("infer", "--list", tmp_path / "cases.txt", "--out-dir", out, "--text", "liver", "--text", "kidney",
                   "--statistics", "--split", "--artifacts", tiny)  # split: each target's own mask, overlaps kept
    assert proc.returncode == 0, proc.stderr
    for entry in _report(out)["cases"]:
        scan = nib.load(tmp_path / f"{entry['case']}.nii.gz")
        hu = np.asarray(scan.dataobj, dtype=np.float64)  # nibabel's scaling, float64
        side = json.loads((out / f"{entry['case']}_segvol.json").read_text())
        for target in entry["targets"]:
            st = target["statistics"]
            assert st == next(t["statistics"] for t in side["targets"] if t["name"] == target["name"])
            mask = np.asarray(nib.load(out / f"{entry['case']}_segvol_{target['name']}.nii.gz").dataobj) == 1
            assert st["voxels"] == mask.sum()
            if not mask.any():
                continue
            vol_ml = mask.sum() * np.prod(scan.header.get_zooms()[:3]) / 1000
            assert st["volume_ml"] == pytest.approx(vol_ml, rel=1e-5)
            vals = hu[mask]
            assert st["mean"] == pytest.approx(vals.mean(), abs=1e-3) and st["std"] == pytest.approx(vals.std(), abs=1e-3)
            assert (st["min"], st["max"]) == (pytest.approx(vals.min()), pytest.approx(vals.max()))
            idx = np.argwhere(mask)
            assert st["bbox_voxels"] == {"min": idx.min(0).tolist(), "max": idx.max(0).tolist()}
            world = nib.affines.apply_affine(scan.affine, idx)  # every voxel: the box of all centres
            np.testing.assert_allclose(st["bbox_world_mm"]["min"], world.min(0), atol=1e-4)
            np.testing.assert_allclose(st["bbox_world_mm"]["max"], world.max(0), atol=1e-4)


def test_sigkill_mid_run_leaves_a_true_report_and_the_next_run_resumes(tmp_path, tiny):
    root = tmp_path / "cohort"
    root.mkdir()
    for seed in range(12):
        make_phantom(seed, (96, 96, 40)).save(root / f"ct{seed:02d}.nii.gz", root / f".l{seed}.nii.gz")
    out = tmp_path / "out"
    args = [*cli(), "infer", root, "--out-dir", out, "--text", "liver", "--text", "spleen", "--artifacts", tiny]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "segvol-rt-run.json").exists():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    doc = _report(out)
    done = [e["case"] for e in doc["cases"]]
    assert 1 <= len(done) < 12 and done == [f"ct{i:02d}" for i in range(len(done))]
    from segvol_rt.io.digests import sha256_file

    for e in doc["cases"]:
        assert all(sha256_file(out / n) == d for n, d in e["outputs"].items())
    again = run_cli(*args[len(cli()):])
    assert again.returncode == 0, again.stderr
    assert _report(out)["summary"] == {"done": 12, "ok": 12, "failed": 0, "resumed": len(done)}


def test_text_all_one_multilabel_output(tmp_path, tiny):
    from segvol_rt.io.vocabulary import CATEGORIES

    scan = tmp_path / "ct.nii.gz"
    make_phantom(1, SHAPE).save(scan, tmp_path / "labels.nii.gz")
    proc = run_cli("infer", scan, "--text", "all", "--no-zoom-in", "--artifacts", tiny, "-q")
    assert proc.returncode == 0, proc.stderr
    side = json.loads((tmp_path / "ct_segvol.json").read_text())
    assert list(side["labels"].values()) == list(CATEGORIES)
    assert int(np.asarray(nib.load(tmp_path / "ct_segvol.nii.gz").dataobj).max()) <= len(CATEGORIES)


def test_targets_lists_the_table_with_codes():
    from segvol_rt.io.vocabulary import CATEGORIES

    proc = run_cli("targets", "--json")
    assert proc.returncode == 0
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(CATEGORIES)
    liver = rows[0]
    assert liver["type"] == ["10200004", "Liver"] and liver["rgb"] == [221, 130, 101]
    text = run_cli("targets").stdout.splitlines()
    assert len(text) == len(CATEGORIES) + 1 and max(map(len, text)) <= 80


@pytest.mark.parametrize("command", ["", "infer", "targets", "serve", "demo", "export", "build", "bench", "version"])
def test_help_reads_at_80_columns(command):
    proc = run_cli(*([command] if command else []), "--help", env={"COLUMNS": "80", "TERM": "dumb"})
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    ours = "\n".join(line for line in lines if "--help" not in line)  # typer's own option shows its type
    assert "<list[str]>" not in ours and "<bool>" not in ours


def test_runtime_segment_cases_iterates_and_survives_a_bad_scan(tmp_path, tiny):
    from segvol_rt import SegVolRuntime

    scans = []
    for seed in (1, 2):
        make_phantom(seed, SHAPE).save(tmp_path / f"ct{seed}.nii.gz", tmp_path / f"l{seed}.nii.gz")
        scans.append(tmp_path / f"ct{seed}.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a scan")
    rt = SegVolRuntime.load(tiny)
    results = list(rt.segment_cases([scans[0], tmp_path / "bad.nii.gz", scans[1]], ["liver", "spleen"]))
    assert [r.ok for r in results] == [True, False, True]
    assert len(results[0].segmentations) == 2 and results[0].segmentations[0].mask.shape == SHAPE
    assert "\n" not in results[1].error
    with pytest.raises(Exception, match="no volume"):
        rt.segment(text="liver")  # released after the last case


def test_store_sends_each_dicom_case_seg(tmp_path, tiny):
    from tests.support.dicom_tools import Orthanc, ensure_tools

    ensure_tools("Orthanc")
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        root = tmp_path / "cohort"
        study = "1.2.826.0.1.3680043.8.498.2400"
        for n in (1, 2):
            write_series(root / f"s{n}", make_phantom(n, SHAPE).image,
                         SeriesSpec(series_uid=f"{SERIES_UID}{n}", study_uid=study))
        make_phantom(3, SHAPE).save(root / "ct3.nii.gz", tmp_path / "l3.nii.gz")
        proc = run_cli("infer", root, "--out-dir", tmp_path / "out", "--text", "liver", "--artifacts", tiny,
                       "--store", server.dicomweb, env={"SEGVOL_RT_DICOMWEB_AUTH": server.auth})
        assert proc.returncode == 0, proc.stderr
        from dicomweb_client.api import DICOMwebClient
        from requests import Session

        session = Session()
        session.auth = (server.USER, server.PASSWORD)
        found = DICOMwebClient(url=server.dicomweb, session=session).search_for_series(
            study, search_filters={"Modality": "SEG"})
        assert len(found) == 2
    finally:
        server.stop()
