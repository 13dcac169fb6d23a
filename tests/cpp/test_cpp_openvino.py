"""The C++ SDK's OpenVINO backend (backend=openvino, precision fp32 or bf16 in
segvol_load) against the Python runtime's (SegVolRuntime(backend="openvino")):
masks bit-identical on the demo model's held-out phantoms, with the same thread
count on both sides (OpenVINO's reductions depend on it). bf16 runs where the
CPU's OpenVINO offers BF16 and skips with the reason elsewhere; the refusals
(fp16, device cuda, bf16 on a CPU without it) are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt import SegVolRuntime
from segvol_rt.demo.phantom import make_phantom
from tests.cpp import sdk
from tests.cpp.test_cpp_sdk import CASES, SCANS, _request
from tests.support.openvino_cpu import bf16_problem

ov = pytest.importorskip("openvino")

THREADS = 2
OV_CASES = ("text", "box", "points", "text+box", "text+points-aligned", "free-phrase")


def _open(cpp_build, demo_artifacts, precision: str) -> sdk.CppRuntime:
    try:
        return sdk.CppRuntime(cpp_build, demo_artifacts, threads=THREADS, backend="openvino", precision=precision)
    except sdk.SdkError as exc:
        if "no OpenVINO backend" in exc.message:
            pytest.skip(exc.message)
        raise


def _precisions():
    bf16 = bf16_problem()
    return ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(bf16 is not None, reason=bf16 or ""))]


@pytest.fixture(scope="module", params=_precisions())
def runtimes(request, cpp_build, demo_artifacts):
    py = SegVolRuntime.load(demo_artifacts, backend="openvino", device="cpu", threads=THREADS, precision=request.param)
    cc = _open(cpp_build, demo_artifacts, request.param)
    yield request.param, py, cc
    cc.close()


@pytest.mark.parametrize("scan", ["ras", "large"])
def test_masks_equal_python_openvino(runtimes, scan):
    precision, py, cc = runtimes
    ph = make_phantom(**SCANS[scan])
    vol = np.asfortranarray(ph.image)
    py.set_volume(vol, ph.affine)
    cc.set_volume(vol, ph.affine)
    for case in OV_CASES:
        req = _request(CASES[case], ph)
        want, got = py.segment(**req), cc.segment_many([req])[0]
        assert np.array_equal(np.asarray(want.mask), got.mask), \
            f"{precision} {scan} {case}: {int(want.mask.sum())} vs {int(got.mask.sum())} voxels"
        assert got.n_windows == want.n_windows


def test_describes_openvino(cpp_build, demo_artifacts):
    cc = _open(cpp_build, demo_artifacts, "fp32")
    try:
        text = cc.lib.segvol_backend(cc.h).decode()
        assert text.startswith("openvino ") and f"cpu, {THREADS} threads, fp32" in text, text
    finally:
        cc.close()


@pytest.mark.parametrize(("options", "pattern"), [
    (dict(precision="fp16"), "computes in fp32 or bf16, not fp16"),
    (dict(precision="int8"), "computes in fp32 or bf16, not 'int8'"),
    (dict(device="cuda"), "backend openvino runs on the CPU"),
])
def test_refusals(cpp_build, demo_artifacts, options, pattern):
    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    with pytest.raises(sdk.SdkError, match=pattern) as err:
        sdk.CppRuntime(cpp_build, demo_artifacts, backend="openvino", **options)
    assert "\n" not in err.value.message


def test_bf16_refused_where_the_cpu_lacks_it(cpp_build, demo_artifacts, tmp_path):
    """bf16 as the Python backend decides it (OPTIMIZATION_CAPABILITIES lists BF16): where
    the CPU lacks it, one line naming what it offers; where it has it (this machine: AVX512-BF16),
    the load succeeds and says bf16 - so only one of the two sides runs on any one machine."""
    problem = bf16_problem()
    if problem is None:
        cc = _open(cpp_build, demo_artifacts, "bf16")
        assert "bf16" in cc.lib.segvol_backend(cc.h).decode()
        cc.close()
        return
    with pytest.raises(sdk.SdkError, match=r"bf16 needs a CPU on which OpenVINO offers BF16.*use precision fp32"):
        sdk.CppRuntime(cpp_build, demo_artifacts, backend="openvino", precision="bf16")


def test_compiled_models_are_cached_by_graph_sha256(cpp_build, demo_artifacts, tmp_path, monkeypatch):
    """The model cache as the Python backend's (segvol_rt.backends.openvino.graph_cache_dir):
    <$SEGVOL_RT_CACHE>/openvino/<the graph's sha256>/, so a graph replaced in place by one of
    the same size and mtime second is compiled again, never served from the old blob."""
    from segvol_rt.backends.openvino import graph_cache_dir
    from segvol_rt.io import spec as S
    from segvol_rt.io.artifacts import Artifacts

    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path))
    _open(cpp_build, demo_artifacts, "fp32").close()
    artifacts = Artifacts.load(demo_artifacts)
    root = tmp_path / "openvino"
    want = {graph_cache_dir(root, artifacts.graph_entry(g)["sha256"]) for g in (S.IMAGE_ENCODER, S.PROMPT_DECODER)}
    assert {b.parent for b in root.glob("*/*.blob")} >= want
    assert not list(root.glob("*.blob"))


def test_the_sdk_runs_from_the_cache_python_builds(cpp_build, demo_artifacts, tmp_path, monkeypatch):
    """`segvol-rt build --backend openvino` fills the cache for the C++ SDK too: the same
    blobs (cache folder, compile options), so a free phrase (the lazily compiled text
    encoder) runs without compiling anything."""
    from segvol_rt.app.build import build_openvino_cache

    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path))
    build_openvino_cache(demo_artifacts, threads=THREADS)
    blobs = {b: b.stat().st_mtime_ns for b in tmp_path.glob("openvino/*/*.blob")}
    assert len(blobs) == 3
    cc = _open(cpp_build, demo_artifacts, "fp32")
    try:
        ph = make_phantom(**SCANS["ras"])
        cc.set_volume(np.asfortranarray(ph.image), ph.affine)
        assert cc.segment_many([_request(CASES["free-phrase"], ph)])[0].mask.any()
    finally:
        cc.close()
    assert {b: b.stat().st_mtime_ns for b in tmp_path.glob("openvino/*/*.blob")} == blobs


def test_a_first_run_says_what_it_compiled_as_the_cli_does(cpp_build, demo_artifacts, tmp_path, monkeypatch):
    """segvol_compiled_graphs names the graphs a load compiled (none from the model cache), and
    the app prints the line `segvol-rt infer` prints for them; a second run, from the cache,
    prints none and compiled nothing."""
    import subprocess

    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    ph = make_phantom(**SCANS["ras"])
    scan = tmp_path / "ct.nii.gz"
    ph.save(scan)
    lines: dict[str, list[list[str]]] = {"C++": [], "Python": []}
    for side, program in (("C++", [str(cpp_build / "segvol-rt-infer")]), ("Python", ["segvol-rt", "infer"])):
        monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / f"cache-{side}"))
        for run in range(2):
            out = tmp_path / f"{side}-{run}.nii.gz"
            done = subprocess.run([*program, str(scan), "--artifacts", str(demo_artifacts), "--text", "liver",
                                   "--backend", "openvino", "--device", "cpu", "--precision", "fp32", "--out", str(out)],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            lines[side].append([line for line in done.stdout.splitlines() if line.startswith("OpenVINO compiled")])
    assert lines["C++"] == lines["Python"]
    assert len(lines["C++"][0]) == 1 and "image_encoder and prompt_decoder" in lines["C++"][0][0] and lines["C++"][1] == []
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / "cache-api"))
    for want in ("image_encoder,prompt_decoder", ""):
        cc = _open(cpp_build, demo_artifacts, "fp32")
        assert cc.lib.segvol_compiled_graphs(cc.h).decode() == want
        cc.close()
    cc = sdk.CppRuntime(cpp_build, demo_artifacts, threads=THREADS, backend="onnxruntime")
    assert cc.lib.segvol_compiled_graphs(cc.h) == b""
    cc.close()


def test_a_graph_cache_folder_in_the_way_is_one_line(cpp_build, demo_artifacts, tmp_path, monkeypatch):
    """As the Python backend's (tests/backends/test_openvino.py): the same line."""
    from segvol_rt.io import spec as S
    from segvol_rt.io.artifacts import Artifacts

    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path))
    folder = tmp_path / "openvino" / Artifacts.load(demo_artifacts).graph_entry(S.IMAGE_ENCODER)["sha256"]
    folder.parent.mkdir(parents=True)
    folder.write_text("")
    with pytest.raises(sdk.SdkError, match=r"cannot write the OpenVINO model cache .*\(File exists\); "
                                           r"set SEGVOL_RT_CACHE") as err:
        sdk.CppRuntime(cpp_build, demo_artifacts, backend="openvino", precision="fp32")
    assert "\n" not in err.value.message


