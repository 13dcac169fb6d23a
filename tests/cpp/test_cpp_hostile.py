"""The C++ SDK under hostile use (issue 22): the C ABI's memory safety (sizes of
the caller's memory, dims whose product overflows, a failed reload keeping the
working runtime, per-thread errors: the two-thread cases are the ctest
``capi_threads``, here also run under ASan+UBSan) and the sample app's promise
(an --out that is not a regular file refused, a truncated or non-finite scan
refused in one line as ``segvol-rt infer`` does, numeric options checked).
"""

from __future__ import annotations

import ctypes
import gzip
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.demo.phantom import make_phantom
from tests.cpp import sdk

nib = pytest.importorskip("nibabel")


# -- the C ABI ------------------------------------------------------------------------------


def _raw_call(cc: sdk.CppRuntime, shape: tuple[int, int, int], capacity: int, probabilities: bool = False):
    """segvol_segment of one text target with buffers of `capacity` voxels (guarded by
    32 sentinel bytes): (status, dims reported, mask buffer)."""
    mask = np.full(capacity + 32, 0xCD, np.uint8)
    prob = np.zeros(capacity + 8, np.float32)
    t = sdk.Target()
    cc.lib.segvol_target_init(ctypes.byref(t))
    t.text = b"liver"
    t.zoom_in = 0
    mptr = (ctypes.c_void_p * 1)(mask.ctypes.data)
    pptr = (ctypes.c_void_p * 1)(prob.ctypes.data) if probabilities else None
    dims = (ctypes.c_int64 * 3)()
    status = cc.lib.segvol_segment(cc.h, ctypes.byref(t), 1, mptr, pptr, capacity, dims, None)
    return status, tuple(dims), mask


def test_segment_refuses_small_buffers_and_gives_dims(cpp_build, demo_artifacts):
    """Buffers smaller than the volume: refused (BUFFER_TOO_SMALL), nothing written, the
    volume's dims given back; buffers that fit: the mask, the dims and untouched guard bytes."""
    ph = make_phantom(1060, (48, 40, 24))
    cc = sdk.CppRuntime(cpp_build, demo_artifacts, threads=1)
    try:
        cc.set_volume(ph.image, ph.affine)
        n = int(np.prod(ph.image.shape))
        for probabilities in (False, True):
            status, dims, mask = _raw_call(cc, ph.image.shape, n - 1, probabilities)
            assert status == sdk.BUFFER_TOO_SMALL and dims == ph.image.shape
            assert (mask == 0xCD).all()
            assert "nothing was written" in cc.lib.segvol_last_error().decode()
        status, dims, mask = _raw_call(cc, ph.image.shape, n)
        assert status == 0 and dims == ph.image.shape and (mask[n:] == 0xCD).all() and set(np.unique(mask[:n])) <= {0, 1}
        assert cc.lib.segvol_last_error() == b""
    finally:
        cc.close()


@pytest.mark.parametrize("dims", [(2**31, 2**31, 4), (2**62 + 1, 4, 1), (2**63 - 1, 2**63 - 1, 2), (2**31, 1, 1), (3, -4, 5)],
                         ids=["2^31x2^31x4", "2^62+1x4x1", "int64max", "extent-over-int", "negative"])
def test_overflowing_dims_refused(cpp_build, demo_artifacts, dims):
    """dims whose product (or byte size) overflows: one line, INVALID_ARGUMENT, no crash and no
    read of the (4-voxel) buffer, even with a data size that claims to be enormous."""
    cc = sdk.CppRuntime(cpp_build, demo_artifacts, threads=1)
    try:
        data = np.zeros(4, np.float32)
        d = (ctypes.c_int64 * 3)(*dims)
        status = cc.lib.segvol_set_volume(cc.h, data.ctypes.data, ctypes.c_size_t(2**64 - 1), sdk.DTYPES["float32"], d, None)
        msg = cc.lib.segvol_last_error().decode()
        assert status == 1 and "\n" not in msg and ("dims" in msg or "empty" in msg), msg
    finally:
        cc.close()


def test_data_size_must_cover_dims(cpp_build, demo_artifacts):
    """set_volume reads no more than the caller says it has."""
    cc = sdk.CppRuntime(cpp_build, demo_artifacts, threads=1)
    try:
        vol = np.asfortranarray(make_phantom(1061, (40, 40, 20)).image)
        d = (ctypes.c_int64 * 3)(*vol.shape)
        status = cc.lib.segvol_set_volume(cc.h, vol.ctypes.data, vol.nbytes - 2, sdk.DTYPES["int16"], d, None)
        assert status == 1 and "need" in cc.lib.segvol_last_error().decode()
    finally:
        cc.close()


