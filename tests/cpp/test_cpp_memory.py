"""The C++ SDK keeps memory as the Python runtime does (segvol_rt.backends.resident,
cpp/src/resident.cpp): the same mappings chosen for dropping, their pages given
back and read back unchanged, and the C++ app's peak RSS on the full-size
real-CT case within the bounds the Python CLI is held to
(tests/support/full_size_memory.py)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from segvol_rt.backends import resident
from tests.backends.test_cpu_memory import SMAPS, assert_dropped_pages_leave_the_resident_set
from tests.cpp import sdk
from tests.support import full_size_memory as M
from tests.support.openvino_cpu import bf16_problem

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise are Linux's")


def _paths(*names: str):
    return (ctypes.c_char_p * len(names))(*(n.encode() for n in names))


def test_the_same_mappings_are_chosen_as_in_python(cpp_build):
    lib = sdk.hooks(cpp_build)
    files = ("/models/a.onnx", "/models/b.onnx")
    starts, ends = (ctypes.c_ulonglong * 8)(), (ctypes.c_ulonglong * 8)()
    n = lib.svt_droppable(SMAPS.encode(), _paths(*files), len(files), starts, ends, 8)
    python = resident.droppable(resident.file_mappings(SMAPS), files)
    assert [(starts[i], ends[i]) for i in range(n)] == [(m.start, m.end) for m in python]
    assert n == 1  # the writable and the copy-on-write ranges are kept


@linux_only
def test_dropped_pages_leave_the_resident_set_and_read_back_the_same(cpp_build, tmp_path):
    lib = sdk.hooks(cpp_build)
    lib.svt_drop_mapped_pages.restype = ctypes.c_ulonglong
    assert_dropped_pages_leave_the_resident_set(
        lambda files: lib.svt_drop_mapped_pages(_paths(*map(str, files)), len(files)), tmp_path)
    assert lib.svt_drop_mapped_pages(_paths(str(tmp_path / "absent.bin")), 1) == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")])
def test_full_size_app_peak_rss_on_a_real_ct_within_pythons_bounds(cpp_build, tmp_path, real_ct, backend, precision):
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    if backend == "openvino":
        pytest.importorskip("openvino")  # the build takes its headers and library from the wheel
        problem = bf16_problem() if precision == "bf16" else None
        if problem:
            pytest.skip(problem)
    scan = M.resampled_ct(real_ct, tmp_path)
    artifacts = prepare_bench_model("official").artifacts
    peak = M.peak_rss_mib([str(cpp_build / "segvol-rt-infer"), str(scan), "--artifacts", str(artifacts), "--text", M.TEXT,
                           "--backend", backend, "--device", "cpu", "--precision", precision,
                           "--out", str(tmp_path / "m.nii.gz"), "-q"])
    print(f"C++ {backend} {precision}: peak RSS {peak:.0f} MiB")
    assert peak <= M.PEAK_RSS_BOUND_MIB[backend, precision]
