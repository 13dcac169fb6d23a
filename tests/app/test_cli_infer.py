"""``segvol-rt infer`` through the real console entry point: outputs (single,
multi-label + sidecar, split, probabilities), evaluation mode (prompts from a
label, Dice), and every bad input ending in one line on stderr, exit code 2
and no output file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
nib = pytest.importorskip("nibabel")

from segvol_rt import evaluation as E  # noqa: E402
from segvol_rt import ops  # noqa: E402
from segvol_rt.app.console import ConsoleReporter  # noqa: E402
from segvol_rt.app.infer import InferOptions, run_infer  # noqa: E402
from segvol_rt.backends.base import Backend  # noqa: E402
from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from segvol_rt.io import spec as S  # noqa: E402
from segvol_rt.io.config import SegVolConfig  # noqa: E402
from segvol_rt.runtime import SegVolRuntime  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

SHAPE = (96, 96, 40)
BOX = "20,20,8,70,75,30"


def cli() -> list[str]:
    """The installed console script when on PATH, else the module."""
    exe = shutil.which("segvol-rt")
    return [exe] if exe else [sys.executable, "-m", "segvol_rt"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*cli(), "infer", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """A small phantom (LPS storage) and its labels."""
    root = tmp_path_factory.mktemp("infer_data")
    ph = make_phantom(1, SHAPE, orientation="LPS")
    scan, labels = ph.save(root / "ct.nii.gz", root / "ct_labels.nii.gz")
    return SimpleNamespace(root=root, scan=scan, labels=labels, phantom=ph)


def _nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


# -- outputs -----------------------------------------------------------------------------


def test_single_target_default_output_beside_the_scan(tmp_path, data, tiny):
    scan = tmp_path / "case.nii.gz"
    shutil.copy(data.scan, scan)
    proc = run_cli(scan, "--text", "liver", "--box", BOX, "--artifacts", tiny)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("backend: onnxruntime on CPU")
    assert lines[-1].startswith("time: read ") and "preprocess" in lines[-1] and "total" in lines[-1]
    out = tmp_path / "case_segvol.nii.gz"
    mask, affine = _nifti(out)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE and set(np.unique(mask)) <= {0, 1} and mask.any()
    np.testing.assert_allclose(affine, data.phantom.affine)
    assert nib.load(str(out)).header.get_xyzt_units() == nib.load(str(scan)).header.get_xyzt_units()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "case_segvol.nii.gz"]


def test_aligned_window_prompts(tmp_path, data, tiny):
    out = tmp_path / "aligned.nii.gz"
    proc = run_cli(data.scan, "--text", "liver", "--box", BOX, "--artifacts", tiny, "--out", out,
                   "--window-prompts", "aligned")
    assert proc.returncode == 0, proc.stderr
    mask, _ = _nifti(out)
    assert mask.shape == SHAPE and mask.any()


def test_several_targets_multilabel_and_sidecar(tmp_path, data, tiny):
    out = tmp_path / "seg.nii.gz"
    proc = run_cli(data.scan, "--text", "liver", "--text", "left kidney", "--box", BOX, "--artifacts", tiny,
                   "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # quiet
    mask, _ = _nifti(out)
    side = json.loads((tmp_path / "seg.json").read_text())
    assert side["labels"] == {"1": "liver", "2": "left kidney"}
    assert "later" in side["overlaps"]
    first, second = side["targets"]
    assert first["name"] == "liver" and second["label"] == 2 and first["file"] == "seg.nii.gz"
    for t in side["targets"]:
        assert {"voxels", "roi_crop", "roi_scan", "windows", "zoom_in_applied", "no_foreground"} <= set(t)
    # where the targets overlap, the later one's label is written
    assert np.count_nonzero(mask == 2) == second["voxels"]
    assert np.count_nonzero(mask == 1) <= first["voxels"]


def test_split_and_probabilities(tmp_path, data, tiny):
    out = tmp_path / "res.nii.gz"
    proc = run_cli(data.scan, "--text", "liver", "--text", "spleen", "--box", BOX, "--split", "--probabilities",
                   "--artifacts", tiny, "--out", out, "--no-zoom-in")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["res.json", "res_liver.nii.gz", "res_prob_liver.nii.gz", "res_prob_spleen.nii.gz",
                     "res_spleen.nii.gz"]
    liver, _ = _nifti(tmp_path / "res_liver.nii.gz")
    prob, affine = _nifti(tmp_path / "res_prob_liver.nii.gz")
    assert prob.dtype == np.float32 and prob.shape == SHAPE and prob.min() >= 0 and prob.max() <= 1
    np.testing.assert_allclose(affine, data.phantom.affine)
    assert np.mean(liver.astype(bool) != (prob > 0.5)) < 1e-4  # float32 sigmoid vs the exact threshold rule
    side = json.loads((tmp_path / "res.json").read_text())
    assert [t["file"] for t in side["targets"]] == ["res_liver.nii.gz", "res_spleen.nii.gz"]
    assert not any(t["zoom_in_applied"] for t in side["targets"])


def test_python_dash_m_entry_points(data, tiny, tmp_path):
    out = tmp_path / "m.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "segvol_rt", "infer", str(data.scan), "--box", BOX, "--artifacts",
                           str(tiny), "--out", str(out), "-q"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    proc = subprocess.run([sys.executable, "-m", "segvol_rt.app.cli", "infer", str(data.scan)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no prompt")


def test_help_says_prompts_are_scan_ijk():
    proc = subprocess.run([*cli(), "infer", "--help"], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    text = " ".join(proc.stdout.split())
    assert "IJK" in text and "nibabel" in text and "later one wins" in text and "does not reorient" in text


# -- evaluation mode -------------------------------------------------------------------------


def test_prompt_from_label_prints_dice(tmp_path, data, tiny):
    out = tmp_path / "eval.nii.gz"
    proc = run_cli(data.scan, "--text", "liver", "--prompt-from", f"{data.labels}:1", "--prompt-points",
                   "--artifacts", tiny, "--out", out)
    assert proc.returncode == 0, proc.stderr
    dice = [ln for ln in proc.stdout.splitlines() if "Dice" in ln]
    assert len(dice) == 2 and "zoom-out only" in dice[0] and "zoom-out-zoom-in" in dice[1]
    values = [float(v) for ln in dice for v in ln.split() if v.replace(".", "").isdigit() and "." in v]
    assert len(values) == 4 and all(0 <= v <= 1 for v in values)
    assert out.is_file()


def test_evaluation_matches_an_independent_computation(data, tiny):
    """Official prompts and Dice recomputed from the label with plain numpy:
    swap axes, pad, crop to the image's foreground box, nearest-exact resize."""
    rt = SegVolRuntime.load(tiny, backend="onnxruntime", device="cpu")
    from segvol_rt.io.nifti import read_scan

    scan = read_scan(data.scan)
    rt.set_volume(scan.data, scan.affine)
    ref = E.load_reference(f"{data.labels}:1", scan, rt.geometry)

    label = (data.phantom.labels == 1).astype(np.uint8).swapaxes(0, 2)  # (k, j, i)
    g = rt.geometry
    pads = [(-s, o - n + s) for s, o, n in zip(g.pad.start, g.pad.out_shape, g.pad.in_shape)]
    padded = np.pad(label, [(max(a, 0), max(b, 0)) for a, b in pads])
    crop = padded[tuple(slice(s, s + n) for s, n in zip(g.crop.start, g.crop.out_shape))]
    np.testing.assert_array_equal(ref.crop, crop)
    zoom = ops.resize(crop, rt.config.spatial_size, "nearest-exact")
    np.testing.assert_array_equal(ref.zoom, zoom)
    nz = np.nonzero(zoom)
    box, points = E.official_prompts(ref, box=True, points=True, seed=0)
    assert box == tuple(int(a.min()) for a in nz) + tuple(int(a.max()) for a in nz)
    assert len(points) == 7 and list(points.labels).count(0) == 3
    assert all(zoom[tuple(c)] == (1 if lab == 1 else 0) for c, lab in zip(points.coords, points.labels))

    run = E.zoom_space_runner(rt, "liver", box, None)
    ev = E.evaluate(run, ref, zoom_in=True)
    pred = ev.final.crop_logits > 0  # no logits this close to 0 in this model
    expected = 2 * np.count_nonzero(pred & (crop > 0)) / (pred.sum() + crop.sum() + 1)
    assert ev.crop_zoom_in == pytest.approx(expected)
    truth = data.phantom.labels == 1
    assert ev.scan_zoom_in == pytest.approx(2 * np.count_nonzero(ev.final.mask.astype(bool) & truth)
                                            / (ev.final.mask.sum() + truth.sum()))