def test_failed_reload_keeps_the_runtime(cpp_build, demo_artifacts, tmp_path):
    """A failed segvol_load on a loaded handle (missing or damaged artifacts) keeps the working
    runtime, its backend and its volume: the next segment gives the same mask."""
    ph = make_phantom(1062, (64, 56, 28))
    cc = sdk.CppRuntime(cpp_build, demo_artifacts, threads=1)
    try:
        cc.set_volume(ph.image, ph.affine)
        before = cc.segment_many([{"text": "liver"}])[0].mask
        backend = cc.lib.segvol_backend(cc.h)
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "manifest.json").write_text("{")
        opts = sdk.LoadOptions()
        cc.lib.segvol_load_options_init(ctypes.byref(opts))
        for where in (broken, tmp_path / "missing"):
            assert cc.lib.segvol_load(cc.h, str(where).encode(), ctypes.byref(opts)) == 2
        assert cc.lib.segvol_backend(cc.h) == backend and backend.startswith(b"onnxruntime")
        assert np.array_equal(cc.segment_many([{"text": "liver"}])[0].mask, before)
    finally:
        cc.close()


def test_capi_threads_under_sanitizers(cpp_build, demo_artifacts):
    """The two-thread cases (set_volume racing segment on one handle, last_error/backend
    racing failing calls and reloads, the C++ header's resizing) under ASan+UBSan."""
    build = Path(str(cpp_build) + "-asan")
    sdk.build(build, "-DSEGVOL_RT_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug")  # its ctest runs them too
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    for exe, name in (("test_capi_threads", "capi threads: ok"), ("test_capi", "capi: ok")):
        run = subprocess.run([str(build / "tests" / exe), str(demo_artifacts)], capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
        assert name in run.stdout and "AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr


# -- the sample app -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "scan.nii.gz"
    make_phantom(1063, (64, 64, 32)).save(path)
    return path


def _app(cpp_build: Path, scan: Path, artifacts: Path, *extra: str, out: Path | str | None = None) -> subprocess.CompletedProcess:
    argv = [str(cpp_build / "segvol-rt-infer"), str(scan), "--artifacts", str(artifacts), "-q", *extra]
    if out is not None:
        argv += ["--out", str(out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "** ERROR" not in run.stderr
    return lines[0]


def _cli_error(scan: Path, artifacts: Path, out: Path, *extra: str) -> str:
    run = subprocess.run([sys.executable, "-m", "segvol_rt", "infer", str(scan), "--artifacts", str(artifacts), "--backend",
                          "onnxruntime", "--device", "cpu", "--text", "liver", "--out", str(out), "-q", *extra],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    return run.stderr.strip()


def test_app_refuses_outputs_that_are_not_regular_files(cpp_build, demo_artifacts, scan, tmp_path):
    """A FIFO, a character device, a directory, or a FIFO where the sidecar goes: refused in
    the CLI's words, left as they were; nothing written."""
    fifo = tmp_path / "mask.nii.gz"
    os.mkfifo(fifo)
    side_fifo = tmp_path / "two.json"
    os.mkfifo(side_fifo)
    (tmp_path / "dir.nii.gz").mkdir()
    cases = [
        (fifo, ("--text", "liver"), "exists and is not a regular file"),
        ("/dev/null", ("--text", "liver"), "exists and is not a regular file"),
        (tmp_path / "dir.nii.gz", ("--text", "liver"), "is a directory"),
        (tmp_path / "two.nii.gz", ("--text", "liver", "--text", "spleen"), "exists and is not a regular file"),
    ]
    for out, prompts, words in cases:
        line = _one_line_error(_app(cpp_build, scan, demo_artifacts, *prompts, out=out))
        assert words in line and "choose another --out" in line, line
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISFIFO(side_fifo.stat().st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not (tmp_path / "two.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.nii.gz", "mask.nii.gz", "two.json"]


def _truncations(scan: Path, tmp: Path) -> dict[str, Path]:
    raw = scan.read_bytes()
    plain = gzip.decompress(raw)
    cases = {
        "gz-half": raw[: len(raw) // 2],
        "gz-no-trailer": raw[:-4],  # every voxel there, the stream's length/CRC missing
        "gz-in-header": raw[:40],
        "nii-half": plain[: len(plain) // 2],
    }
    out = {}
    for name, data in cases.items():
        p = tmp / (name + (".nii" if name.startswith("nii") else ".nii.gz"))
        p.write_bytes(data)
        out[name] = p
    return out


def test_app_truncated_scans_are_one_line(cpp_build, demo_artifacts, scan, tmp_path):
    """Truncated .nii.gz / .nii: exit 2, one line naming the scan and the truncation (the
    CLI's words), no libniftiio line, nothing written."""
    for name, bad in _truncations(scan, tmp_path).items():
        out = tmp_path / f"{name}_mask.nii.gz"
        line = _one_line_error(_app(cpp_build, bad, demo_artifacts, "--text", "liver", out=out))
        assert str(bad) in line and ("truncated" in line or "cannot read scan" in line), (name, line)
        assert not out.exists()
        cli = _cli_error(bad, demo_artifacts, tmp_path / f"{name}_py.nii.gz")
        assert ("truncated" in cli) == ("truncated" in line), (name, cli, line)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_app_non_finite_voxels_refused_as_cli(cpp_build, demo_artifacts, tmp_path, value):
    """A NaN or infinite voxel (which libniftiio would silently zero): refused with the CLI's line."""
    ph = make_phantom(1064, (48, 48, 24))
    data = ph.image.astype(np.float32)
    data[3, 4, 5] = value
    data[7, 8, 9] = value
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, ph.affine), bad)
    out = tmp_path / "mask.nii.gz"
    line = _one_line_error(_app(cpp_build, bad, demo_artifacts, "--text", "liver", out=out))
    cli = _cli_error(bad, demo_artifacts, tmp_path / "py.nii.gz")
    assert line == cli and "has 2 NaN or infinite voxels" in line
    assert not out.exists()


def test_app_unreadable_and_4d_scans(cpp_build, demo_artifacts, tmp_path):
    """Not NIfTI at all, or 4D with several volumes: one line, libniftiio's words kept off stderr."""
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not a NIfTI file at all" * 20)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), four)
    for bad, words in ((junk, "cannot read scan"), (four, "a 3D volume is needed")):
        line = _one_line_error(_app(cpp_build, bad, demo_artifacts, "--text", "liver", out=tmp_path / "m.nii.gz"))
        assert words in line, line


@pytest.mark.parametrize("argv", [
    ["--seed", "abc"], ["--seed", "-1"], ["--seed", "18446744073709551616"], ["--seed", "1x"],
    ["--threads", "abc"], ["--threads", "0"], ["--threads", "-2"], ["--threads", "99999999999"],
    ["--repeat", "abc"], ["--repeat", "-1"],
    ["--box", "0,0,0,99999999999999999999,5,5"], ["--point", "1,2,3,abc"],
], ids=lambda a: " ".join(a))
def test_app_numeric_options_checked(cpp_build, demo_artifacts, scan, tmp_path, argv):
    out = tmp_path / "mask.nii.gz"
    line = _one_line_error(_app(cpp_build, scan, demo_artifacts, "--text", "liver", *argv, out=out))
    assert argv[0] in line or argv[1] in line, line
    assert not out.exists()


def test_long_orientation_codes_are_one_line(cpp_build, demo_artifacts, scan, tmp_path):
    """Axis codes of 100 000 characters, from the app's --reorient or an artifacts manifest's
    voxel_orientation: one line and exit 2 (std::regex recursed per character and overflowed
    the stack: SIGSEGV)."""
    import json
    import shutil

    long_codes = "R" * 100_000
    out = tmp_path / "mask.nii.gz"
    line = _one_line_error(_app(cpp_build, scan, demo_artifacts, "--text", "liver", "--reorient", long_codes, out=out))
    assert line.startswith("error: reorient: orientation must be three axis codes"), line[:200]
    assert not out.exists()
    copied = tmp_path / "artifacts"
    shutil.copytree(demo_artifacts, copied)
    manifest = json.loads((copied / "manifest.json").read_text())
    manifest["voxel_orientation"] = long_codes
    (copied / "manifest.json").write_text(json.dumps(manifest))
    line = _one_line_error(_app(cpp_build, scan, copied, "--text", "liver", out=out))
    assert "voxel_orientation: orientation must be three axis codes" in line, line[:200]
    assert not out.exists()
