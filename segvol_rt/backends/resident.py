"""Give memory the process no longer uses back to the system, after a backend
opens its graphs: the resident pages of read-only file mappings
(:func:`drop_mapped_pages`, Linux) and the free pages of the C heap
(:func:`trim_heap`, glibc).

OpenVINO reads a graph's weights through ``mmap`` (``ENABLE_MMAP``, its
default; a cached compiled model too), then repacks most of them into memory
of its own while compiling. The original pages stay resident - the compiled
model keeps the model whose constants point into the mapping - so the
process counts the weights twice. Dropping those pages
(``madvise(MADV_DONTNEED)``) gives them back to the page cache; the kernel
reads any page the compiled model still uses back from the file on its next
access, so nothing the model computes changes, only what stays resident.

Only mappings that cannot hold data of their own are touched: read-only
(no ``w`` in their permissions) and with no anonymous (copy-on-write) pages
in ``/proc/self/smaps``. Elsewhere than Linux it does nothing.

Loading a graph also leaves the C heap with free memory that glibc keeps
(ONNX Runtime parses the whole ONNX protobuf and stages the initializers;
allocations under glibc's mmap threshold, up to 32 MiB, come from the heap
and go back to it, not to the system): :func:`trim_heap` hands those pages
back (``malloc_trim``; measured: 114 MiB after opening the full-size image
encoder and prompt decoder). It changes no data: only free pages are given back.

The C++ SDK does the same with the same rules (cpp/src/resident.cpp;
tests/cpp/test_cpp_memory.py compares the mappings both choose).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MADV_DONTNEED = 4  # Linux <sys/mman.h>


@dataclass(frozen=True)
class Mapping:
    """One range of /proc/self/smaps: [start, end) of ``path``, its permissions and anonymous KiB."""

    start: int
    end: int
    perms: str
    path: str
    anonymous_kib: int


def file_mappings(smaps: str) -> list[Mapping]:
    """The file-backed ranges of a /proc/<pid>/smaps text."""
    out: list[Mapping] = []
    current: dict[str, object] | None = None
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            if current is not None and current["path"]:
                out.append(Mapping(**current))  # type: ignore[arg-type]
            start, end = (int(x, 16) for x in head[0].split("-"))
            path = head[5].strip() if len(head) == 6 else ""
            current = {"start": start, "end": end, "perms": head[1], "path": path, "anonymous_kib": 0}
        elif current is not None and line.startswith("Anonymous:"):
            current["anonymous_kib"] = int(line.split()[1])
    if current is not None and current["path"]:
        out.append(Mapping(**current))  # type: ignore[arg-type]
    return out


def droppable(mappings: Iterable[Mapping], files: Iterable[str | Path]) -> list[Mapping]:
    """The mappings of ``files`` (resolved paths) that hold nothing but the file's own pages."""
    wanted = {str(Path(f).resolve()) for f in files}
    return [m for m in mappings if m.path in wanted and "w" not in m.perms and m.anonymous_kib == 0]


def drop_mapped_pages(files: Iterable[str | Path]) -> int:
    """Drop the resident pages of this process's read-only mappings of ``files``;
    returns the bytes of the ranges advised (0 elsewhere than Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        smaps = Path("/proc/self/smaps").read_text()
    except OSError:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for m in droppable(file_mappings(smaps), files):
        if libc.madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            done += m.end - m.start
    return done


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``);
    False where the C library has none (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