def test_dice_formulas():
    logits = np.array([[[-1.0, 2.0, 3.0, -4.0]]], dtype=np.float32)
    label = np.array([[[0, 1, 0, 1]]], dtype=np.uint8)
    assert E.dice_official(logits, label) == pytest.approx(2 * 1 / (2 + 2 + 1))
    assert E.dice(logits > 0, label) == pytest.approx(0.5)
    assert E.dice(np.zeros(3), np.zeros(3)) == 1.0


class _NothingBackend(Backend):
    """A model that never finds anything: every logit is -4."""

    name = "nothing"

    def _run(self, graph, feeds):
        config = self.config
        if graph == S.IMAGE_ENCODER:
            b = feeds["image"].shape[0]
            return {"image_embedding": np.zeros((b, config.embed_dim, *config.grid_size), np.float32)}
        b = feeds["image_embedding"].shape[0]
        return {"low_res_logits": np.full((b, 1, *config.low_res_size), -4.0, np.float32)}


def test_no_foreground_is_reported(tmp_path, data, capsys):
    config = SegVolConfig.tiny()
    backend = _NothingBackend(S.graph_specs(config))
    backend.config = config
    rt = SegVolRuntime(SimpleNamespace(config=config), backend, "nothing (fixture)")
    opts = InferOptions(box=BOX, out=str(tmp_path / "m.nii.gz"))
    result = run_infer(data.scan, opts, lambda: rt, ConsoleReporter())
    seg = result.targets[0].segmentation
    assert seg.no_foreground and not seg.zoom_in_applied and not seg.mask.any()
    err = capsys.readouterr().err
    assert "no foreground in the coarse pass; zoom-in skipped" in err


