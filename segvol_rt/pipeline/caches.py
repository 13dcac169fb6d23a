"""A least-recently-used cache bounded by bytes, for embeddings (numpy or cupy arrays).

The runtime caches two kinds of embeddings: zoom-in window embeddings per
volume (:class:`segvol_rt.pipeline.zoom.EmbeddingCache`) and encoded phrases
(:class:`segvol_rt.runtime.SegVolRuntime`). Both were unbounded; a long
session of distinct boxes or phrases grew without limit. :class:`ByteLRU`
holds at most ``max_bytes`` of array memory (``.nbytes``; host or device)
between calls and evicts the least recently used entries first.

Pins: the keys a call is working with may be pinned (:meth:`ByteLRU.pinned`)
so that inserting later entries of the same call does not evict them before
they are used; while pins are held the cache may exceed its bound by the
pinned entries, and it evicts down to the bound when the last pin is
released. An entry larger than the whole bound is kept only while pinned.

Hand-written on :class:`collections.OrderedDict` (its ``move_to_end`` is the
LRU order) because pins and byte accounting of device arrays are needed;
``cachetools`` has neither pins nor eviction counts.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from segvol_rt.errors import SegVolError

K = TypeVar("K", bound=Hashable)

MIB = 1 << 20


def nbytes(value: Any) -> int:
    """Bytes of an array (numpy or cupy ``.nbytes``); 0 for anything without it."""
    return int(getattr(value, "nbytes", 0))


class ByteLRU(Generic[K]):
    """LRU mapping of keys to arrays holding at most ``max_bytes`` (outside pins).

    Attributes:
        max_bytes: the bound (0: nothing is kept beyond the pinned entries).
        nbytes: bytes held now.
        peak_bytes: the most bytes held at once (pinned entries included).
        evictions: entries dropped to keep the bound.
        hits / misses: :meth:`get` lookups that found / did not find their key.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise SegVolError(f"a cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[K, Any] = OrderedDict()  # least recently used first
        self._sizes: dict[K, int] = {}
        self._pins: Counter[K] = Counter()
        self.nbytes = 0
        self.peak_bytes = 0
        self.evictions = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def view(self) -> Mapping[K, Any]:
        """A read-only live view of the entries (reading it does not count as use)."""
        return MappingProxyType(self._items)

    def get(self, key: K, default: Any = None) -> Any:
        """The value of ``key`` (now the most recently used), or ``default``."""
        if key not in self._items:
            self.misses += 1
            return default
        self.hits += 1
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: Any) -> None:
        """Insert or replace ``key`` as the most recently used entry, then evict
        unpinned least recently used entries down to the bound."""
        if key in self._items:
            self.nbytes -= self._sizes[key]
        self._items[key] = value
        self._items.move_to_end(key)
        self._sizes[key] = size = nbytes(value)
        self.nbytes += size
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
        self._evict()

    @contextmanager
    def pinned(self, keys: Iterable[K]) -> Iterator[None]:
        """Keep ``keys`` (present or inserted later) from eviction inside the
        block; evict down to the bound when it ends. Pins nest."""
        held = list(dict.fromkeys(keys))
        self._pins.update(held)
        try:
            yield
        finally:
            self._pins.subtract(held)
            for key in held:
                if self._pins[key] <= 0:
                    del self._pins[key]
            self._evict()

    def _evict(self) -> None:
        """Drop unpinned entries, least recently used first, until the bound holds."""
        excess = self.nbytes - self.max_bytes
        if excess <= 0:
            return
        victims = []
        for key in self._items:
            if excess <= 0:
                break
            if key not in self._pins:
                victims.append(key)
                excess -= self._sizes[key]
        for key in victims:
            self._drop(key)
            self.evictions += 1

    def _drop(self, key: K) -> None:
        del self._items[key]
        self.nbytes -= self._sizes.pop(key)

    def clear(self) -> None:
        """Forget every entry (not counted as evictions); the counters stay."""
        self._items.clear()
        self._sizes.clear()
        self.nbytes = 0

    def stats(self) -> dict[str, int]:
        """Entries, bytes held, the bound, the peak, evictions, hits and misses."""
        return {
            "entries": len(self._items),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "peak_bytes": self.peak_bytes,
            "evictions": self.evictions,
            "hits": self.hits,
            "misses": self.misses,
        }
