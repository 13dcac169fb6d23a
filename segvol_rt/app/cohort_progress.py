"""What a cohort run shows while it runs (:class:`CohortProgress`).

On a terminal (stderr is a tty): a live two-line display, the cases done out
of all with the time left (from the mean time of the cases so far) and the
current case's stage. Otherwise one plain line per case on stdout
(``[3/20] ct03: ok, 2 target(s), 4.1s``). ``quiet`` silences both; a failed
case's line still goes to stderr, as errors do in single runs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from segvol_rt.app.console import Reporter, say


class CohortProgress(Reporter):
    """A :class:`~segvol_rt.app.console.Reporter` for :func:`segvol_rt.app.infer.run_infer`
    calls inside a cohort, plus the per-case lines (:meth:`case_done`)."""

    def __init__(self, total: int, quiet: bool = False):
        self.total = total
        self.quiet = quiet
        self.done = 0
        self.case = ""
        self._live: Any = None
        self._start = time.monotonic()
        if not quiet and sys.stderr.isatty():
            self._start_live()

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, TextColumn

        self._live = Progress(TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
                              redirect_stdout=False, redirect_stderr=False)
        self._cases = self._live.add_task(self._count_line(), total=None)
        self._stage = self._live.add_task("", total=None)
        self._live.start()

    def _count_line(self) -> str:
        """``cases 3/20, about 0:41 left``: the time left from the mean of the cases run so far."""
        line = f"cases {self.done}/{self.total}"
        if self.done and self.done < self.total:
            left = int((time.monotonic() - self._start) / self.done * (self.total - self.done))
            line += f", about {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} left"
        return line

    # -- run_infer's reporter -------------------------------------------------------
    def warn(self, line: str) -> None:
        self._print_err(f"warning: {self.case}: {line}")

    def log(self, line: str) -> None:
        if not self.quiet:
            self._print_err(line)

    def note(self, line: str) -> None:
        """run_infer's own notes (stored SEGs) are folded into the case's line."""

    def stage(self, description: str, total: int = 1) -> None:
        if self._live is not None:
            self._live.update(self._stage, description=f"{self.case}: {description}")

    # -- the cohort's --------------------------------------------------------------------
    def start_case(self, name: str) -> None:
        self.case = name

    def case_done(self, line: str, failed: bool = False) -> None:
        """One case finished (ok, failed or resumed): its line, and the count."""
        self.done += 1
        text = f"[{self.done}/{self.total}] {self.case}: {line}"
        if self._live is not None:
            self._live.update(self._cases, description=self._count_line())
        if failed:
            self._print_err(text)
        elif not self.quiet:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                say(text)

    def _print_err(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Called by run_infer at the end of each case: the display lives on until :meth:`finish`."""

    def finish(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