# -- bad input -------------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def _bad_files(root: Path, data: SimpleNamespace, tiny: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {
        "2d": _write(root / "flat.nii.gz", rng.random((30, 30)).astype(np.float32)),
        "4d": _write(root / "series.nii.gz", rng.random((20, 20, 20, 2)).astype(np.float32)),
        "constant": _write(root / "constant.nii.gz", np.full((20, 20, 20), 7, np.int16)),
    }
    nan = rng.random((20, 20, 20)).astype(np.float32)
    nan[3, 4, 5] = np.nan
    files["nan"] = _write(root / "nan.nii.gz", nan)
    inf = rng.random((20, 20, 20)).astype(np.float32)
    inf[1, 1, 1] = np.inf
    files["inf"] = _write(root / "inf.nii.gz", inf)
    raw = data.scan.read_bytes()
    files["truncated"] = root / "truncated.nii.gz"
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["garbage"] = root / "garbage.nii.gz"
    files["garbage"].write_bytes(b"\x1f\x8b" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    damaged = root / "damaged_artifacts"
    shutil.copytree(tiny, damaged)
    with open(damaged / "prompt_decoder.onnx", "ab") as fh:
        fh.write(b"\0")
    files["damaged"] = damaged
    return files


BAD = {
    # name: (scan key or "good", extra args, expected words in the message)
    "missing file": ("missing", ["--text", "liver"], "does not exist"),
    "truncated gzip": ("truncated", ["--text", "liver"], "truncated"),
    "corrupt gzip": ("garbage", ["--text", "liver"], "cannot read"),
    "2D image": ("2d", ["--text", "liver"], "3D"),
    "4D image": ("4d", ["--text", "liver"], "3D"),
    "constant volume": ("constant", ["--text", "liver"], "constant"),
    "NaN voxels": ("nan", ["--text", "liver"], "NaN"),
    "Inf voxels": ("inf", ["--text", "liver"], "infinite"),
    "box outside": ("good", ["--box", "0,0,0,96,10,10"], "outside"),
    "empty box": ("good", ["--box", "30,30,10,20,40,20"], "empty"),
    "box with 5 numbers": ("good", ["--box", "1,2,3,4,5"], "6 integers"),
    "point outside": ("good", ["--point", "5,5,40"], "outside"),
    "no prompt": ("good", [], "no prompt"),
    "missing artifacts": ("good", ["--text", "liver", "--artifacts", "{root}/nowhere"], "does not exist"),
    "hash mismatch": ("good", ["--text", "liver", "--artifacts", "{damaged}"], "does not match"),
    "unknown backend": ("good", ["--text", "liver", "--backend", "magic"], "unknown backend"),
    "label id absent": ("good", ["--prompt-from", "{labels}:99"], "does not occur"),
    "label spec without id": ("good", ["--prompt-from", "{labels}"], "LABEL.nii.gz:ID"),
    "out is the input": ("good", ["--text", "liver", "--out", "{scan}"], "overwrite the input"),
    "unknown window prompts": ("good", ["--text", "liver", "--window-prompts", "shifted"], "window prompts"),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, data, tiny) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad")
    return SimpleNamespace(root=root, files=_bad_files(root, data, tiny))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_no_output(case, bad, data, tiny, tmp_path):
    key, extra, words = BAD[case]
    scan = data.scan if key == "good" else bad.files.get(key, bad.root / "missing.nii.gz")
    work = tmp_path / "work"
    work.mkdir()
    local = work / Path(scan).name
    if Path(scan).is_file():
        shutil.copy(scan, local)
    subs = {"root": bad.root, "damaged": bad.files["damaged"], "labels": data.labels, "scan": local}
    args = [a.format(**subs) for a in extra]
    if "--artifacts" not in args:
        args += ["--artifacts", str(tiny)]
    before = sorted(p.name for p in work.iterdir())
    proc = run_cli(local, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert words in err[0], err[0]
    assert sorted(p.name for p in work.iterdir()) == before  # no output file, no temporary left
