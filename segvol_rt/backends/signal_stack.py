"""The calling thread's alternate signal stack, kept as it was across calls
into OpenVINO.

OpenVINO's CPU plugin gives the threads that call it an alternate signal
stack of its own (``sigaltstack``, about 11 KiB) and frees it with the plugin
object, which may be destroyed on another thread. A thread left pointing at
freed memory crashes (SIGSEGV) on the next signal it handles: Python installs
its handlers with ``SA_ONSTACK``, so a Ctrl-C, or a SIGTERM from a service
manager, after an OpenVINO run killed the process instead of stopping it
cleanly. :func:`kept_signal_stack` restores the thread's own setting (none,
or Python faulthandler's stack) when the call returns; OpenVINO's stack is
still there while its code runs. Linux only (elsewhere it does nothing).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _StackT(ctypes.Structure):
    """``stack_t`` of <signal.h> (Linux, every ABI we build for)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def current() -> tuple[int, int, int] | None:
    """This thread's alternate signal stack ``(address, flags, size)``; None off Linux."""
    if _LIBC is None:
        return None
    stack = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(stack)) != 0:
        return None
    return (stack.ss_sp or 0, stack.ss_flags, stack.ss_size)


def _restore(saved: tuple[int, int, int]) -> None:
    sp, flags, size = saved
    # SS_ONSTACK (1) is a report, not a request: a thread never returns here while on its alternate stack
    stack = _StackT(sp or None, flags & ~1, size)
    if _LIBC is not None:
        _LIBC.sigaltstack(ctypes.byref(stack), None)


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give this thread back the alternate signal stack it had before."""
    before = current()
    try:
        yield
    finally:
        if before is not None and current() != before:
            _restore(before)
