"""The C++ SDK's tooling: an AddressSanitizer + UndefinedBehaviorSanitizer
build of the tests (its ctest, and its sample app against the release app),
valgrind memcheck of the sample app, the install rules with a consumer
project using find_package(segvol_rt), the nvcc compile of the kernels
(compile only: no GPU here), and one full-size golden comparison (random
weights, small scan).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from segvol_rt import SegVolRuntime
from segvol_rt.demo.phantom import make_phantom
from tests.cpp import sdk

CPP = sdk.ROOT / "cpp"


@pytest.fixture(scope="module")
def asan_build(cpp_build):
    """The sanitizer build (its own directory beside the release build; Debug: -O0 -g, quick to
    compile, the clearest reports), built and ctest-ed once."""
    return sdk.build(Path(str(cpp_build) + "-asan"), "-DSEGVOL_RT_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    make_phantom(1020, (64, 64, 32)).save(path)
    return path


def _infer(app: Path, scan: Path, out: Path, artifacts: Path, *extra: str, env=None, wrapper=()) -> subprocess.CompletedProcess:
    cmd = [*wrapper, str(app), str(scan), "--artifacts", str(artifacts), "--text", "liver", "--point", "30,30,16",
           "--out", str(out), "-q", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_sanitizer_build_app_equals_release(asan_build, cpp_build, scan, demo_artifacts, tmp_path):
    """ctest passed inside the build (C ABI bad input, host checks) under ASan+UBSan;
    the sanitized app then runs a phantom with no report and the release app's mask."""
    nib = pytest.importorskip("nibabel")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    a = _infer(asan_build / "segvol-rt-infer", scan, tmp_path / "asan.nii.gz", demo_artifacts, env=env)
    assert a.returncode == 0, a.stderr[-4000:]
    assert "runtime error" not in a.stderr and "AddressSanitizer" not in a.stderr
    r = _infer(cpp_build / "segvol-rt-infer", scan, tmp_path / "rel.nii.gz", demo_artifacts)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "asan.nii.gz").dataobj),
                                  np.asanyarray(nib.load(tmp_path / "rel.nii.gz").dataobj))


def test_generic_and_fma_kernels_agree(cpp_build, scan, demo_artifacts, tmp_path):
    """The kernels' generic build (libm fmaf) and FMA build give the same mask."""
    nib = pytest.importorskip("nibabel")
    env = dict(os.environ, SEGVOL_RT_KERNELS="generic")
    a = _infer(cpp_build / "segvol-rt-infer", scan, tmp_path / "generic.nii.gz", demo_artifacts, env=env)
    b = _infer(cpp_build / "segvol-rt-infer", scan, tmp_path / "fma.nii.gz", demo_artifacts)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "generic.nii.gz").dataobj),
                                  np.asanyarray(nib.load(tmp_path / "fma.nii.gz").dataobj))


