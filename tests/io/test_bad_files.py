"""Bad NIfTI files are refused when the scan is read, before any work, in one
line that names the file and what is wrong: broken geometry (NaN/inf in the
sform, qform or pixdim, a degenerate affine), a zero extent, dimensions the
machine cannot hold, unusable scaling, a path that is not a regular file.
nibabel's log messages and NumPy's RuntimeWarnings never reach stderr; the
header fixes that matter come back as our own notes.

The CLI part runs ``segvol-rt infer`` on each file and checks the promise:
exit code 2, exactly one stderr line, no traceback, nothing written, the
input unchanged."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io import nifti, volume_checks
from segvol_rt.io import nifti_header as H
from segvol_rt.io.nifti import read_label, read_scan

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
NAN, INF = float("nan"), float("inf")


def _ct(shape=(20, 18, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)


def _good(path: Path, data: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(_ct() if data is None else data, AFFINE)
    img.header.set_qform(AFFINE, code=1)
    nib.save(img, str(path))
    return path


def _patched(path: Path, **fields) -> Path:
    """A good scan at ``path`` whose raw header then gets ``fields`` (no nibabel fixes applied)."""
    good = _good(path.with_name("good_" + path.name))
    raw = good.read_bytes()
    gz = path.name.endswith(".gz")
    if gz:
        raw = gzip.decompress(raw)
    header = nib.Nifti1Header(raw[:348], check=False)
    for key, value in fields.items():
        header[key] = value
    data = header.binaryblock + raw[348:]
    path.write_bytes(gzip.compress(data) if gz else data)
    good.unlink()
    return path


def _dim(*shape: int) -> list[int]:
    return [len(shape), *shape] + [1] * (7 - len(shape))


def _pixdim(x: float) -> list[float]:
    return [1.0, x, 0.8, 2.5, 1.0, 1.0, 1.0, 1.0]


# name -> (builder of the file in a directory, words in the one error line)
BAD = {
    "NaN in the sform": (lambda d: _patched(d / "sform.nii.gz", srow_x=[NAN, 0, 0, 0]), "sform"),
    "inf in the qform": (lambda d: _patched(d / "qform.nii.gz", quatern_b=INF), "qform"),
    "NaN in pixdim": (lambda d: _patched(d / "pixdim.nii.gz", pixdim=_pixdim(NAN)), "pixdim"),
    "degenerate affine": (
        lambda d: _patched(d / "flat.nii.gz", srow_x=[0, 0, 0, 0], srow_y=[0, 0, 0, 0], srow_z=[0, 0, 0, 0]),
        "degenerate",
    ),
    "zero extent": (lambda d: _patched(d / "zero.nii.gz", dim=_dim(0, 4, 4)), "empty extent 0x4x4"),
    "absurd dimensions (gz)": (lambda d: _patched(d / "huge.nii.gz", dim=_dim(30000, 30000, 30000)), "needs about"),
    "absurd dimensions (nii)": (lambda d: _patched(d / "huge.nii", dim=_dim(30000, 30000, 30000)), "30000x30000x30000"),
    "scl_slope overflows float32": (lambda d: _patched(d / "slope.nii.gz", scl_slope=1e38, scl_inter=0), "beyond float32"),
    "infinite scl_slope": (lambda d: _patched(d / "islope.nii.gz", scl_slope=INF, scl_inter=0), "scl_slope is inf"),
    "NaN scl_inter": (lambda d: _patched(d / "inter.nii.gz", scl_slope=2.0, scl_inter=NAN), "scl_inter is nan"),
    "values beyond the statistics": (lambda d: _patched(d / "big.nii.gz", scl_slope=1e15, scl_inter=0), "overflows"),
    "bad magic (nibabel logs)": (lambda d: _patched(d / "magic.nii", magic=b"xy1"), "magic"),
    "a directory": (lambda d: _mkdir(d / "folder.nii.gz"), "is a directory"),
    "a FIFO": (lambda d: _mkfifo(d / "pipe.nii.gz"), "is not a regular file (it is a FIFO"),
    "a device": (lambda d: Path("/dev/null"), "is not a regular file (it is a character device)"),
}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _mkfifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    return path


# -- the reader --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD))
def test_read_scan_refuses_in_one_line(case, tmp_path, caplog):
    build, words = BAD[case]
    path = build(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way
        with pytest.raises(SegVolError) as info:
            read_scan(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message, message
    assert not _nibabel_records(caplog)  # nibabel's logger passed nothing on


def test_nothing_is_read_before_the_header_passes(tmp_path, monkeypatch):
    """Extent, memory and geometry are refused from the header alone."""

    def boom(*_args):
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(nifti, "_gz_load", boom)
    monkeypatch.setattr(nifti, "_nibabel_load", boom)
    for case in ("NaN in the sform", "zero extent", "absurd dimensions (gz)", "degenerate affine"):
        build, words = BAD[case]
        with pytest.raises(SegVolError, match=words):
            read_scan(build(_fresh(tmp_path, case)))


def _fresh(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / case.replace(" ", "_").replace("(", "").replace(")", "")
    folder.mkdir()
    return folder


def test_memory_is_compared_with_what_is_available(tmp_path, monkeypatch):
    path = _good(tmp_path / "ct.nii.gz")
    monkeypatch.setattr(H, "available_memory", lambda: 1000)
    with pytest.raises(SegVolError, match=r"20x18x7 voxels of int16 .* needs about .* of memory to read; 1000 bytes is available"):
        read_scan(path)
    monkeypatch.setattr(H, "available_memory", lambda: None)  # unknown: no refusal
    assert read_scan(path).shape == (20, 18, 7)


def test_available_memory_is_a_positive_figure():
    found = volume_checks.available_memory()
    assert found is None or found > 0


def _nibabel_records(caplog) -> list:
    return [r for r in caplog.records if r.name.startswith("nibabel")]


def test_nibabel_fixes_become_notes_and_print_nothing(tmp_path, caplog):
    zero = _patched(tmp_path / "zero_pixdim.nii.gz", pixdim=_pixdim(0.0))
    scan = read_scan(zero)
    assert scan.notes == (f"{zero}: the header's voxel size (pixdim) has zeros; read as 1 mm, as nibabel does",)
    code = _patched(tmp_path / "code.nii", sform_code=9)
    assert "sform_code is not a NIfTI code" in read_scan(code).notes[0]
    assert read_scan(_good(tmp_path / "fine.nii.gz")).notes == ()
    assert not _nibabel_records(caplog)


def test_nibabel_logging_outside_our_reads_is_untouched(tmp_path, caplog):
    """The capture is per read and per thread: nibabel's own loads still log."""
    zero = _patched(tmp_path / "zero_pixdim.nii", pixdim=_pixdim(0.0))
    read_scan(zero)
    assert not _nibabel_records(caplog)
    nib.load(str(zero))
    assert any("pixdim[1,2,3] should be non-zero" in r.getMessage() for r in _nibabel_records(caplog))


