"""``segvol-rt demo`` end to end on tiny artifacts (the env var that points the
default artifacts at them), ``--make-phantom``, the preview's layout and
orientation, and the default artifacts cache (export on demand, reuse, the
missing-torch error naming the extra)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
PIL_Image = pytest.importorskip("PIL.Image")

from segvol_rt.app import console as defaults  # noqa: E402
from segvol_rt.app.demo import COLOURS, LEGEND_COLS, preview_size, render_preview  # noqa: E402
from segvol_rt.demo.phantom import PHANTOM_LABELS, make_phantom  # noqa: E402
from segvol_rt.errors import MissingDependencyError  # noqa: E402


def cli() -> list[str]:
    exe = shutil.which("segvol-rt")
    return [exe] if exe else [sys.executable, "-m", "segvol_rt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.support.tiny_artifacts import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


def test_make_phantom_writes_image_and_labels(tmp_path):
    target = tmp_path / "ph.nii.gz"
    proc = subprocess.run([*cli(), "demo", "--make-phantom", str(target), "--seed", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    image, labels = nib.load(str(target)), nib.load(str(tmp_path / "ph_labels.nii.gz"))
    assert image.shape == labels.shape and image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.affine, labels.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) == {0, *PHANTOM_LABELS}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph.nii.gz", "ph_labels.nii.gz"]


def test_make_phantom_bad_path_is_one_line(tmp_path):
    proc = subprocess.run([*cli(), "demo", "--make-phantom", str(tmp_path / "nowhere" / "ph.nii.gz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_demo_end_to_end_with_tiny_artifacts(tmp_path, tiny):
    out = tmp_path / "demo"
    env = {**os.environ, defaults.DEMO_ARTIFACTS_ENV: str(tiny[0])}
    proc = subprocess.run([*cli(), "demo", "--out", str(out), "--backend", "onnxruntime"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("backend: onnxruntime") for ln in lines)
    assert defaults.DEMO_BANNER in lines
    table = [ln for ln in lines if ln.split() and ln.split()[0] in {n.split()[0] for n in PHANTOM_LABELS.values()}]
    assert len(table) == len(PHANTOM_LABELS)
    names = {p.name for p in out.iterdir()}
    assert {"phantom.nii.gz", "phantom_labels.nii.gz", "masks_text.nii.gz", "masks_text_box.nii.gz",
            "results.json", "preview.png"} <= names
    with PIL_Image.open(out / "preview.png") as png:
        assert png.size == preview_size(len(PHANTOM_LABELS)) == (800, 354)
    masks = nib.load(str(out / "masks_text_box.nii.gz"))
    phantom = nib.load(str(out / "phantom.nii.gz"))
    assert masks.shape == phantom.shape and np.asarray(masks.dataobj).any()
    np.testing.assert_allclose(masks.affine, phantom.affine)


def test_preview_is_radiological_whatever_the_storage(tmp_path):
    """An organ on the patient's right is drawn on the viewer's left of the axial
    panel, for RAS- and LPS-stored volumes alike."""
    for orientation in ("RAS", "LPS"):
        ph = make_phantom(0, (64, 64, 16), orientation=orientation, organs=["liver"])
        path = render_preview(ph.image, ph.affine, {"liver": ph.labels == 1}, tmp_path / f"{orientation}.png")
        rgb = np.asarray(PIL_Image.open(path).convert("RGB"))
        assert rgb.shape[:2] == preview_size(1)[::-1]
        cell = rgb[28 : 28 + 256, 8 : 8 + 256]  # the axial panel
        cols = np.nonzero((cell == COLOURS[0]).all(axis=2))[1]
        assert cols.size and cols.mean() < 128, (orientation, cols.mean())


def test_preview_size_grows_with_the_legend():
    assert preview_size(1) == preview_size(LEGEND_COLS)
    assert preview_size(LEGEND_COLS + 1)[1] > preview_size(LEGEND_COLS)[1]


# -- default artifacts -------------------------------------------------------------------


@pytest.fixture
def fake_demo_checkpoint(tmp_path, tiny, monkeypatch):
    """The tiny model in the demo checkpoint's Hugging Face layout, as the shipped one."""
    from segvol_rt.demo import model as demo_model
    from segvol_rt.export.checkpoint import save_hf

    ckpt = save_hf(tiny[2], tmp_path / "demo_ckpt", tokenizer_files=Path(tiny[1]).parent / "tokenizer")
    monkeypatch.setattr(demo_model, "demo_checkpoint_dir", lambda: Path(ckpt))
    monkeypatch.setenv(defaults.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(defaults.DEMO_ARTIFACTS_ENV, raising=False)
    return Path(ckpt)


def test_demo_artifacts_exported_once_into_the_cache(fake_demo_checkpoint, monkeypatch):
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.io.digests import sha256_file

    said: list[str] = []
    first = defaults.demo_artifacts(said.append)
    digest = sha256_file(fake_demo_checkpoint / defaults.WEIGHTS_FILE)
    assert first == defaults.cache_root() / f"demo-{digest[:12]}"
    Artifacts.load(first).verify()
    assert any("exporting the demo model" in m for m in said)

    def no_export(*_a, **_k):
        raise AssertionError("exported again")

    monkeypatch.setattr(defaults, "export_demo", no_export)
    assert defaults.demo_artifacts() == first


def test_missing_torch_names_the_export_extra(fake_demo_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(MissingDependencyError, match=r"segvol-rt\[export\]"):
        defaults.demo_artifacts()


def test_cache_root_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(defaults.CACHE_ENV, raising=False)
    assert defaults.cache_root() == Path.home() / ".cache" / "segvol-rt"
    monkeypatch.setenv(defaults.CACHE_ENV, str(tmp_path))
    assert defaults.cache_root() == tmp_path
