"""The full-size peak-RSS case both runtimes are held to: ../shared/data's CT
resampled to 1.5 mm (244x202x60, real anatomy at a real spacing), the benchmark
model (random weights in the released layout), ``--text aorta``, one whole
``infer`` process measured by benchmarks/memory.py's launcher.

Bounds, one table for the Python CLI (tests/backends/test_openvino.py) and the
C++ app (tests/cpp/test_cpp_memory.py): the C++ SDK keeps memory as the Python
runtime does. Measured on a 2-core AMD EPYC
(benchmarks/results/2026-12-05-cpu-tier-infer-ct-rss-epyc-shared.md; C++ 2026-12-06):
Python ONNX Runtime fp32 1071 MiB, OpenVINO fp32 996 MiB, OpenVINO bf16 792 MiB
(888-895 since bf16 keeps the prompt decoder in f32), the official-style torch flow
1525 MiB (before the memory work: 1358, 1396, 1275 against 1575); the C++ app 992,
854 and 806 MiB (1224, 1265 and 1218 before it kept memory as Python does). Each
bound is the Python peak and about 7% for run-to-run spread: a regression of one of
the measured savings (the shared ORT arena 48 MiB, OpenVINO's mapped weights about
290 MiB, the released decoder memory about 100 MiB) crosses it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PEAK_RSS_BOUND_MIB = {("onnxruntime", "fp32"): 1150, ("openvino", "fp32"): 1070, ("openvino", "bf16"): 955}
TEXT = "aorta"


def resampled_ct(real_ct: Path, work: Path) -> Path:
    """``real_ct`` resampled to 1.5 mm as the CPU benchmarks make it
    (benchmarks/cases.py), written into ``work``."""
    return _benchmark("cases").resampled_ct(work, 1.5, source=real_ct)


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of one run of ``cmd`` in a process of its own (benchmarks/memory.py's
    launcher: Linux keeps a peak RSS across exec, so a child forked straight from the
    pytest process, 2.1 GB after tests/cpp, would report at least that)."""
    return float(_benchmark("memory").measure(cmd)["peak_rss_mib"])


def _benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, loaded as a module (benchmarks/ is no package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"segvol_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
