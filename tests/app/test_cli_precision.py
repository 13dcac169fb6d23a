"""``--precision fp32|fp16`` on ``infer``, ``bench``, ``export`` and ``build`` and
``SegVolRuntime.load(precision=...)``: the first line names the precision that
ran; fp16 from artifacts without fp16 graphs is one line naming
``export --precision fp16``; torch refuses fp16."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.errors import SegVolError

pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model

from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

HINT = "segvol-rt export --precision fp16"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segvol_rt", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """fp32-only artifacts."""
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "phantom.nii.gz"
    make_phantom(3, shape=(64, 64, 40)).save(path)
    return path


def test_load_fp16_without_fp16_graphs_is_one_clear_error(tiny):
    from segvol_rt import SegVolRuntime

    for backend in ("auto", "onnxruntime"):
        with pytest.raises(SegVolError, match=rf"has no fp16 graphs .*{HINT}"):
            SegVolRuntime.load(tiny, backend=backend, device="cpu", precision="fp16")
    with pytest.raises(SegVolError, match="unknown precision 'int8'"):
        SegVolRuntime.load(tiny, precision="int8")
    with pytest.raises(SegVolError, match="torch backend runs the checkpoint in fp32 only"):
        SegVolRuntime.load(tiny, backend="torch", device="cpu", precision="fp16")
    rt = SegVolRuntime.load(tiny, backend="onnxruntime", device="cpu", precision="fp32")
    assert rt.backend.precision == "fp32" and rt.backend_reason == "onnxruntime on CPU (fp32): requested"


def test_cli_infer_fp16_needs_fp16_graphs(tiny, scan, tmp_path):
    result = _cli("infer", scan, "--text", "liver", "--artifacts", tiny, "--precision", "fp16", "--out", tmp_path / "m.nii.gz")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and HINT in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.nii.gz").exists()
    bad = _cli("infer", scan, "--text", "liver", "--artifacts", tiny, "--precision", "int8")
    assert bad.returncode == 2 and "unknown precision 'int8'" in bad.stderr
    # bf16 is OpenVINO's, asked for by name: auto never chooses it
    bf16 = _cli("infer", scan, "--text", "liver", "--artifacts", tiny, "--precision", "bf16")
    assert bf16.returncode == 2 and bf16.stderr.count("\n") == 1 and "--backend openvino" in bf16.stderr


def test_cli_build_fp16_and_bench_fp16_need_fp16_graphs(tiny):
    for args in (("build", "--artifacts", tiny), ("bench", "--artifacts", tiny, "--precision", "fp16", "--repeat", "1")):
        result = _cli(*args)
        assert result.returncode == 2, result.stderr
        assert HINT in result.stderr.strip().splitlines()[-1]


def test_cli_infer_states_the_precision_first(fresh_demo_artifacts, scan, tmp_path):
    outs = {}
    for precision in ("fp16", "fp32"):
        out = tmp_path / f"{precision}.nii.gz"
        result = _cli("infer", scan, "--text", "liver", "--artifacts", fresh_demo_artifacts, "--device", "cpu",
                      "--precision", precision, "--out", out)
        assert result.returncode == 0, result.stderr
        first = result.stdout.splitlines()[0]
        assert first.startswith(f"backend: onnxruntime on CPU ({precision})"), first
        assert f", {precision}," in result.stdout.splitlines()[-1]  # the provenance line
        import nibabel as nib

        outs[precision] = np.asarray(nib.load(out).dataobj) > 0
    inter = np.logical_and(outs["fp16"], outs["fp32"]).sum()
    assert 2 * inter / max(outs["fp16"].sum() + outs["fp32"].sum(), 1) >= 0.98


def test_cli_export_refuses_an_unknown_precision(tmp_path):
    result = _cli("export", "--out", tmp_path / "x", "--precision", "int8")
    assert result.returncode == 2 and "--precision must be one of fp32, fp16" in result.stderr
    assert not (tmp_path / "x").exists()