@pytest.mark.slow
def test_valgrind_memcheck_app(cpp_build, scan, demo_artifacts, tmp_path):
    """valgrind memcheck of the sample app on one phantom (about a minute and a half):
    no errors and no leaks (definite, indirect or possible) outside ONNX Runtime's
    own suppressed, explained reports (cpp/tests/valgrind-ort.supp)."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (.ci/setup-cpp.sh installs it)")
    wrapper = ("valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite,indirect,possible",
               "--errors-for-leak-kinds=definite,indirect,possible", "--error-exitcode=3",
               f"--suppressions={CPP / 'tests' / 'valgrind-ort.supp'}")
    run = _infer(cpp_build / "segvol-rt-infer", scan, tmp_path / "vg.nii.gz", demo_artifacts, "--threads", "1", wrapper=wrapper)
    assert run.returncode == 0, run.stderr[-6000:]
    assert "ERROR SUMMARY: 0 errors" in run.stderr
    assert "definitely lost: 0 bytes" in run.stderr or "All heap blocks were freed" in run.stderr


def test_install_and_find_package_consumer(cpp_build, demo_artifacts, tmp_path):
    """cmake --install, then a minimal project with find_package(segvol_rt) and the C++
    header builds, runs and gives the Python runtime's mask."""
    prefix = tmp_path / "prefix"
    inst = subprocess.run(["cmake", "--install", str(cpp_build), "--prefix", str(prefix)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr
    for rel in ("include/segvol_rt/segvol_rt.h", "include/segvol_rt/segvol_rt.hpp", "bin/segvol-rt-infer"):
        assert (prefix / rel).exists(), rel
    libdir = next(p for p in (prefix / "lib", prefix / "lib64", prefix / "lib" / "x86_64-linux-gnu") if (p / "cmake").is_dir())
    assert (libdir / sdk.SONAME).exists() and (libdir / "cmake" / "segvol_rt" / "segvol_rtConfig.cmake").exists()
    build = tmp_path / "consumer"
    cfg = subprocess.run(["cmake", "-S", str(CPP / "tests" / "consumer"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    ph = make_phantom(1021, (64, 60, 30))
    raw = tmp_path / "scan.raw"
    np.asfortranarray(ph.image.astype("<i2")).T.tofile(raw)  # i fastest
    run = subprocess.run([str(build / "consumer"), str(demo_artifacts), str(raw), *map(str, ph.image.shape)],
                         capture_output=True, text=True, env=dict(os.environ, LD_LIBRARY_PATH=str(libdir)))
    assert run.returncode == 0, run.stderr
    py = SegVolRuntime.load(demo_artifacts, backend="onnxruntime", device="cpu")
    py.set_volume(np.asfortranarray(ph.image))
    assert int(run.stdout.strip()) == int(np.asarray(py.segment(text="liver").mask).sum())


def test_cuda_kernels_compile(tmp_path):
    """GPU, prepared: the kernels of the device-side pipeline compile with nvcc.
    Compile only - nothing runs on a GPU in this test suite (none is here)."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    run = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", f"-I{sdk.ROOT / 'kernels'}", "-c",
                          str(CPP / "src" / "cuda_kernels.cu"), "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.slow
def test_full_size_random_weights(cpp_build):
    """Once at full size (random weights, the benchmark's blob model, exported once into
    ~/.cache/segvol-rt/bench): the C++ masks equal SegVolRuntime's on a small scan."""
    pytest.importorskip("torch")
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    model = prepare_bench_model("official")
    ph = make_phantom(1022, (72, 64, 28))
    vol = np.asfortranarray(ph.image)
    py = SegVolRuntime.load(model.artifacts, backend="onnxruntime", device="cpu")
    py.set_volume(vol, ph.affine)
    cc = sdk.CppRuntime(cpp_build, model.artifacts)
    cc.set_volume(vol, ph.affine)
    reqs = [{"text": "liver"}, {"box": (10, 10, 5, 50, 50, 20), "zoom_in": False}]
    for want, got in zip(py.segment_many(reqs), cc.segment_many(reqs)):
        assert np.array_equal(np.asarray(want.mask), got.mask)
        assert want.n_windows == got.n_windows
    cc.close()


def _extra_ort_libraries() -> list:
    """libonnxruntime.so.1.* files of other releases, from $SEGVOL_RT_EXTRA_ORT_LIBS (colon-separated)."""
    paths = [Path(p) for p in os.environ.get("SEGVOL_RT_EXTRA_ORT_LIBS", "").split(":") if p]
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason="set SEGVOL_RT_EXTRA_ORT_LIBS to other ORT releases' libraries"))]
    return [pytest.param(p, id=p.name) for p in paths]


@pytest.mark.parametrize("library", _extra_ort_libraries())
def test_same_binary_on_other_ort_releases(cpp_build, scan, demo_artifacts, tmp_path, library):
    """The app built against the ORT 1.29 headers runs on another release's library (given
    at run time) and writes the mask the default library gives (run here with the 1.29.0
    and 1.31.0 wheels' libraries beside 1.32.0)."""
    nib = pytest.importorskip("nibabel")
    a = _infer(cpp_build / "segvol-rt-infer", scan, tmp_path / "other.nii.gz", demo_artifacts, "--ort-library", str(library))
    b = _infer(cpp_build / "segvol-rt-infer", scan, tmp_path / "default.nii.gz", demo_artifacts)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "other.nii.gz").dataobj),
                                  np.asanyarray(nib.load(tmp_path / "default.nii.gz").dataobj))


def test_onnxruntime_root_configures(cpp_build, tmp_path):
    """-DONNXRUNTIME_ROOT= an official release layout (include/, lib/libonnxruntime.so.1.*):
    its headers are used and its library becomes the run-time default."""
    import glob

    import onnxruntime

    headers = subprocess.run(["bash", str(CPP / "fetch-ort-headers.sh")], capture_output=True, text=True, check=True).stdout.strip()
    root = tmp_path / "onnxruntime-linux-x64"
    (root / "lib").mkdir(parents=True)
    (root / "include").symlink_to(headers, target_is_directory=True)
    lib = sorted(glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.1*")))[-1]
    (root / "lib" / Path(lib).name).symlink_to(lib)
    build = tmp_path / "b"
    run = subprocess.run(["cmake", "-S", str(CPP), "-B", str(build), f"-DONNXRUNTIME_ROOT={root}", "-DSEGVOL_RT_TESTS=OFF"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"ONNX Runtime headers {root}/include; default library: {root}/lib/{Path(lib).name}" in run.stdout
