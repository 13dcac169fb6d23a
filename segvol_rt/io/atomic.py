"""Atomic file output: one file written as an output set of one.

The bytes go to a staged temporary file beside the target (fsync'ed), which
is renamed over it under the directory's lock with SIGINT/SIGTERM held
(:class:`segvol_rt.io.outputs.OutputSet`). A reader never sees a
half-written file; a failed or interrupted write leaves the old file (if any)
untouched and no temporary file behind (after SIGKILL, the next write into
that directory removes it). Several files that belong together are written
with an :class:`~segvol_rt.io.outputs.OutputSet` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from segvol_rt.io.outputs import OutputSet


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (the file's mode: 0o666 less the umask).

    Raises :class:`segvol_rt.errors.SegVolError` naming the file when the
    operating system refuses (permissions, full disk)."""
    target = Path(path)
    with OutputSet([target]) as out:
        out.stage(target, data)
        out.commit()
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
