"""All-or-nothing output sets: stage every file, then commit them together.

A run that writes several files (masks, ``--split`` files, probability maps,
a JSON sidecar; the demo's phantom, masks, preview and results) must never
leave a new mask beside an old sidecar. POSIX has no atomic rename of several
sibling files, so a set is written in three steps:

1. **check** (:func:`check_outputs`, before any work): no output is an input
   (the same file by ``(st_dev, st_ino)``, or by resolved path through
   symlinks and ``..``), no two outputs are one file, none is a directory or
   a FIFO/device, and every new name fits the file system's ``NAME_MAX``;
2. **stage** (:class:`OutputSet`, :meth:`OutputSet.stage`): each file is
   written and fsync'ed to a temporary file of our own naming in the target
   directory, ``.segvol-rt-<16 hex>-<n>.tmp[<ext>]``, which its writer holds
   an exclusive ``flock`` on while it lives;
3. **commit** (:meth:`OutputSet.commit`): under the directory lock, with
   SIGINT and SIGTERM held, each existing target is set aside as
   ``.segvol-rt-<16 hex>-<n>.old[<ext>]`` (a hard link, or a rename where
   the file system has no hard links) and the staged file renamed over it, in
   the order the targets were given (callers put a sidecar last). Any error
   rolls the renamed files back to their previous contents and removes the
   new ones; only then are the backups deleted. A signal that arrives during
   the commit is delivered when it is over (the exception then carries the
   note :data:`WRITTEN_NOTE`).

Leaving the ``with`` block without a commit (an error, or an exception raised
by a signal handler) removes the staged files, with the signals held so a
second Ctrl-C cannot interrupt the cleanup; a directory the set created is
removed again when it is still empty.

**The lock** is a hidden file ``.segvol-rt.lock`` in the output directory
(not under a per-user cache): every writer of that directory, whatever its
user or cache setting, sees the same file on the same file system. It is
held only while temporary files are created and while a set is committed
(milliseconds), so a concurrent writer waits (up to ``lock_timeout``
seconds, then fails with one line) and never interleaves its renames with
ours; a writer removes the lock file when it releases it (a waiter that then
finds another file at the path retries). Holding the lock, a writer deletes
stale files of its own naming: temporary files nobody holds a ``flock`` on
(their writer is gone) and backups (they exist only during a commit, which
holds the lock).

**What SIGKILL (or a power cut) can still leave**: killed while staging,
the ``.segvol-rt-*.tmp*`` files (the next run writing into that directory
removes them) and possibly an empty ``.segvol-rt.lock`` (harmless, reused);
killed inside the commit itself (a few renames, milliseconds), a set of
which some files are new and some old, and ``.segvol-rt-*.old*`` backups of
the replaced ones. The sidecar records the sha256 of every file it
describes, so a reader can tell a mixed set; the next run removes the
leftovers.

A symlink given as an output is replaced by a regular file (the link's
target is left alone). Without ``fcntl`` (Windows) there is no lock and
without ``pthread_sigmask`` no signal holding; the staging and rollback are
the same.

Dependencies: the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import signal
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from segvol_rt.errors import SegVolError

LOCK_NAME = ".segvol-rt.lock"
WRITTEN_NOTE = "segvol-rt: the output set had been written when this exception was raised"
DEFAULT_LOCK_TIMEOUT = 60.0
_POLL_S = 0.05
_OWN_NAME = re.compile(r"^\.segvol-rt-[0-9a-f]{16}-\d+\.(tmp|old)(\.[A-Za-z0-9]{1,8}){0,2}$")
_HELD = (signal.SIGINT, signal.SIGTERM)
_FALLBACK_NAME_MAX = 255

Inputs = Sequence[tuple[str, str | os.PathLike[str]]]  # (what, path), e.g. ("scan", "ct.nii.gz")


_COMMITTED = [0]  # output sets committed by this process


def written(exc: BaseException) -> bool:
    """Whether ``exc`` was raised after an output set had been committed."""
    return WRITTEN_NOTE in getattr(exc, "__notes__", ())


def committed_sets() -> int:
    """How many output sets this process has committed so far (a signal handler
    compares it with its value at the start of a run: were the outputs written?)."""
    return _COMMITTED[0]


# -- checks before any work ----------------------------------------------------------------


def check_outputs(targets: Sequence[str | os.PathLike[str]], inputs: Inputs = (), hint: str = "choose another --out",
                  name_hint: str | None = None) -> None:
    """Refuse an output set that would overwrite an input or cannot be written.

    ``inputs``: ``(what, path)`` pairs named in the message (``("scan", p)``).
    Raises :class:`SegVolError`, one line ending in ``hint`` (``name_hint``
    for a name over ``NAME_MAX``, default ``hint``)."""
    seen: dict[str, Path] = {}
    index = _InputIndex(inputs)
    for target in map(Path, targets):
        real = os.path.realpath(target)
        if real in seen:
            raise SegVolError(f"outputs {seen[real]} and {target} would be the same file; {hint}")
        seen[real] = target
        found = index.find(target, real)
        if found is not None:
            what, source = found
            shown = "" if str(target) == str(source) else f" (output {target})"
            raise SegVolError(f"refusing to overwrite the input {what} {source}{shown}; {hint}")
        _check_kind(target, hint)
        check_name_length(target, name_hint or hint)


class _InputIndex:
    """The inputs by resolved path and by inode, so that a folder of thousands of
    DICOM files costs one ``realpath`` and one ``stat`` per file, not per output."""

    def __init__(self, inputs: Inputs):
        self.by_path: dict[str, tuple[str, str | os.PathLike[str]]] = {}
        self.by_inode: dict[tuple[int, int], tuple[str, str | os.PathLike[str]]] = {}
        for what, source in inputs:
            self.by_path.setdefault(os.path.realpath(source), (what, source))
            with contextlib.suppress(OSError):  # not there (yet): no inode to share
                st = os.stat(source)
                self.by_inode.setdefault((st.st_dev, st.st_ino), (what, source))

    def find(self, target: Path, real: str) -> tuple[str, str | os.PathLike[str]] | None:
        """The input ``target`` is (as :func:`same_file` decides), or None."""
        if real in self.by_path:
            return self.by_path[real]
        try:
            st = os.stat(target)
        except OSError:
            return None
        return self.by_inode.get((st.st_dev, st.st_ino))


def same_file(a: Path, b: Path) -> bool:
    """One file: the same resolved path (symlinks, ``..``), or the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:  # either one does not exist (yet): no inode to share
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_kind(target: Path, hint: str) -> None:
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return  # absent (or a dangling link, replaced like any link)
    if stat.S_ISDIR(mode):
        raise SegVolError(f"output {target} is a directory; {hint}")
    if not stat.S_ISREG(mode):
        raise SegVolError(f"output {target} exists and is not a regular file (a FIFO, socket or device); {hint}")


