"""What the process may use of this machine: the CPU cores (the CPU backends'
default threads, the artifacts' hashing threads, the benchmarks' report)."""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where the OS has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
