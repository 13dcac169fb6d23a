"""Timing of a run's stages: :class:`StageClock`, seconds per named stage,
accumulated (the runtime's per-call and cumulative timings, the CLI's
read/write stages). A general timer, numpy-free; the benchmark's statistics
live in :mod:`segvol_rt.bench.timing`."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageClock:
    """Seconds per stage, accumulated.

    ``on_exit``, when set, runs at the end of each stage before the clock
    stops: the runtime synchronises the GPU there (kernels are asynchronous)
    and samples its memory."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    on_exit: Callable[[], None] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.on_exit is not None:
                self.on_exit()
            self.seconds[name] += time.perf_counter() - t0

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)
