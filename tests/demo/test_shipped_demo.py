"""The demo artifacts shipped in the package: they verify, they were exported
from the shipped checkpoint, they equal a fresh export numerically (ONNX bytes
differ across torch versions, so files are not compared byte for byte), the
wheel carries them, and a runtime-only install (no torch) runs ``segvol-rt demo``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.demo.model import WEIGHTS_FILE, cached_demo_artifacts, demo_checkpoint_dir, shipped_artifacts_dir
from segvol_rt.io import digests
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import VALID_MANIFESTS_DIR, Artifacts
from segvol_rt.io.digests import sha256_file

REPO = Path(__file__).resolve().parents[2]
PARITY = 1e-5  # relative L2 of each graph output, as the exporter's own check


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_shipped_artifacts_verify_and_come_from_the_shipped_checkpoint():
    arts = Artifacts.load(shipped_artifacts_dir())
    arts.verify()
    assert arts.manifest["checkpoint"]["sha256"] == sha256_file(demo_checkpoint_dir() / WEIGHTS_FILE)
    assert cached_demo_artifacts() == shipped_artifacts_dir()
    text = json.dumps(arts.manifest)
    assert str(REPO) not in text and "/root" not in text  # no path of the machine that exported them


def _feeds(spec: S.GraphSpec, config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from segvol_rt.pipeline.prompts import Points, decoder_tokens

    grid = tuple(int(s // p) for s, p in zip(config.spatial_size, config.patch_size))
    if spec.name == S.IMAGE_ENCODER:
        return {"image": rng.random((1, 1, *config.spatial_size), dtype=np.float32)}
    if spec.name == S.TEXT_ENCODER:
        ids = np.full((2, config.text.max_length), config.text.pad_token_id, np.int64)
        ids[:, 0], ids[:, 1:6], ids[:, 6] = config.text.bos_token_id, rng.integers(0, 700, (2, 5)), config.text.eos_token_id
        return {"token_ids": ids}
    coords, labels = decoder_tokens(Points([[3, 40, 50]], [1]), (2, 10, 20, 20, 90, 100), True)
    return {
        "image_embedding": rng.standard_normal((1, config.embed_dim, *grid)).astype(np.float32),
        "prompt_coords": coords[None].astype(np.float32),
        "prompt_labels": labels[None].astype(np.int32),
        "text_embedding": rng.standard_normal((1, config.embed_dim)).astype(np.float32),
    }


def test_shipped_graphs_equal_a_fresh_export(fresh_demo_artifacts):
    ort = pytest.importorskip("onnxruntime")
    shipped, fresh = Artifacts.load(shipped_artifacts_dir()), Artifacts.load(fresh_demo_artifacts)
    assert shipped.specs == fresh.specs
    assert shipped.config == fresh.config
    assert shipped.voxel_orientation == fresh.voxel_orientation == "RAS"  # from the checkpoint's config.json
    assert shipped.precisions == fresh.precisions == ("fp32", "fp16")  # the demo ships its fp16 variants
    rng = np.random.default_rng(0)
    for name in S.GRAPH_NAMES:
        feeds = _feeds(shipped.specs[name], shipped.config, rng)
        dtypes = {i.name: i.dtype for i in shipped.specs[name].inputs}
        feeds = {k: v.astype(np.dtype(dtypes[k])) for k, v in feeds.items()}
        for precision in shipped.precisions:
            outs = [ort.InferenceSession(str(a.graph_path(name, precision)), providers=["CPUExecutionProvider"]).run(None, feeds)
                    for a in (shipped, fresh)]
            for got, want in zip(*outs):
                assert _rel_l2(got, want) <= PARITY, (name, precision)
    (names_a, table_a), (names_b, table_b) = shipped.text_table(), fresh.text_table()
    assert list(names_a) == list(names_b)
    assert _rel_l2(table_a, table_b) <= PARITY


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    return next(out.glob("segvol_rt-*.whl"))


def test_the_wheel_carries_assets_kernels_and_schema(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = shipped_artifacts_dir()
    for path in [p for p in shipped.rglob("*") if p.is_file()] + [p for p in demo_checkpoint_dir().glob("*") if p.is_file()]:
        rel = "segvol_rt/" + path.relative_to(shipped.parents[2]).as_posix()
        assert rel in names, rel
    cu = {p.name for p in (REPO / "kernels").glob("*.cu*")}
    assert cu and all(f"segvol_rt/kernels/{n}" in names for n in cu)
    assert any(n.startswith("segvol_rt/io/") and n.endswith(".schema.json") for n in names), "no manifest schema"
    assert "segvol_rt/io/snomed_segments.csv" in names, "no SNOMED segment table"
    assert "segvol_rt/export/exporter.py" in names and "segvol_rt/app/cli.py" in names
    assert "segvol_rt/serve/server.py" in names and "segvol_rt/wire.py" in names


def test_a_runtime_only_install_runs_the_demo(wheel, tmp_path):
    """``pip install segvol-rt`` without extras: no torch, yet ``segvol-rt demo``
    runs end to end on the shipped artifacts and writes its PNG preview."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SEGVOL_RT"))}
    env["SEGVOL_RT_CACHE"] = str(tmp_path / "cache")
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, env=env, timeout=900,
                   capture_output=True, text=True)
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True", "torch is installed in the runtime-only venv"
    out = tmp_path / "demo"
    run = subprocess.run([str(env_dir / "bin" / "segvol-rt"), "demo", "--out", str(out)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    from PIL import Image

    with Image.open(out / "preview.png") as img:
        assert img.size[0] > 200 and img.size[1] > 200
    # at most the records of the shipped files it checked (segvol_rt.io.digests) and of their manifest
    cache = tmp_path / "cache"
    made = {p.name for p in cache.iterdir()} if cache.exists() else set()
    records = {digests.RECORDS_DIR, VALID_MANIFESTS_DIR}
    assert made <= records, f"the demo exported instead of using the shipped artifacts: {made}"
