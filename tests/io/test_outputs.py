"""The all-or-nothing output set (segvol_rt.io.outputs), without a model:
inputs refused through symlinks, hard links and ``..``; names over NAME_MAX;
a failure on the n-th write or rename leaves the previous set; stale files of
our naming are removed while live ones are kept; the directory lock makes a
second writer wait or fail with one line; signals are held during a commit."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io import outputs as O
from segvol_rt.io.atomic import atomic_write_bytes

fcntl = pytest.importorskip("fcntl")


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry (hidden ones too) -> sha256 of its bytes, or its kind."""
    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_symlink():
            out[p.name] = "link -> " + os.readlink(p)
        elif p.is_dir():
            out[p.name] = "dir"
        else:
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_set(directory: Path, tag: bytes, names=("a.nii.gz", "b.nii.gz", "set.json")) -> list[Path]:
    files = [directory / n for n in names]
    with O.OutputSet(files) as out:
        for f in files:
            out.stage(f, tag + b" " + f.name.encode())
        out.commit()
    return files


# -- checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink", "dotdot", "symlinked dir"])
def test_an_input_is_refused_however_it_is_reached(tmp_path, spelling):
    label = tmp_path / "labels.nii.gz"
    label.write_bytes(b"label bytes")
    (tmp_path / "sub").mkdir()
    out = {
        "same": label,
        "symlink": tmp_path / "link.nii.gz",
        "hardlink": tmp_path / "hard.nii.gz",
        "dotdot": tmp_path / "sub" / ".." / "labels.nii.gz",
        "symlinked dir": tmp_path / "dirlink" / "labels.nii.gz",
    }[spelling]
    (tmp_path / "link.nii.gz").symlink_to(label.name)
    os.link(label, tmp_path / "hard.nii.gz")
    (tmp_path / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SegVolError, match="refusing to overwrite the input label map") as info:
        O.check_outputs([tmp_path / "fine.nii.gz", out], [("scan", tmp_path / "ct.nii.gz"), ("label map", label)])
    assert "\n" not in str(info.value)
    assert label.read_bytes() == b"label bytes"


def test_two_spellings_of_one_output_and_non_files_are_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(SegVolError, match="same file"):
        O.check_outputs([tmp_path / "m.nii.gz", tmp_path / "sub" / ".." / "m.nii.gz"])
    with pytest.raises(SegVolError, match="is a directory"):
        O.check_outputs([tmp_path / "sub"])
    os.mkfifo(tmp_path / "fifo.nii.gz")
    with pytest.raises(SegVolError, match="not a regular file"):
        O.check_outputs([tmp_path / "fifo.nii.gz"])


def test_a_name_over_name_max_is_one_line_before_any_write(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    long = tmp_path / ("x" * (limit + 1) + ".nii.gz")
    with pytest.raises(SegVolError, match=f"over the file system's limit of {limit}; shorten it") as info:
        O.check_outputs([tmp_path / "ok.nii.gz", long], name_hint="shorten it")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    deep = tmp_path / "new" / ("d" * (limit + 1)) / "m.nii.gz"  # a folder still to be created
    with pytest.raises(SegVolError, match="limit"):
        O.check_outputs([deep])
    O.check_outputs([tmp_path / ("y" * (limit - 7) + ".nii.gz")])  # exactly at the limit: fine
    assert list(tmp_path.iterdir()) == []


# -- all or nothing --------------------------------------------------------------------------------


def _consistent(files: list[Path], tag: bytes) -> bool:
    return all(f.read_bytes() == tag + b" " + f.name.encode() for f in files)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failed_rename_restores_the_previous_set(tmp_path, monkeypatch, fail_at):
    files = write_set(tmp_path, b"old")
    before = snapshot(tmp_path)
    real = os.replace
    calls = []

    def replace(src, dst, *args, **kwargs):
        if ".tmp" in os.path.basename(src):
            calls.append(dst)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(O.os, "replace", replace)
    with pytest.raises(SegVolError, match="cannot write .*No space left on device; the previous files were restored"):
        write_set(tmp_path, b"new")
    assert snapshot(tmp_path) == before and _consistent(files, b"old")


def test_a_failed_rename_of_a_new_set_leaves_nothing(tmp_path, monkeypatch):
    real = os.replace
    calls = []

    def replace(src, dst, *args, **kwargs):
        if ".tmp" in os.path.basename(src):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(O.os, "replace", replace)
    with pytest.raises(SegVolError, match="Input/output error"):
        write_set(tmp_path / "fresh", b"new")
    assert list(tmp_path.iterdir()) == []  # the folder the set created is gone too


def test_a_failed_write_of_the_nth_file_leaves_the_previous_set(tmp_path, monkeypatch):
    files = write_set(tmp_path, b"old")
    before = snapshot(tmp_path)
    real = os.write
    seen: set[int] = set()

    def write(fd, data):
        seen.add(fd)
        if len(seen) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(O.os, "write", write)
    with pytest.raises(SegVolError, match="cannot write .*b.nii.gz: No space left on device"):
        write_set(tmp_path, b"new")
    monkeypatch.undo()
    assert snapshot(tmp_path) == before and _consistent(files, b"old")


def test_a_link_free_file_system_renames_aside(tmp_path, monkeypatch):
    files = write_set(tmp_path, b"old")
    before = snapshot(tmp_path)

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(O.os, "link", no_links)
    real = os.replace
    calls = []

    def replace(src, dst, *args, **kwargs):
        if ".tmp" in os.path.basename(src):
            calls.append(dst)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(O.os, "replace", replace)
    with pytest.raises(SegVolError):
        write_set(tmp_path, b"new")
    assert snapshot(tmp_path) == before
    monkeypatch.setattr(O.os, "replace", real)
    write_set(tmp_path, b"new")
    assert _consistent(files, b"new") and sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)


