"""The CUDA sources compile - checked on machines without a GPU.

* nvcc (when on PATH): each kernels/*.cu, as NVRTC sees it (common.cuh first)
  plus every template instantiation of ``segvol_rt.kernels.NAME_EXPRESSIONS``,
  to sm_90 machine code with ``-std=c++17``, warnings counted as failures;
* NVRTC through CuPy's own compiler (when cupy and libnvrtc load; no GPU
  needed), with the exact options and name expressions the loader uses;
* every ``__global__`` function is in NAME_EXPRESSIONS, and every name
  expression resolves to a kernel of its file.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from segvol_rt import kernels as K

ARCH = "sm_90"


def _with_instances(file: str) -> str:
    table = ",\n".join(f"    (const void*)&{name}" for name in K.NAME_EXPRESSIONS[file])
    return K.full_source(file) + f'\nextern "C" const void* segvol_rt_instances[] = {{\n{table}\n}};\n'


@pytest.mark.parametrize("file", sorted(K.NAME_EXPRESSIONS))
def test_nvcc_compiles(file, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the CUDA sources are compile-checked where it is")
    src = tmp_path / file
    src.write_text(_with_instances(file))
    cmd = [nvcc, "-std=c++17", f"-arch={ARCH}", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"), str(src)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-6000:]
    warnings = [line for line in run.stderr.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)
    spills = [line for line in run.stderr.splitlines() if re.search(r"[1-9]\d* bytes spill", line)]
    assert not spills, "\n".join(spills)


def _nvrtc_program():
    try:
        from cupy.cuda import compiler
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cupy is not importable ({exc}): NVRTC is checked where it is")
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"libnvrtc does not load ({exc})")
    return compiler._NVRTCProgram  # the class RawModule compiles through


@pytest.mark.parametrize("file", sorted(K.NAME_EXPRESSIONS))
def test_nvrtc_compiles_with_the_loader_options(file):
    program = _nvrtc_program()
    names = list(K.NAME_EXPRESSIONS[file])
    prog = program(K.full_source(file), file, (), (), name_expressions=names, method="cubin")
    # the options cupy adds for a RawModule: the target and device-by-default
    options = K.OPTIONS + (f"-arch={ARCH}", "--device-as-default-execution-space")
    _, mapping = prog.compile(options, None)
    assert set(mapping) == set(names)


def test_every_kernel_is_listed():
    for file, names in K.NAME_EXPRESSIONS.items():
        text = K.source_text(file)
        defined = set(re.findall(r"__global__\s+void\s+(\w+)\s*\(", text))
        listed = {n.split("<")[0] for n in names}
        assert defined == listed, file
        assert len(set(names)) == len(names), file


def test_sources_ship_as_package_data():
    assert "SEGVOL_BLOCK" in K.source_text(K.COMMON)
    assert f"#define SEGVOL_BLOCK {K.BLOCK}" in K.source_text(K.COMMON)
    for file in K.NAME_EXPRESSIONS:
        assert K.full_source(file).startswith(K.source_text(K.COMMON))