def test_nan_slope_means_unscaled_as_in_nibabel(tmp_path):
    path = _patched(tmp_path / "nan_slope.nii.gz", scl_slope=NAN, scl_inter=NAN)
    np.testing.assert_array_equal(read_scan(path).data, _ct().astype(np.float32))


def test_large_but_safe_values_are_read(tmp_path):
    path = _patched(tmp_path / "scaled.nii.gz", scl_slope=1e6, scl_inter=0)
    assert float(np.abs(read_scan(path).data).max()) == pytest.approx(1.499e9, rel=1e-2)


def test_label_map_paths_are_said_as_they_are(tmp_path):
    folder = _mkdir(tmp_path / "labels.nii.gz")
    with pytest.raises(SegVolError, match="label map .* is a directory"):
        read_label(f"{folder}:1")


def test_affine_problem():
    assert H.affine_problem(AFFINE) is None
    assert "shape (3, 3)" in H.affine_problem(np.eye(3))
    assert "NaN" in H.affine_problem(np.full((4, 4), np.nan))
    flat = np.eye(4)
    flat[2, 2] = 0
    assert "degenerate" in H.affine_problem(flat)


# -- the CLI: one line, exit 2, nothing written --------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
    from tests.support.tiny_artifacts import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


# one file per class (the reader tests above cover every case)
CLI_CASES = [
    "NaN in the sform", "NaN in pixdim", "degenerate affine", "zero extent", "absurd dimensions (gz)",
    "scl_slope overflows float32", "bad magic (nibabel logs)", "a FIFO",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_prints_one_line_and_writes_nothing(case, tmp_path, tiny):
    from tests.app.test_cli_infer import run_cli

    build, words = BAD[case]
    work = _fresh(tmp_path, "work")
    scan = build(work)
    before = {p.name: (p.read_bytes() if p.is_file() else None) for p in work.iterdir()}
    proc = run_cli(scan, "--text", "liver", "--artifacts", tiny, "--out", work / "out.nii.gz")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert words in lines[0] and "Traceback" not in proc.stderr + proc.stdout
    after = {p.name: (p.read_bytes() if p.is_file() else None) for p in work.iterdir()}
    assert after == before  # nothing written, the input unchanged


# -- the same classes for arrays given to the pipeline directly ----------------------------------


def test_preprocess_degenerate_affine_is_our_own_line():
    from segvol_rt.pipeline.preprocess import preprocess

    flat = np.eye(4)
    flat[:3, :3] = 0
    with pytest.raises(SegVolError, match="cannot reorient to 'RAS': the voxel-to-world affine is degenerate") as info:
        preprocess(_ct().astype(np.float32), (16, 64, 64), reorient="RAS", affine=flat)
    assert "start_ornt" not in str(info.value)


@pytest.mark.parametrize("scale", [1e30, 1e34])
def test_preprocess_overflowing_statistics_without_warnings(scale):
    from segvol_rt.pipeline.preprocess import preprocess

    data = _ct().astype(np.float32) * np.float32(scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SegVolError, match="overflow the float32 intensity statistics"):
            preprocess(data, (16, 64, 64))
