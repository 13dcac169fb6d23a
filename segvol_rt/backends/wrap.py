"""Backends that wrap another: :class:`DelegatingBackend` (the same graphs,
maybe other declared limits) and :class:`SerialBackend` (one call at a time).

A wrapper declares what the wrapped backend declares (name, device,
precision, threads, batches) and runs its graphs through the wrapped
backend's public :meth:`~segvol_rt.backends.base.Backend.run`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from segvol_rt.backends.base import Backend
from segvol_rt.io import spec as S


class DelegatingBackend(Backend):
    """Runs ``inner``'s graphs; ``specs`` (default: ``inner``'s) may narrow its batch ranges."""

    def __init__(self, inner: Backend, specs: Mapping[str, S.GraphSpec] | None = None):
        super().__init__(inner.specs if specs is None else specs)
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.precision = inner.precision
        self.threads = inner.threads
        self.concurrent = inner.concurrent
        self.window_batch = inner.window_batch
        self.cpu_batches = inner.cpu_batches

    @property
    def xp(self) -> Any:
        return self.inner.xp

    def describe(self) -> str:
        return self.inner.describe()

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        self.specs[graph].validate_inputs(feeds)  # this wrapper's ranges
        return self.inner.run(graph, feeds)

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        return self.inner.run(graph, feeds)

    def rest(self) -> None:
        self.inner.rest()

    def close(self) -> None:
        self.inner.close()


class SerialBackend(DelegatingBackend):
    """``inner`` with its graph runs one at a time, across threads."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.concurrent = True  # this wrapper may be called from several threads
        self._lock = threading.Lock()

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self.inner.run(graph, feeds)


def shareable(backend: Backend) -> Backend:
    """``backend`` itself when its calls may overlap, else a :class:`SerialBackend` of it."""
    return backend if backend.concurrent else SerialBackend(backend)