def test_a_graph_sha256_that_is_no_digest_is_refused_even_unverified(cpp_build, demo_artifacts, tmp_path, monkeypatch):
    """The digest names the graph's cache folder: a manifest whose sha256 holds a path is
    one line at load (verify off too), and nothing is made outside the cache."""
    import json
    import shutil

    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    root = tmp_path / "artifacts"
    shutil.copytree(demo_artifacts, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["graphs"]["image_encoder"]["sha256"] = "../../escaped"
    (root / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(sdk.SdkError, match=r"manifest.json: the sha256 of image_encoder.onnx is not 64 lowercase "
                                           r"hex digits; export the artifacts again") as err:
        sdk.CppRuntime(cpp_build, root, backend="openvino", precision="fp32", verify=0)
    assert "\n" not in err.value.message
    assert not (tmp_path / "escaped").exists()


def test_library_option(cpp_build, demo_artifacts, tmp_path):
    """openvino_library (appended to segvol_load_options): a path that is no OpenVINO is one
    line - cannot load, or another library is already loaded in this process."""
    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    with pytest.raises(sdk.SdkError, match=r"(cannot load OpenVINO \(tried .*nothing\.so|is already loaded in this process)") as err:
        sdk.CppRuntime(cpp_build, demo_artifacts, backend="openvino", openvino_library=str(tmp_path / "nothing.so"))
    assert err.value.status == 3 and "\n" not in err.value.message


def test_options_of_the_first_abi2_release_still_load(cpp_build, demo_artifacts):
    """A caller built against the header before openvino_library was appended passes the
    smaller struct_size: the field is not read, the load works."""
    import ctypes

    lib = ctypes.CDLL(str(cpp_build / sdk.SONAME))
    lib.segvol_create.restype = ctypes.c_void_p
    lib.segvol_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(sdk.LoadOptions)]
    lib.segvol_destroy.argtypes = [ctypes.c_void_p]
    opts = sdk.LoadOptions()
    lib.segvol_load_options_init(ctypes.byref(opts))
    opts.struct_size = sdk.LoadOptions.openvino_library.offset
    opts.openvino_library = b"/must/not/be/read"
    h = lib.segvol_create()
    try:
        assert lib.segvol_load(h, str(demo_artifacts).encode(), ctypes.byref(opts)) == 0
    finally:
        lib.segvol_destroy(h)


_SIGNAL_STACK_SCRIPT = """
import json
import sys
from pathlib import Path
from segvol_rt.backends import signal_stack
from segvol_rt.demo.phantom import make_phantom
from tests.cpp import sdk

before = signal_stack.current()
cc = sdk.CppRuntime(Path(sys.argv[1]), Path(sys.argv[2]), backend="openvino", precision="fp32")
load = signal_stack.current()
ph = make_phantom(1301, (60, 60, 20))
cc.set_volume(ph.image, ph.affine)
cc.segment_many([{"text": "liver"}])
segment = signal_stack.current()
cc.close()
print(json.dumps({"before": before, "load": load, "segment": segment, "close": signal_stack.current()}))
"""


def test_calling_threads_signal_stack_kept(cpp_build, demo_artifacts):
    """OpenVINO's CPU plugin gives the thread that creates it an alternate signal stack of its
    own (about 11 KiB, in place of the one the application set, if any): the SDK gives the
    caller's thread its own setting back after every call into OpenVINO (load, compile,
    inference, destroy), as the Python backend does. In a fresh process, where the plugin is
    created on this thread."""
    import json
    import subprocess
    import sys

    from segvol_rt.backends import signal_stack

    if signal_stack.current() is None:
        pytest.skip("sigaltstack is Linux's")
    _open(cpp_build, demo_artifacts, "fp32").close()  # skips where the build has no OpenVINO
    run = subprocess.run([sys.executable, "-c", _SIGNAL_STACK_SCRIPT, str(cpp_build), str(demo_artifacts)],
                         capture_output=True, text=True, cwd=sdk.ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["load"] == seen["segment"] == seen["close"] == seen["before"], seen