def check_name_length(target: str | os.PathLike[str], hint: str = "choose a shorter name") -> None:
    """Every not-yet-existing component of ``target`` fits ``NAME_MAX`` of the
    file system it will be created on (``os.pathconf(dir, "PC_NAME_MAX")``)."""
    path = Path(os.path.abspath(target))
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    limit = _name_max(existing)
    for part in path.relative_to(existing).parts:
        size = len(os.fsencode(part))
        if size > limit:
            shown = part if len(part) <= 60 else part[:40] + "..." + part[-12:]
            raise SegVolError(f"output name {shown!r} is {size} bytes, over the file system's limit of {limit}; {hint}")


def _name_max(directory: Path) -> int:
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such setting on this platform
        return _FALLBACK_NAME_MAX
    return limit if limit > 0 else _FALLBACK_NAME_MAX


# -- signals ------------------------------------------------------------------------------------


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block; deliver them after it.

    ``pthread_sigmask`` blocks them in this thread. Other threads (ONNX
    Runtime's pools) do not block them, and the kernel may hand a signal to
    one of those - which would still run Python's handler in the main thread,
    or terminate the process under SIGTERM's default action. So on the main
    thread the handlers are also swapped for ones that only record the
    signal, which is raised again, under the restored handlers, at the end."""
    pending: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _HELD:
            handler = signal.getsignal(signum)
            if handler is not None:  # None: installed outside Python, cannot be restored
                previous[signum] = signal.signal(signum, _recorder(pending))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a blocked signal pending now is handled here
        for recorded in dict.fromkeys(pending):
            signal.raise_signal(recorded)


def _recorder(pending: list[int]) -> Any:
    def record(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    return record


# -- the lock -------------------------------------------------------------------------------------


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str], timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive ``flock`` on ``directory/.segvol-rt.lock``, removed on release.

    Waits up to ``timeout`` seconds (interruptible), then raises SegVolError."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the staging still protects readers
        yield
        return
    path = Path(directory) / LOCK_NAME
    fd = _acquire(fcntl, path, timeout)
    try:
        yield
    finally:
        with held_signals():
            with contextlib.suppress(OSError):  # unlinked while held, so a waiter re-checks its inode
                os.unlink(path)
            os.close(fd)


def _acquire(fcntl: Any, path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise SegVolError(f"cannot write in {path.parent} (lock file {path.name}): {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _is_at(fd, path):
                return fd
        except BlockingIOError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() > deadline:
            raise SegVolError(f"another segvol-rt run is writing in {path.parent} (it holds {path}); "
                              f"waited {timeout:.0f}s, try again")
        time.sleep(_POLL_S)


def _is_at(fd: int, path: Path) -> bool:
    """The locked file is still the one at ``path`` (not unlinked by its last holder)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_stale(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete leftovers of our own naming in ``directory``; call with its lock held.

    A temporary file is stale when nobody holds a ``flock`` on it (its
    writer died); a backup always is (backups live only inside a commit,
    which holds the lock). Returns what was removed."""
    try:
        import fcntl
    except ImportError:
        return []
    removed: list[Path] = []
    try:
        with os.scandir(directory) as entries:
            found = [(e.name, m.group(1)) for e in entries if (m := _OWN_NAME.match(e.name))]
    except OSError:
        return removed
    for name, kind in found:
        path = Path(directory) / name
        with contextlib.suppress(OSError):  # another user's file, or gone already
            if kind == "tmp":
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: alive, kept
                    os.unlink(path)
                finally:
                    os.close(fd)
            else:
                os.unlink(path)
            removed.append(path)
    return removed


# -- the set ------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    target: Path  # as given
    temp: Path
    backup: Path
    fd: int = -1
    sha256: str | None = None


@dataclass
class _Step:
    """One target of a commit, for the rollback."""

    entry: _Entry
    had_old: bool
    moved: bool  # the old file was renamed aside (no hard links here), not linked
    placed: bool = False


class OutputSet:
    """Files written together or not at all (see the module docstring).

    ::

        with OutputSet([mask, sidecar]) as out:
            out.stage(mask, mask_bytes)
            out.stage(sidecar, json_bytes)
            out.commit()          # renames in the order given

    All targets lie in one directory (created when missing). Leaving the block
    without :meth:`commit` removes the staged files."""

    def __init__(self, targets: Sequence[str | os.PathLike[str]], lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        paths = [Path(t) for t in targets]
        dirs = {Path(os.path.abspath(p)).parent for p in paths}
        if len(dirs) != 1 or len({os.path.abspath(p) for p in paths}) != len(paths):
            raise ValueError(f"an output set is distinct files in one directory, not {paths}")
        self.directory = dirs.pop()
        self.lock_timeout = lock_timeout
        token = secrets.token_hex(8)
        self._entries = {os.path.abspath(p): self._entry(p, token, n) for n, p in enumerate(paths)}
        self._created: list[Path] = []
        self.committed = False

    @staticmethod
    def _entry(target: Path, token: str, n: int) -> _Entry:
        ext = "".join(target.suffixes[-2:]) if target.name.lower().endswith(".nii.gz") else target.suffix
        ext = ext if re.fullmatch(r"(\.[A-Za-z0-9]{1,8}){0,2}", ext) else ""  # nibabel reads by extension
        base = target.with_name(f".segvol-rt-{token}-{n}")
        return _Entry(target, base.with_name(base.name + ".tmp" + ext), base.with_name(base.name + ".old" + ext))

    # -- staging ------------------------------------------------------------
    def __enter__(self) -> OutputSet:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.discard()

    def open(self) -> None:
        """Create the directory and one locked temporary file per target."""
        try:
            self._make_directory()
            with directory_lock(self.directory, self.lock_timeout):
                remove_stale(self.directory)
                for e in self._entries.values():
                    self._create(e)
        except BaseException:
            self.discard()
            raise

    def _make_directory(self) -> None:
        missing = []
        d = self.directory
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise SegVolError(f"cannot create the output folder {d}: {exc.strerror or exc}") from exc
            self._created.append(d)

    def _create(self, e: _Entry) -> None:
        try:
            # 0o666 and the umask, as a plain open() would (mkstemp makes files private)
            e.fd = os.open(e.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise SegVolError(f"cannot write in {self.directory}: {exc.strerror or exc}") from exc
        with contextlib.suppress(ImportError):  # no fcntl (Windows): no cleaner either
            import fcntl

            fcntl.flock(e.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours since creation: a cleaner keeps it

    def staged_path(self, target: str | os.PathLike[str]) -> Path:
        """Where ``target``'s staged bytes are (same extension), e.g. to read them back."""
        return self._lookup(target).temp

    def stage(self, target: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> str:
        """Write ``data`` as ``target``'s staged file (fsync'ed); returns its sha256 (hex)."""
        e = self._lookup(target)
        view = memoryview(data).cast("B")
        try:
            os.ftruncate(e.fd, 0)
            os.lseek(e.fd, 0, os.SEEK_SET)
            while view:
                view = view[os.write(e.fd, view) :]
            os.fsync(e.fd)
        except OSError as exc:
            raise SegVolError(f"cannot write {e.target}: {exc.strerror or exc}") from exc
        e.sha256 = hashlib.sha256(data).hexdigest()
        return e.sha256

    def _lookup(self, target: str | os.PathLike[str]) -> _Entry:
        e = self._entries.get(os.path.abspath(target))
        if e is None or e.fd < 0:
            raise ValueError(f"{target} is not a target of this open output set")
        return e

    def digests(self) -> dict[Path, str]:
        """sha256 of every staged file so far, by target."""
        return {e.target: e.sha256 for e in self._entries.values() if e.sha256 is not None}

    # -- commit and cleanup ------------------------------------------------------
    def commit(self) -> list[Path]:
        """Rename every staged file over its target, all or none; returns the targets."""
        unstaged = [str(e.target) for e in self._entries.values() if e.sha256 is None]
        if unstaged:
            raise ValueError(f"nothing staged for {unstaged}")
        try:
            with directory_lock(self.directory, self.lock_timeout), held_signals():
                self._rename_all()
                self.committed = True
                _COMMITTED[0] += 1
        except BaseException as exc:
            if self.committed:  # a held signal, delivered after the renames
                exc.add_note(WRITTEN_NOTE)
            raise
        finally:
            if self.committed:
                self._close()
        return [e.target for e in self._entries.values()]

    def _rename_all(self) -> None:
        steps: list[_Step] = []
        current = None
        try:
            for current in self._entries.values():
                had_old = os.path.lexists(current.target)
                steps.append(_Step(current, had_old, had_old and _set_aside(current.target, current.backup)))
                os.replace(current.temp, current.target)
                steps[-1].placed = True
        except OSError as exc:
            self._roll_back(steps, exc)
            where = current.target if current is not None else self.directory
            raise SegVolError(f"cannot write {where}: {exc.strerror or exc}; the previous files were restored") from exc
        for step in steps:
            if step.had_old:
                with contextlib.suppress(OSError):
                    os.unlink(step.entry.backup)
        _fsync_directory(self.directory)

    @staticmethod
    def _roll_back(steps: list[_Step], cause: OSError) -> None:
        kept = []
        for step in reversed(steps):
            e = step.entry
            try:
                if step.placed and step.had_old:
                    os.replace(e.backup, e.target)
                elif step.placed:
                    os.unlink(e.target)
                elif step.had_old and step.moved:
                    os.rename(e.backup, e.target)
                elif step.had_old:
                    os.unlink(e.backup)
            except OSError:
                kept.append(f"{e.target} (previous version kept as {e.backup})")
        if kept:
            raise SegVolError(f"writing the outputs failed ({cause.strerror or cause}) and so did restoring "
                              f"{'; '.join(kept)}") from cause

    def discard(self) -> None:
        """Remove the staged files (and a directory this set created, if empty)."""
        with held_signals():
            self._close()
            for e in self._entries.values():
                with contextlib.suppress(OSError):
                    e.temp.unlink(missing_ok=True)
            for d in reversed(self._created):
                with contextlib.suppress(OSError):
                    d.rmdir()
            self._created.clear()

    def _close(self) -> None:
        for e in self._entries.values():
            if e.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(e.fd)
                e.fd = -1


def _set_aside(target: Path, backup: Path) -> bool:
    """Keep the current ``target`` as ``backup``: a hard link (the target stays
    in place), or a rename where links are not supported. True when renamed."""
    try:
        os.link(target, backup, follow_symlinks=False)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
    os.rename(target, backup)
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable; not every platform can open a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
