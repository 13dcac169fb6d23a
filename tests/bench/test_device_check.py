"""benchmarks/device_check.py on the CPU (--emulate --small), so that the
prepared device run cannot rot, and its driver's promise: a section that
crashes or times out leaves the others' results in the JSON and sets ok false."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


def _run(tmp_path: Path, *extra: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--emulate", "--small", "--out", str(out), "--work", str(tmp_path / "work"), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, json.loads((out / "device_check.json").read_text())


def test_emulated_small_run_passes(tmp_path):
    pytest.importorskip("torch")  # the timings section builds and exports the tiny model
    from tests.support import kernel_emu

    if not kernel_emu.available():
        pytest.skip("no g++ for the kernel emulator")
    proc, doc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    sections = doc["sections"]
    for name in ("preflight", "hybrid", "kernels", "timings"):
        assert sections[name]["status"] == "ran" and sections[name]["ok"] is True, name
    for name in ("ort-cuda", "ort-cuda-tf32", "sanitizer"):
        assert sections[name]["status"] == "not planned", name
    assert doc["ok"] is True and "DEVICE CHECK PASS" in proc.stdout
    assert {c["name"] for c in sections["kernels"]["checks"]} >= {"blend 8 windows + divide", "select_ranks threshold"}
    assert all(p["ok"] for p in sections["hybrid"]["prompts"].values())
    assert (tmp_path / "out" / "device_check.md").read_text().startswith("# segvol-rt device check")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["device_check.json", "device_check.md"]


@pytest.mark.parametrize("fault", ["crash", "timeout"])
def test_a_failing_section_keeps_the_others_and_fails_the_run(tmp_path, fault):
    """The hybrid section's process is made to die (os._exit) or hang (sleep
    past its share) by a sitecustomize on its path: preflight before it and
    the kernels section after it still run, and their results are in the JSON."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if '--child' in sys.argv and sys.argv[sys.argv.index('--child') + 1] == 'hybrid':\n"
        + ("    os._exit(9)\n" if fault == "crash" else "    time.sleep(60)\n")
    )
    env = {**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--emulate", "--small", "--out", str(out), "--work", str(tmp_path / "work"),
           "--sections", "preflight", "hybrid", "kernels"]
    if fault == "timeout":
        cmd += ["--share", "hybrid=4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    doc = json.loads((out / "device_check.json").read_text())
    assert proc.returncode == 1 and "DEVICE CHECK FAIL" in proc.stdout
    assert doc["ok"] is False
    assert doc["sections"]["preflight"]["status"] == "ran" and doc["sections"]["preflight"]["ok"] is True
    hybrid = doc["sections"]["hybrid"]
    assert hybrid["ok"] is False and hybrid["status"] == ("crashed" if fault == "crash" else "timeout")
    assert doc["sections"]["kernels"]["status"] == "ran" and doc["sections"]["kernels"]["ok"] is True
    assert doc["sections"]["timings"]["status"] == "not planned"
