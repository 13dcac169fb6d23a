"""File digests, and the records that let a load hash each graph version once.

Every load checks the sha256 of the files its backend reads against the
manifest. At full size that is 609 MB of fp32 graphs: about 0.28 s of every
one-shot ``segvol-rt infer`` on 2 cores, more than the scan's reading. So a
file that hashed to its digest once leaves a record, an empty file in
``<user cache>/verified/`` (:func:`records_dir`) whose name is the sha256 of
the file's identity and that digest (:func:`record_name`): device, inode,
size, and modification and status-change times in nanoseconds. A later check
that finds the record of the file as it is now takes it as checked.

Why that is safe: any write to a file, and any change of its times, sets its
status-change time to the present, which no program can set back; a file
replaced or copied is another inode with a new status-change time. So a file
whose bytes changed never matches an old record. Two cases are left to the
full hash: a file whose times are less than :data:`RACY_SECONDS` old (still
being written, or written twice within the file system's clock tick) gets no
record yet, and a file whose identity changed while it was hashed gets none.

The records are a cache like OpenVINO's compiled models beside them: whoever
can write them can also plant a compiled model, so they hold no more trust.
A cache that cannot be written only makes loads slower (nothing is refused);
the folder may be deleted at any time. The C++ SDK reads and writes the same
records (``cpp/src/artifacts.cpp``; :data:`RECORD_FORMAT`, the folder name
and :data:`RACY_SECONDS` are generated into it).

Checks of small texts leave records of their own, keyed by content alone
(:func:`content_record`): the manifest that passed its JSON Schema
(:func:`segvol_rt.io.artifacts.read_manifest`). Python's alone; the C++ SDK
neither reads nor writes them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

from segvol_rt.io.user_cache import cache_root

# The folder of the records under the user cache, and the first word of the text a
# record's name hashes (a change of what a record means changes it).
RECORDS_DIR = "verified"
RECORD_FORMAT = "segvol-rt-verified/1"
# A file changed this recently gets no record yet (see the module docstring).
RACY_SECONDS = 2


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path`` (read in blocks, the GIL let go while hashing)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def records_dir() -> Path:
    """``<$SEGVOL_RT_CACHE or ~/.cache/segvol-rt>/verified``."""
    return cache_root() / RECORDS_DIR


def record_name(st: os.stat_result, sha256: str) -> str:
    """The record's file name for the file whose ``os.stat`` is ``st`` and whose digest is ``sha256``."""
    text = f"{RECORD_FORMAT} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {sha256}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def is_recorded(path: Path, sha256: str, folder: Path | None = None) -> bool:
    """Whether the file at ``path``, as it is now, hashed to ``sha256`` before (a record exists)."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and has_record((folder or records_dir()) / record_name(st, sha256))


def hash_and_record(path: Path, folder: Path | None = None) -> str:
    """Hex sha256 of the file at ``path``, recorded (:func:`is_recorded`) when its
    identity held still while it was hashed and its times are not racy."""
    before = path.stat()
    digest = sha256_file(path)
    after = path.stat()
    newest = max(after.st_mtime_ns, after.st_ctime_ns) / 1e9
    if _identity(before) == _identity(after) and time.time() - newest >= RACY_SECONDS:
        write_record((folder or records_dir()) / record_name(after, digest))
    return digest


def content_record(folder: str, kind: str, *digests: str) -> Path:
    """The record under ``<user cache>/folder`` that the check ``kind`` passed on the
    contents whose sha256 are ``digests`` (the checked text's, and whatever else the
    verdict depends on: the schema's)."""
    text = " ".join((kind, *digests))
    return cache_root() / folder / hashlib.sha256(text.encode("utf-8")).hexdigest()


def has_record(record: Path) -> bool:
    """Whether ``record`` exists as a regular file (a link or anything else is no record)."""
    try:
        return stat.S_ISREG(record.lstat().st_mode)
    except (OSError, ValueError):
        return False


def write_record(record: Path) -> None:
    """Create the empty record file ``record``; never follows a link, and a cache that
    cannot be written is passed over (a record only saves time)."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        return
    os.close(fd)
