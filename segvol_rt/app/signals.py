"""How a ``segvol-rt`` run answers SIGINT (Ctrl-C) and SIGTERM, from its first line to its exit.

One handler (:func:`handler`) for the whole run, installed by the console
script before the slow imports (:mod:`segvol_rt.app.entry`) and by
:func:`segvol_rt.app.cli.main` for its call:

* before the run's outcome is decided it raises :class:`Interrupted`, so the
  staged outputs are removed on the way out; the CLI then prints
  ``interrupted; nothing was written`` (exit 130) or ``terminated; ...`` (exit
  143) - or ``...; the outputs had been written`` when an output set was
  committed during the run (:func:`segvol_rt.io.outputs.committed_sets`);
* once the outcome is decided and printed (:func:`decided`), a signal no
  longer raises: a run that wrote its outputs says so and exits 130 or 143, any
  other exits with its own code, without a second line - and without a
  traceback, even during the interpreter's shutdown.

A signal its parent ignores (a background job's SIGINT) stays ignored.

Dependencies: the standard library only (it runs before anything else is imported).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised by :func:`handler` (not a KeyboardInterrupt,
    which click and typer would turn into an exit of their own)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# what a command leaves when interrupted (build: its engines), the signal received, if any,
# the decided exit code, the committed output sets at the start, and whether this process ends with the run
state: dict[str, Any] = {"interrupted": "nothing was written", "signal": None, "code": None, "commits": 0,
                         "process": False}


def handler(signum: int, _frame: FrameType | None) -> None:
    # Recorded too: a library may turn the exception into its own (pybind11
    # reports one raised during an import as "ImportError: initialization failed").
    state["signal"] = signum
    if state["code"] is not None:
        _after_the_outcome(signum)
        return
    raise Interrupted(signum)


def install() -> dict[signal.Signals, Any]:
    """:func:`handler` for SIGINT and SIGTERM (not for an ignored one); returns the previous handlers."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in EXIT_CODES:
            current = signal.getsignal(signum)
            if current is not signal.SIG_IGN and current is not None:
                previous[signum] = signal.signal(signum, handler)
    return previous


def restore(previous: dict[signal.Signals, Any]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)


def start_run() -> None:
    """A run begins: nothing received, nothing decided, nothing written yet."""
    from segvol_rt.io.outputs import committed_sets

    state.update(signal=None, code=None, interrupted="nothing was written", commits=committed_sets())


def outputs_written(exc: BaseException | None = None) -> bool:
    """Whether the run has committed an output set (``exc``: raised during a commit that completed)."""
    from segvol_rt.io.outputs import committed_sets, written

    return (exc is not None and written(exc)) or committed_sets() > state["commits"]


def report(signum: int, written: bool) -> int:
    """Print the one line an interrupted run ends with; its exit code."""
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    stderr_line(f"{what}; {'the outputs had been written' if written else state['interrupted']}")
    return EXIT_CODES.get(signal.Signals(signum), 130)


def decided(code: int) -> int:
    """The run's outcome is printed: from now on a signal ends the process (see the module docstring)."""
    state["code"] = code
    return code


def _after_the_outcome(signum: int) -> None:
    code = state["code"]
    if code == 0 and outputs_written():
        code = report(signum, True)
    if state["process"]:  # the interpreter may be shutting down: no exception may escape now
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    raise SystemExit(code)


def stderr_line(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed too: the exit code still tells
        print(line, file=sys.stderr, flush=True)
