"""What machine a benchmark ran on: CPU model, memory, GPUs, package versions;
and the one thing a benchmark of whole processes sets up in the install
(:func:`compile_bytecode`)."""

from __future__ import annotations

import compileall
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segvol_rt._system import cpu_cores

# -- the machine ----------------------------------------------------------------

_VERSION_PACKAGES = (
    "segvol-rt", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "onnx", "nibabel", "tokenizers",
    "isal", "cupy-cuda12x", "cupy-cuda13x", "tensorrt", "scipy", "openvino",
)
# The CPU flags that decide which matrix paths the CPU backends take
# (AVX2/AVX-512 fp32, AVX512-BF16 and AMX bf16, VNNI int8, AVX512-FP16).
MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16",
                "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The :data:`MATRIX_FLAGS` this CPU reports (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in MATRIX_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def gpu_info() -> list[dict[str, str]]:
    """GPUs as nvidia-smi lists them (name, memory, driver); empty without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    query = "name,memory.total,driver_version,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = query.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


def package_versions(names: Iterable[str] = _VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that matter here (metadata only, no imports)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    """CPU model and cores, memory, load, GPUs and package versions."""
    usable = cpu_cores()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cores": os.cpu_count(),
            "usable_cores": usable,
            "memory_gib": _memory_gib(),
            "os": platform.platform(),
            "load_average_at_start": load,
        },
        "gpu": gpu_info(),
        "versions": package_versions(),
    }


def machine_line(meta: Mapping[str, Any]) -> str:
    m = meta.get("machine", {})
    gpus = meta.get("gpu") or []
    gpu = ", ".join(g.get("name", "?") for g in gpus) or "no GPU"
    v = meta.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt", "numpy")
                     if k in v)
    flags = " ".join(m.get("cpu_flags") or []) or "?"
    return (
        f"Machine: {m.get('cpu', '?')} ({flags}), {m.get('usable_cores', '?')} cores, {m.get('memory_gib', '?')} GiB; {gpu}; "
        f"load average at start {m.get('load_average_at_start')}; {libs}."
    )


# -- the install -----------------------------------------------------------------------


def compile_bytecode() -> str:
    """Compile segvol-rt's modules to bytecode now, as pip does when it installs a
    wheel, and say so in a line for the report.

    Benchmarks of whole processes time what a user's install runs: modules read
    from their compiled bytecode. An editable install under
    ``PYTHONDONTWRITEBYTECODE`` (this project's machines set it) never writes any,
    so every run compiled the source of the modules it imports again: 0.2-0.3 s
    of each one-shot ``segvol-rt infer`` (2-core EPYC), none of it a user's."""
    import segvol_rt

    package = Path(segvol_rt.__file__).parent
    # quiet=1: failures only; a read-only install keeps whatever bytecode it has
    if compileall.compile_dir(package, quiet=1, workers=1):
        return f"segvol-rt's bytecode: compiled ahead of the runs, as a wheel's install does ({package})."
    return f"segvol-rt's bytecode: could not be compiled ahead in {package}; the runs compile what they import."
