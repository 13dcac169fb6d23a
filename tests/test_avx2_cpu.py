"""The CPU-dependent tests again, on an emulated AVX2-only CPU.

The project's machines are Intel Xeons (AVX-512, AVX512-BF16, AMX) or AMD EPYCs
with AVX2 only; a session gets one of them, and the suite must pass on both.
Here the tests whose results depend on the CPU's instruction sets run in a
pytest of their own under QEMU's user-mode emulation of an AVX2-only AMD EPYC
(:data:`CPU_MODEL`: AVX2 and FMA, no AVX-512, BF16 or AMX). torch, NumPy, ONNX
Runtime, OpenVINO and the C++ SDK's kernels choose their code from the CPUID
they see, so each :data:`GROUPS` entry runs their AVX2 paths:

* ``ops``: torch's resize kernels, which ``segvol_rt.ops`` reproduces bit for bit;
* ``parity``: the pipeline against the official-style torch pipeline;
* ``openvino``: fp32 against ONNX Runtime; no BF16 offered, so bf16 is refused
  in one line and the bf16 tests skip with their reason;
* ``cpp``: the C++ SDK (loaded with ctypes into the emulated process) giving
  the Python runtime's masks, and refusing bf16.

QEMU emulates one process: programs a test starts run natively, so the tests
that only time or measure other programs (``slow``) are left out. A run is a few
minutes (TCG translates every instruction). Skips, with the reason, where
``qemu-x86_64`` is missing (``.ci/setup-qemu.sh`` installs Debian's qemu-user).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.cpp import sdk

ROOT = Path(__file__).resolve().parents[1]
QEMU = "qemu-x86_64"
CPU_MODEL = "EPYC-Milan-v1"  # Zen 3: AVX2 and FMA, no AVX-512, AVX512-BF16 or AMX
TIMEOUT_S = 1200

# group -> pytest arguments, and the tests whose outcome the group must show
GROUPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "ops": (["tests/ops/test_ops.py"], {"test_trilinear_matches_torch": "passed"}),
    "parity": (["tests/test_parity.py"], {}),
    "openvino": (["tests/backends/test_openvino.py", "-m", "not slow"],
                 {"test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it": "passed",
                  "test_bf16_runs_bf16_and_says_so": "skipped",
                  "test_bf16_masks_match_fp32_on_held_out_phantoms": "skipped",
                  "test_fp32_graph_outputs_match_onnxruntime_for_every_graph_and_prompt_kind": "passed"}),
    "cpp": (["tests/cpp/test_cpp_sdk.py::test_library_masks_equal_python",
             "tests/cpp/test_cpp_openvino.py::test_bf16_refused_where_the_cpu_lacks_it",
             "-k", "not large"],
            {"test_bf16_refused_where_the_cpu_lacks_it": "passed"}),
}

# what the emulated process must see: printed by PROBE as "name=value" lines
PROBE = r"""
import numpy as np
import torch
from tests.support.openvino_cpu import bf16_problem
features = np._core._multiarray_umath.__cpu_features__
print("numpy_avx2=%s" % features.get("AVX2"))
print("numpy_avx512f=%s" % features.get("AVX512F"))
print("torch=%s" % torch.backends.cpu.get_cpu_capability())
print("bf16_problem=%s" % bf16_problem())
"""


def _emulated(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-cpu", CPU_MODEL, sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _without_qemu_warnings(text: str) -> str:
    """QEMU warns once per CPUID feature TCG cannot give the model; the rest is the program's."""
    return "\n".join(line for line in text.splitlines() if not line.startswith(f"{QEMU}: warning:"))


@pytest.fixture(scope="module")
def emulator() -> str:
    if platform.machine() != "x86_64":
        pytest.skip("the emulated CPU is an x86-64 one; this machine is not")
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (.ci/setup-qemu.sh installs Debian's qemu-user)")
    for module in ("torch", "openvino"):
        pytest.importorskip(module)
    return QEMU


def test_the_emulated_cpu_is_avx2_only(emulator):
    """What the libraries see under the emulator: AVX2 without AVX-512, and no BF16 for OpenVINO."""
    run = _emulated("-c", PROBE, timeout=300)
    assert run.returncode == 0, _without_qemu_warnings(run.stderr)[-4000:]
    seen = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert (seen.get("numpy_avx2"), seen.get("numpy_avx512f"), seen.get("torch")) == ("True", "False", "AVX2"), seen
    assert seen.get("bf16_problem", "None").startswith("bf16 needs a CPU on which OpenVINO offers BF16"), seen


def _outcomes(report: Path) -> dict[str, str]:
    """Test name (without parameters) -> passed, skipped or failed; a parametrized
    test counts as passed only if every case passed."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "").split("[", 1)[0]
        kinds = {child.tag for child in case}
        outcome = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        if outcomes.get(name, outcome) != outcome:
            outcome = "failed" if "failed" in (outcome, outcomes[name]) else "mixed"
        outcomes[name] = outcome
    return outcomes


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_cpu_dependent_tests_pass_on_an_avx2_only_cpu(emulator, group, tmp_path):
    if group == "cpp" and (problem := sdk.missing_toolchain()):
        pytest.skip(problem)
    args, expected = GROUPS[group]
    report = tmp_path / "report.xml"
    run = _emulated("-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    f"--basetemp={tmp_path / 'inner'}", *args)
    output = _without_qemu_warnings(run.stdout + run.stderr)
    assert run.returncode == 0, output[-6000:]
    outcomes = _outcomes(report)
    assert outcomes and "failed" not in outcomes.values(), output[-6000:]
    assert {name: outcomes.get(name) for name in expected} == expected, output[-6000:]
