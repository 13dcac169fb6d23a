"""One source for what Python and C++ share: the committed C++ header and the
nvcc instantiation table (cpp/src/generated/, written by cpp/tools/gen_shared.py)
equal what the Python values give now, and no C++ source spells them again."""

from __future__ import annotations

import importlib.util
import re

from tests.cpp import sdk

SRC = sdk.ROOT / "cpp" / "src"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_shared", sdk.ROOT / "cpp" / "tools" / "gen_shared.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_current():
    gen = _generator()
    stale = [str(p.relative_to(sdk.ROOT)) for p in gen.stale()]
    assert not stale, f"{stale} drifted from the Python values: run python cpp/tools/gen_shared.py"


def test_generator_follows_the_python_values(monkeypatch):
    """A changed Python value changes the header (the check is not vacuous)."""
    from segvol_rt.io import spec as S
    from segvol_rt.pipeline import zoom as Z

    gen = _generator()
    monkeypatch.setattr(Z, "OVERLAP", 0.25)
    monkeypatch.setattr(S, "EXTRA_TOKENS", 5)
    text = gen.render_header()
    assert "OVERLAP = 0.25;" in text and "EXTRA_TOKENS = 5;" in text


def test_every_name_expression_is_instantiated():
    from segvol_rt import kernels as K

    table = (SRC / "generated" / "kernel_instances.inc").read_text()
    for names in K.NAME_EXPRESSIONS.values():
        for name in names:
            assert f"(const void*)&{name}}}" in table
    assert '#include "generated/kernel_instances.inc"' in (SRC / "cuda_kernels.cu").read_text()


def test_no_cpp_source_restates_them():
    """The shared values are defined only in the generated header."""
    pattern = re.compile(r"\b(OVERLAP|POINT_EXTRA_POSITIVE|POINT_EXTRA_NEGATIVE|EXTRA_TOKENS|LABEL_[A-Z_]+)\s*=")
    for path in sorted(SRC.rglob("*")):
        if path.suffix in (".cpp", ".hpp", ".cu", ".inc") and "generated" not in path.parts:
            hits = pattern.findall(path.read_text())
            assert not hits, f"{path.relative_to(sdk.ROOT)} defines {hits}: use generated/shared_constants.hpp"
    # no template instantiation of a kernel spelled by hand for nvcc
    assert "template __global__" not in (SRC / "cuda_kernels.cu").read_text()


def test_launchers_are_checked_against_the_list(tmp_path):
    """is_kernel (generated) accepts the list's names and rejects others at compile time, and
    the host launchers static_assert each kernel they instantiate with it."""
    import shutil
    import subprocess

    import pytest

    cxx = shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    probe = tmp_path / "probe.cpp"
    probe.write_text('#include "generated/shared_constants.hpp"\n'
                     "using segvol::detail::shared::is_kernel;\n"
                     'static_assert(is_kernel("resize_nearest<float, 0>") && is_kernel("scan_mask"));\n'
                     'static_assert(!is_kernel("resize_nearest<float, 2>") && !is_kernel("scan_mas"));\n')
    run = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", f"-I{SRC}", str(probe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    impl = (SRC / "kernels_impl.inc").read_text()
    for kernel in ("resize_nearest<float, 1>", "bbox<unsigned char, 0>", "paste<float>", "scan_mask"):
        assert f'SEGVOL_ON_THE_LIST("{kernel}")' in impl
