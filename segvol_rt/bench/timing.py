"""LatencyStats: warm-up then timed calls with the GPU synchronised, and their
statistics (:class:`LatencyStats`: median, p90, min, over seconds).

Rules every measurement follows:

* warm-up calls first (``warmup``), then ``repeat`` timed calls;
* the GPU is synchronised (CuPy and torch, whichever is loaded) before the
  clock starts and before it stops, so asynchronous work is counted;
* side-by-side comparisons interleave their trials round by round
  (:func:`time_interleaved`), so a slow spell of the machine hits all of them.

numpy only; the GPU modules are looked up in ``sys.modules``, never imported.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from segvol_rt.errors import SegVolError

# -- timing ---------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def synchronize() -> None:
    """Wait for queued GPU work of CuPy and torch, when loaded and on a GPU."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        with contextlib.suppress(Exception):  # no device: nothing to wait for
            cupy.cuda.Device().synchronize()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class LatencyStats:
    """Seconds of the timed calls of one measurement."""

    samples: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def min(self) -> float:
        return float(min(self.samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_ms": round(self.p50 * 1e3, 4),
            "p90_ms": round(self.p90 * 1e3, 4),
            "min_ms": round(self.min * 1e3, 4),
            "n": len(self.samples),
            "samples_ms": [round(s * 1e3, 4) for s in self.samples],
        }


def time_once(fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
    """Seconds of one ``fn()`` with the GPU synchronised at both ends; ``before`` runs untimed first."""
    if before:
        before()
    synchronize()
    t0 = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t0


def failure_reason(exc: BaseException) -> str:
    """One line (at most 300 characters) naming an exception, for report notes."""
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int, before: Callable[[], Any] | None = None) -> LatencyStats:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed.

    ``before`` runs untimed ahead of every call (e.g. clearing a cache)."""
    if repeat < 1:
        raise SegVolError(f"repeat must be at least 1, got {repeat}")
    for _ in range(max(0, warmup)):
        if before:
            before()
        fn()
    return LatencyStats([time_once(fn, before) for _ in range(repeat)])


class Contender(Protocol):
    """One contender of an interleaved comparison (:class:`segvol_rt.bench.stages.Trial`
    is one): ``run`` is timed, ``before`` runs untimed ahead of every run."""

    @property
    def run(self) -> Callable[[], Any]: ...

    @property
    def before(self) -> Callable[[], Any] | None: ...


def time_interleaved(trials: Sequence[Contender], repeat: int, warmup: int) -> list[LatencyStats | BaseException]:
    """Time the trials in rounds (A, B, C, A, B, C, ...) so that a machine
    whose load changes during the run loads every contender alike. A trial
    that raises is dropped from later rounds; its exception is returned in
    place of its timing."""
    results: list[list[float] | BaseException] = [[] for _ in trials]
    for round_ in range(max(0, warmup) + repeat):
        for i, trial in enumerate(trials):
            if isinstance(results[i], BaseException):
                continue
            try:
                elapsed = time_once(trial.run, trial.before)
            except Exception as exc:  # noqa: BLE001 - the other contenders still count
                results[i] = exc
                continue
            if round_ >= warmup:
                results[i].append(elapsed)  # type: ignore[union-attr]
    return [r if isinstance(r, BaseException) else LatencyStats(r) for r in results]
