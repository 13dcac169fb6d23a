"""OHIF shows our DICOM SEGs, tested in a real browser (issue 25).

A demo phantom written as a CT series (at its true place in patient space) is
stored in a real Orthanc on 127.0.0.1; ``segvol-rt infer DICOMweb-URL --store``
segments it with the shipped demo model and stores its SEGs there: a
multi-segment SEG (liver, spleen), a ``--split`` pair and, with
``--probabilities``, FRACTIONAL SEGs. The OHIF viewer (npm ``@ohif/app``,
``.ci/setup-ohif.sh``) is served by nginx beside a same-origin proxy to
Orthanc and driven in Debian's headless Chromium (playwright-core,
``tests/support/ohif_drive.cjs``). Checked, per SEG OHIF opens on the CT:

* every SEG run is a series of its own in the study browser, described by
  its targets, with its own series number;
* the segmentation panel lists each segment under our label, with our colour;
* a screenshot shows the overlay where the mask is: on the slice shown,
  pixels inside the mask (in from its edge) moved from the CT grey toward the
  segment's colour (alpha blending), pixels away from it did not move.

Screenshots, OHIF's report and the versions (OHIF, Chromium) are kept in
``$SEGVOL_TEST_ARTIFACTS/ohif`` (default ``test-artifacts/ohif`` in the repo).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
Image = pytest.importorskip("PIL.Image")

from segvol_rt.demo.model import shipped_artifacts_dir  # noqa: E402
from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.io.dicom_seg import segment_code  # noqa: E402
from tests.app.test_cli_infer import cli  # noqa: E402
from tests.support import ohif  # noqa: E402
from tests.support.dicom_series import phantom_spec, write_series  # noqa: E402
from tests.support.dicom_tools import Orthanc, ensure_tools  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.2501", "1.2.826.0.1.3680043.8.498.2502"
TARGETS = ("liver", "spleen")
MIN_SHIFT = 12.0  # grey levels an overlaid pixel moves at least (OHIF fills at alpha 0.5 over the CT)


def artifacts_dir() -> Path:
    out = Path(os.environ.get("SEGVOL_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ohif"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _infer(orthanc: Orthanc, out: Path, *args: str) -> str:
    env = {**os.environ, "SEGVOL_RT_DICOMWEB_AUTH": orthanc.auth}
    url = f"{orthanc.dicomweb}/studies/{STUDY}/series/{SERIES}"
    proc = subprocess.run([*cli(), "infer", url, *[a for t in TARGETS for a in ("--text", t)], *args,
                           "--artifacts", str(shipped_artifacts_dir()), "--threads", "2", "--store", orthanc.dicomweb,
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def _masks(seg_path: Path, ct: list[Path]) -> dict[str, np.ndarray]:
    """The SEG's segments as ``{label: (F, Rows, Columns) bool}`` on the CT files in ``ct``'s order (highdicom)."""
    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct]
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=sorted(labels),
                                               assert_missing_frames_are_empty=True)
    return {labels[n]: np.asarray(pixels[..., i]) > 0 for i, n in enumerate(sorted(labels))}


def _own(masks: dict[str, np.ndarray], erode: int = 2) -> dict[str, np.ndarray]:
    """Per segment, its voxels in no other segment (overlaps blend colours), ``erode`` pixels in from the edge."""
    from scipy import ndimage

    out = {}
    for label, m in masks.items():
        others = np.logical_or.reduce([o for k, o in masks.items() if k != label] or [np.zeros_like(m)])
        own = m & ~others
        out[label] = np.stack([ndimage.binary_erosion(frame, iterations=erode) for frame in own])
    return out


def _probe(ct: list[Path], masks: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """The slice where the smallest segment shows most pixels of its own, and sample points (LPS mm)
    on it: per segment in it alone, at least 2 pixels in from its edge, and outside every mask at least 4 pixels away."""
    from scipy import ndimage

    own = _own(masks)
    f = int(np.min([m.sum(axis=(1, 2)) for m in own.values()], axis=0).argmax())
    ds = pydicom.dcmread(ct[f], stop_before_pixels=True)
    ipp, (dr, dc) = np.asarray(ds.ImagePositionPatient, float), (float(v) for v in ds.PixelSpacing)
    row_cos, col_cos = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)

    def world(rc: np.ndarray) -> list[list[float]]:
        return (ipp + rc[:, 1:2] * dc * row_cos + rc[:, 0:1] * dr * col_cos).tolist()

    def pick(region: np.ndarray, n: int = 60) -> np.ndarray:
        rc = np.argwhere(region)
        return rc[rng.choice(len(rc), size=min(n, len(rc)), replace=False)]

    inside = {label: pick(m[f]) for label, m in own.items()}
    assert all(len(rc) >= 20 for rc in inside.values()), {k: len(v) for k, v in inside.items()}
    any_mask = np.logical_or.reduce([m[f] for m in masks.values()])
    outside = pick(~ndimage.binary_dilation(any_mask, iterations=4))
    points = [p for rc in inside.values() for p in world(rc)] + world(outside)
    groups, start = {}, 0
    for label, rc in inside.items():
        groups[label] = (start, start + len(rc))
        start += len(rc)
    return {"slice_z": float(ipp[2]), "points": points, "groups": groups, "outside": (start, len(points)), "frame": f}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    ohif.ensure_ohif()
    ensure_tools("Orthanc")
    root = tmp_path_factory.mktemp("ohif")
    ph = make_phantom(5, (128, 128, 40), orientation="LPS")  # DICOM-like storage; the spec keeps every voxel's place
    spec = phantom_spec(ph.affine, description="demo phantom CT", study_uid=STUDY, series_uid=SERIES)
    ct = write_series(root / "ct", ph.image, spec)
    ct.sort(key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    server = Orthanc(root / "orthanc", dicomweb={"StudiesMetadata": "Full", "SeriesMetadata": "Full"})
    server.start()
    viewer = None
    try:
        server.upload(ct)
        first = _infer(server, root / "multi.dcm", "--probabilities")
        _infer(server, root / "split.dcm", "--split")
        segs = {"multi": root / "multi.dcm", "split": root / "split_liver.dcm", "fractional": root / "multi_prob_liver.dcm"}
        viewer = ohif.OhifServer(server, root / "nginx")
        rng = np.random.default_rng(0)
        jobs, probes = [], {}
        for name, path in segs.items():
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
            masks = _masks(root / "multi.dcm" if name == "fractional" else path, ct)
            if name == "fractional":
                masks = {"liver": masks["liver"]}
            probes[name] = _probe(ct, masks, rng)
            jobs.append({"name": name, "url": viewer.viewer_url(STUDY, uid), "slice_z": probes[name]["slice_z"],
                         "points": probes[name]["points"]})
        out = artifacts_dir()
        reports = {r["name"]: r for r in ohif.drive(jobs, out)}
        versions = {"ohif": ohif.versions()["OHIF_VERSION"], "chromium": ohif.chromium_version(),
                    "browser": reports["multi"].get("browser_version"), "playwright_core": ohif.versions()["PLAYWRIGHT_CORE_VERSION"],
                    "timings_s": {n: {k: r.get(k) for k in ("page_load_s", "seg_loaded_s", "total_s")} for n, r in reports.items()}}
        (out / "versions.json").write_text(json.dumps(versions, indent=2))
        yield SimpleNamespace(root=root, ct=ct, segs=segs, reports=reports, probes=probes, first_line=first.splitlines()[0])
    finally:
        if viewer is not None:
            viewer.stop()
        server.stop()


def _report(world, name: str) -> dict:
    report = world.reports[name]
    assert "error" not in report, f"{name}: {report['error']}\n{report.get('log')}\n{report.get('page_text', '')[:2000]}"
    return report


def _descriptions(world) -> dict[str, str]:
    return {n: str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription) for n, p in world.segs.items()}


def test_every_seg_run_is_its_own_series_in_the_study_browser(world):
    browser = _report(world, "multi")["study_browser"]
    stored = sorted(world.root.glob("*.dcm"))
    numbers = {int(pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber) for p in stored}
    assert len(numbers) == len(stored) == 5  # multi, its two FRACTIONAL SEGs, the split pair
    for path in stored:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.SeriesDescription) in browser, (path.name, browser)
        assert f"S:{int(ds.SeriesNumber)}" in browser, (path.name, browser)
    assert _descriptions(world) == {"multi": "segvol-rt: liver, spleen", "split": "segvol-rt: liver",
                                    "fractional": "segvol-rt probabilities: liver"}


@pytest.mark.parametrize("name", ["multi", "split"])
def test_segmentation_panel_lists_our_labels_and_colours(world, name):
    report = _report(world, name)
    [seg] = report["segmentations"]
    assert seg["label"] == _descriptions(world)[name]
    want = TARGETS if name == "multi" else ("liver",)
    assert [s["label"] for s in seg["segments"]] == list(want)
    [rep] = report["representations"]
    for s in seg["segments"]:
        rgb = np.asarray(rep["colours"][str(s["index"])][:3])
        assert np.abs(rgb - np.asarray(segment_code(s["label"]).rgb)).max() <= 2, (s, rgb)
        assert s["label"] in report["page_text"]  # the panel shows the label


@pytest.mark.parametrize("name", ["multi", "split"])
def test_the_overlay_is_where_the_mask_is(world, name):
    report, probe = _report(world, name), world.probes[name]
    shown = np.asarray(Image.open(report["shown"]).convert("RGB"), dtype=np.float64)
    hidden = np.asarray(Image.open(report["hidden"]).convert("RGB"), dtype=np.float64)
    xy = np.rint(np.asarray(report["points_px"])).astype(int)
    assert report["slice"]["distance"] < 0.01
    for label, (a, b) in probe["groups"].items():
        colour = np.asarray(segment_code(label).rgb, float)
        pts = xy[a:b]
        on, off = shown[pts[:, 1], pts[:, 0]], hidden[pts[:, 1], pts[:, 0]]
        moved, toward = on - off, colour - off
        cosine = (moved * toward).sum(1) / (np.linalg.norm(moved, axis=1) * np.linalg.norm(toward, axis=1) + 1e-9)
        good = (np.linalg.norm(moved, axis=1) >= MIN_SHIFT) & (cosine >= 0.9)
        assert good.mean() >= 0.95, f"{name}/{label}: {good.mean():.2f} of in-mask pixels show the segment colour"
    a, b = probe["outside"]
    pts = xy[a:b]
    still = np.linalg.norm(shown[pts[:, 1], pts[:, 0]] - hidden[pts[:, 1], pts[:, 0]], axis=1) < 3
    assert still.mean() >= 0.98, f"{name}: {1 - still.mean():.2f} of pixels away from the masks changed"


def test_fractional_seg_is_listed_but_ohif_does_not_load_it(world):
    """OHIF 3.13 lists a FRACTIONAL (PROBABILITY) SEG but does not load it: its SEG loader
    (cornerstone's adapters, createLabelmapsFromSegImageIds) throws "Fractional segmentations
    are not yet supported" and the viewport says "Loading SEG..." for ever. OHIF's limitation,
    not our file's (dciodvfy and dcmqi accept it, tests/test_cli_dicom.py); the binary SEG
    written beside it loads. When a later OHIF loads it, this test fails: update the README."""
    report = world.reports["fractional"]
    (artifacts_dir() / "fractional.json").write_text(json.dumps(report, indent=1, default=str))
    assert "Fractional segmentations are not yet supported" in report.get("error", ""), report.get("error")
    assert "segvol-rt probabilities: liver" in report["page_text"]


def test_the_run_says_the_model_orientation_first(world):
    assert re.search(r"declares voxel orientation RAS", world.first_line), world.first_line