def test_an_exception_while_staging_removes_the_staged_files(tmp_path):
    write_set(tmp_path, b"old")
    before = snapshot(tmp_path)
    with pytest.raises(KeyboardInterrupt), O.OutputSet([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]) as out:
        out.stage(tmp_path / "a.nii.gz", b"new")
        assert out.staged_path(tmp_path / "a.nii.gz").name.endswith(".tmp.nii.gz")
        raise KeyboardInterrupt
    assert snapshot(tmp_path) == before


def test_atomic_write_is_a_set_of_one(tmp_path):
    target = atomic_write_bytes(tmp_path / "x" / "m.json", b"{}")
    assert target.read_bytes() == b"{}" and os.listdir(tmp_path / "x") == ["m.json"]
    assert (os.stat(target).st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- stale files and the lock ------------------------------------------------------------------------------


def test_stale_files_of_our_naming_go_live_ones_stay(tmp_path):
    stale_tmp = tmp_path / ".segvol-rt-0123456789abcdef-0.tmp.nii.gz"
    stale_old = tmp_path / ".segvol-rt-0123456789abcdef-1.old.json"
    live = tmp_path / ".segvol-rt-fedcba9876543210-0.tmp.nii.gz"
    foreign = tmp_path / ".m.nii.gz.abc.tmp"  # not our naming: never touched
    for p in (stale_tmp, stale_old, live, foreign):
        p.write_bytes(b"x")
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a run still staging holds its files
    try:
        write_set(tmp_path, b"new")
    finally:
        os.close(fd)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {live.name, foreign.name, "a.nii.gz", "b.nii.gz", "set.json"}


def test_a_second_writer_waits_for_the_lock(tmp_path):
    files = write_set(tmp_path, b"old")
    got: list[float] = []
    with O.directory_lock(tmp_path):
        start = time.monotonic()
        worker = threading.Thread(target=lambda: (write_set(tmp_path, b"new"), got.append(time.monotonic() - start)))
        worker.start()
        time.sleep(0.5)
        assert not got and _consistent(files, b"old")  # waiting, nothing renamed
    worker.join(10)
    assert got and got[0] >= 0.5 and _consistent(files, b"new")
    assert not (tmp_path / O.LOCK_NAME).exists()


def test_a_lock_held_too_long_fails_with_one_line(tmp_path):
    files = write_set(tmp_path, b"old")
    before = snapshot(tmp_path)
    with O.directory_lock(tmp_path):
        with pytest.raises(SegVolError, match="another segvol-rt run is writing in") as info, \
                O.OutputSet(files, lock_timeout=0.2) as out:
            out.commit()
        assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


def test_a_lock_file_left_by_a_killed_writer_is_reused(tmp_path):
    (tmp_path / O.LOCK_NAME).write_bytes(b"")
    files = write_set(tmp_path, b"new")
    assert _consistent(files, b"new") and not (tmp_path / O.LOCK_NAME).exists()


# -- signals ---------------------------------------------------------------------------------------------------


class Stop(BaseException):
    pass


def test_signals_are_held_during_a_commit_and_delivered_after(tmp_path):
    def stop(signum, frame):
        raise Stop(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop) as info, O.held_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            survived = True
        assert survived and info.value.args == (signal.SIGTERM,)
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_during_the_renames_completes_the_set_and_says_so(tmp_path, monkeypatch):
    files = write_set(tmp_path, b"old")
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        result = real(src, dst, *args, **kwargs)
        if os.path.basename(dst) == "a.nii.gz":
            os.kill(os.getpid(), signal.SIGINT)  # between the first and the second file
        return result

    monkeypatch.setattr(O.os, "replace", replace)
    # Python's own SIGINT handler, even where pytest inherited an ignored SIGINT (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            write_set(tmp_path, b"new")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert O.written(info.value)
    assert _consistent(files, b"new") and len(list(tmp_path.iterdir())) == 3
