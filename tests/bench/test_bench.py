"""Smoke tests of the benchmarks on the tiny model: the output is well formed
(markdown table, JSON keys, window counts). StageClock are never asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.app.bench import quick_bench
from segvol_rt.bench.machine import compile_bytecode, machine_info
from segvol_rt.bench.report import Report
from segvol_rt.bench.scans import DEMO_CROP, requests_for, scaled_crop
from segvol_rt.bench.timing import LatencyStats, percentile, time_calls
from segvol_rt.export.reference.bench_model import DEFAULT_BLOB, _cells, prepare_bench_model

REPO = Path(__file__).resolve().parents[2]
ROW_KEYS = {"case", "backend", "stage", "p50_ms", "p90_ms", "min_ms", "n", "samples_ms"}


def test_import_needs_numpy_only():
    code = (
        "import sys, segvol_rt.bench.timing, segvol_rt.bench.report, segvol_rt.bench.machine, "
        "segvol_rt.bench.scans, segvol_rt.bench.stages; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'cupy', 'nibabel', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_table_and_json(tmp_path):
    rep = Report("unit")
    rep.meta.update(machine_info())
    slow = rep.add("case", "a", "stage", LatencyStats([0.3, 0.1, 0.2]), windows=6)
    fast = rep.add("case", "b", "stage", LatencyStats([0.1, 0.1]), batch=8)
    ratio = rep.ratio("a / b", slow, fast, target=2.0)
    assert rep.ratio("missing", slow, None) is None
    rep.check("b per item", fast, 1.0, per_item=True)
    assert ratio.value == pytest.approx(2.0)
    text = rep.markdown()
    assert "| case | backend | stage | p50 ms |" in text and "| a / b | 2.00x | >= 2x | yes |" in text
    data = json.loads(rep.write_json(tmp_path / "r.json").read_text())
    assert {"machine", "gpu", "versions", "rows", "ratios", "checks", "notes", "cases"} <= set(data)
    assert {"cpu", "cores", "usable_cores"} <= set(data["machine"])
    assert set(data["rows"][0]) >= ROW_KEYS and data["rows"][0]["windows"] == 6
    assert data["rows"][1]["p50_ms_per_item"] == pytest.approx(100 / 8)


def test_whole_process_benchmarks_run_segvol_rt_from_bytecode_as_installed():
    """A wheel's install has its modules compiled; an editable one under PYTHONDONTWRITEBYTECODE
    (this project's machines) never has, unless the benchmark compiles them first."""
    import segvol_rt.runtime

    line = compile_bytecode()
    assert line.startswith("segvol-rt's bytecode: compiled ahead"), line
    assert Path(importlib.util.cache_from_source(segvol_rt.runtime.__file__)).is_file()


def test_time_calls_counts_calls():
    calls = []
    t = time_calls(lambda: calls.append(1), repeat=3, warmup=2, before=lambda: calls.append(0))
    assert len(t.samples) == 3 and calls.count(1) == 5 and calls.count(0) == 5
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_scaled_crop_and_prompts():
    assert scaled_crop((32, 256, 256)) == DEMO_CROP
    assert scaled_crop((16, 64, 64)) == (100, 88, 120)
    reqs = requests_for((120, 88, 100), 5)
    assert len(reqs) == 5 and all(r["text"] and len(r["box"].split(",")) == 6 for r in reqs)


# -- end to end on the tiny model -------------------------------------------------------

torch_needed = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (export extra) not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_cache")


@torch_needed
def test_quick_bench(cache, tmp_path):
    rep = quick_bench(cache_dir=cache, backends=("ort-cpu",), repeat=1, warmup=0, scan_shape=(96, 96, 32),
                        threads=1)
    data = json.loads(rep.write_json(tmp_path / "quick.json").read_text())
    stages = {(r["backend"], r["stage"]) for r in data["rows"]}
    for stage in ("image encoder, batch 1", "decoder (text + box), batch 1", "zoom-out-zoom-in, 1 target"):
        assert ("ort-cpu", stage) in stages
    assert ("numpy", "preprocess") in stages and ("runtime", "text: table lookup") in stages
    assert any(b.startswith("torch official-style") for b, _ in stages)
    assert all(set(r) >= ROW_KEYS for r in data["rows"])
    zoom = [r for r in data["rows"] if r["stage"] == "zoom-out-zoom-in, 1 target"]
    assert zoom and all(r["windows"] >= 1 for r in zoom)
    assert any("official-style" in q["name"] for q in data["ratios"])
    assert "| comparison | ratio |" in rep.markdown()


@torch_needed
def test_quick_bench_times_openvino_at_the_precision_asked(cache, tmp_path):
    """`segvol-rt bench` has an OpenVINO row; --precision bf16 times OpenVINO in
    bf16 (the notes say what each row ran) and skips, with the reason, the rows
    that cannot compute in it."""
    pytest.importorskip("openvino")
    from tests.support.openvino_cpu import bf16_problem

    precision = "bf16" if bf16_problem() is None else "fp32"
    lines: list[str] = []
    rep = quick_bench(cache_dir=cache, backends=("ort-cpu", "openvino-cpu"), repeat=1, warmup=0,
                      scan_shape=(96, 96, 32), threads=1, precision=precision, log=lines.append)
    data = json.loads(rep.write_json(tmp_path / "q.json").read_text())
    assert ("zoom-out-zoom-in, 1 target", "openvino-cpu") in {(r["stage"], r["backend"]) for r in data["rows"]}
    assert data["settings"]["precision"] == precision
    assert f"openvino-cpu: openvino (cpu, 1 threads, {precision})" in data["notes"]
    if precision == "bf16":
        assert any(line.startswith("skipping ort-cpu: ") and "--backend openvino" in line for line in lines), lines
        assert not any(r["backend"].startswith("ort-cpu") for r in data["rows"])


@torch_needed
def test_full_benchmark_script_tiny(cache, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("segvol_bench_script", REPO / "benchmarks" / "bench.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    out_json = tmp_path / "full.json"
    code = script.main([
        "--config", "tiny", "--cache-dir", str(cache), "--cases", "synthetic", "raw",
        "--targets", "1", "2", "--raw-shape", "80", "80", "32",
        "--backends", "ort-cpu", "torch-official", "--window-batch", "1", "--threads", "1",
        "--repeat", "1", "--warmup", "0", "--pipeline-repeat", "1", "--pipeline-warmup", "0",
        "--json", str(out_json), "--markdown", str(tmp_path / "full.md"),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| case | backend | stage |" in printed
    data = json.loads(out_json.read_text())
    assert data["settings"]["targets"] == [1, 2] and data["model"]["window"] == [16, 64, 64]
    case = next(c for c in data["cases"] if c.startswith("synthetic"))
    assert data["cases"][case]["crop_shape"] == [100, 88, 120]
    rows = {(r["case"], r["backend"], r["stage"]): r for r in data["rows"]}
    ours = rows[(case, "ort-cpu", "zoom-out-zoom-in, 2 targets")]
    theirs = rows[(case, "torch official-style (cpu)", "zoom-out-zoom-in, 2 targets")]
    assert ours["windows"] == theirs["windows"] == 12  # 6 windows per target, both flows
    assert (case, "ort-cpu", "zoom-out-zoom-in (no shared windows), 2 targets") in rows
    capped = rows[(case, "ort-cpu, 1 windows/call", "zoom-out-zoom-in, 1 target")]
    assert capped["windows"] == 6 and capped["note"] == "6 windows encoded"
    assert any(r["stage"].startswith("infer process") for r in data["rows"])
    assert any(q["name"].endswith("ort-cpu, zoom-out-zoom-in, 1 target") and q["target"] == ">= 2x" for q in data["ratios"])


@torch_needed
def test_cli_bench(cache, tmp_path):
    from typer.testing import CliRunner

    from segvol_rt.app.cli import app

    bm = prepare_bench_model("tiny", cache)
    out = tmp_path / "cli.json"
    res = CliRunner().invoke(app, ["bench", "--artifacts", str(bm.artifacts), "--backend", "ort-cpu",
                                   "--repeat", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "zoom-out-zoom-in, 1 target" in res.output
    assert json.loads(out.read_text())["rows"]


def test_cli_bench_rejects_unknown_backend():
    from typer.testing import CliRunner

    from segvol_rt.app.cli import app
    from segvol_rt.errors import SegVolError

    res = CliRunner().invoke(app, ["bench", "--backend", "nope"])
    assert isinstance(res.exception, SegVolError) and "nope" in str(res.exception)


def test_blob_cells_never_empty():
    for n in (2, 8, 16, 32):
        for lo, hi in DEFAULT_BLOB:
            a, b = _cells(lo, hi, n)
            assert 0 <= a < b <= n
    assert np.isfinite(percentile([0.5], 90))


@torch_needed
def test_quick_bench_fp16_and_the_precision_benchmark(cache, tmp_path):
    """The tiny bench model carries fp16 variants: the quick run times them, and
    benchmarks/precision.py compares fp16 with fp32 side by side."""
    rep = quick_bench(cache_dir=cache, backends=("ort-cpu",), repeat=1, warmup=0, scan_shape=(96, 96, 32),
                      threads=1, precision="fp16")
    assert any(r["stage"] == "image encoder, batch 1" for r in json.loads(rep.write_json(tmp_path / "q.json").read_text())["rows"])
    bm = prepare_bench_model("tiny", cache)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "precision.py"), "--artifacts", str(bm.artifacts),
                          "--repeat", "2", "--threads", "1", "--json", str(tmp_path / "p.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert set(data["precisions"]) == {"fp32", "fp16"} and data["notes"]["fp16"] == "the artifacts' variant"
    assert all(r["peak_rss_mib"] > 0 and r["n"] == 2 for r in data["precisions"].values())
    assert data["rel_l2_fp16_vs_fp32"] < 2e-2
    assert "| fp16 |" in out.stdout


def _cpu_tier_windows(cache: Path, work: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``benchmarks/cpu_tier.py windows`` on the tiny model, one round: the process and its JSON."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_tier.py"), "windows", "--config", "tiny",
                          "--cache-dir", str(cache), "--work", str(work), "--repeat", "1",
                          "--json", str(work / "w.json")], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    return out, json.loads((work / "w.json").read_text())


@torch_needed
def test_the_cpu_tier_windows_benchmark(cache, tmp_path):
    """benchmarks/cpu_tier.py times every contender this CPU can run and names, with
    the backend's refusal line, the one it cannot (OpenVINO bf16 without BF16)."""
    pytest.importorskip("openvino")
    from tests.support.openvino_cpu import bf16_problem

    out, doc = _cpu_tier_windows(cache, tmp_path)
    ran = [r["contender"] for r in doc["rows"]]
    problem = bf16_problem()
    assert ran == ["onnxruntime fp32", "openvino fp32", *(["openvino bf16"] if problem is None else [])]
    assert doc["skipped"] == ({} if problem is None else {"openvino bf16": problem})
    assert doc["rows"][1]["rel_l2_vs_first"] < 1e-4
    assert (f"Skipped on this CPU: openvino bf16 ({problem})." in out.stdout) == (problem is not None)


@torch_needed
def test_the_cpu_tier_without_the_openvino_extra_times_what_it_can(cache, tmp_path):
    """Without openvino (a package on PYTHONPATH that cannot be imported), benchmarks/cpu_tier.py
    times ONNX Runtime alone and names the extra for each OpenVINO contender, as cpp_vs_python does."""
    shadow = tmp_path / "no-openvino" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no openvino here (the test hides it)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)}
    out, doc = _cpu_tier_windows(cache, tmp_path, env)
    assert [r["contender"] for r in doc["rows"]] == ["onnxruntime fp32"]
    assert set(doc["skipped"]) == {"openvino fp32", "openvino bf16"}
    for line in doc["skipped"].values():
        assert re.match(r"openvino is needed .*no openvino here.*pip install 'segvol-rt\[openvino\]'", line)
        assert f"({line})" in out.stdout


@torch_needed
def test_the_prepared_cpu_tier_run(cache, tmp_path, real_ct):
    """benchmarks/cpu_tier_run.sh, what a session on a new CPU kind runs: here its infer part
    alone, on the tiny model, the CT and 1 target, one round (ARGS after the part's own win):
    the report named after the machine, with issue 21's targets table and its command, the C++
    app beside each backend, and every label map compared with the first contender's (their
    equality is the parity tests'; OpenVINO's sums may move a voxel of a random tiny model)."""
    pytest.importorskip("openvino")
    from tests.cpp import sdk

    if sdk.missing_toolchain():
        pytest.skip(sdk.missing_toolchain())
    results = tmp_path / "results"
    env = {**os.environ, "RESULTS": str(results), "PARTS": "cpu-tier-infer", "PYTHON": sys.executable,
           "SEGVOL_RT_CPP_BUILD": str(sdk.build_dir())}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "cpu_tier_run.sh"), "smoke", "--config", "tiny",
                          "--cache-dir", str(cache), "--work", str(tmp_path / "work"), "--cases", "ct",
                          "--targets", "1", "--repeat", "1"], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 part(s) failed" in out.stdout
    (report,) = results.glob("*-cpu-tier-infer-smoke.md")
    text = report.read_text()
    assert "Targets (issue 21, whole `infer` on a CPU with AMX" in text
    assert text.rstrip().endswith("by benchmarks/cpu_tier_run.sh).") and "--config tiny --cache-dir" in text
    doc = json.loads(report.with_suffix(".json").read_text())
    ran = {r["contender"] for r in doc["rows"]}
    assert {"onnxruntime fp32", "openvino fp32", "C++ onnxruntime fp32", "C++ openvino fp32", "torch official-style"} <= ran
    assert all(isinstance(r["voxels_differing"], int) for r in doc["rows"] if r["contender"] != "torch official-style")


@torch_needed
def test_the_cpu_tier_against_a_baseline_install(cache, tmp_path, real_ct):
    """``cpu_tier.py infer --baseline NAME=EXE`` runs another install's segvol-rt (here this
    one again) beside this tree's for every contender, in the same rounds: its rows named
    after it, its label maps compared, and left out of the targets table (not judged)."""
    exe = shutil.which("segvol-rt")
    if exe is None:
        pytest.skip("no segvol-rt console script on PATH")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_tier.py"), "infer", "--config", "tiny",
                          "--cache-dir", str(cache), "--work", str(tmp_path), "--cases", "ct", "--targets", "1",
                          "--repeat", "1", "--contenders", "onnxruntime fp32", "--baseline", f"before={exe}",
                          "--json", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["contender"], r["voxels_differing"]) for r in rows] == [("onnxruntime fp32", 0),
                                                                       ("before onnxruntime fp32", 0)]
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_tier.py"), "infer", "--baseline", "before"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected NAME=EXE" in bad.stderr


@torch_needed
def test_the_int8_encoder_benchmark(cache, tmp_path, real_ct):
    """benchmarks/encoder_int8.py quantizes the tiny encoder and reports every contender
    this CPU offers, ONNX Runtime fp32 first (the reference of the rel L2)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "encoder_int8.py"), "--config", "tiny",
                          "--cache-dir", str(cache), "--work", str(tmp_path), "--json", str(tmp_path / "i.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "i.json").read_text())["rows"]
    labels = [r["contender"] for r in rows]
    assert labels[:4] == ["onnxruntime fp32", "openvino fp32", "onnxruntime int8", "openvino int8 (rest f32)"]
    assert rows[0]["rel_l2_mean"] == 0 and rows[1]["rel_l2_mean"] < 1e-4
    assert all(0 < r["rel_l2_mean"] < 0.2 for r in rows if "int8" in r["contender"])
    assert "| onnxruntime int8 |" in out.stdout
