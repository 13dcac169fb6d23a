"""Interactive sessions of the server: one uploaded volume and its
:class:`~segvol_rt.runtime.SegVolRuntime` each, all on one shared backend.

Bounds (:class:`SessionLimits`): a maximum session count, an idle TTL, a
maximum upload, and one memory bound across all sessions. A session's
memory is its reservation (:func:`reservation`): its compressed upload while
it arrives, then its preprocessed images plus the runtime's window-cache
bound (``cache_bytes``: the runtime never keeps more window embeddings than
that) and the phrase-cache bound. A new session that does not fit evicts the
least recently used idle sessions; if it still does not fit, or the count is
at its maximum with every session busy, it is refused.

Concurrency: the store's lock guards the table only (short sections); each
session has its own lock, held for the whole of a request on it, so requests
on one session run one after the other while sessions run in parallel (up to
the server's instance count). A busy session is never evicted or expired.

An unknown, expired, evicted or closed session is a :class:`SessionGone`
(a SegVolError) whose message says which and what to do; the store remembers
the ids it dropped (a bounded table) to say so.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segvol_rt import wire as W
from segvol_rt.errors import SegVolError
from segvol_rt.runtime import SegVolRuntime

MIB = 2**20
_FORGET_AFTER = 4096  # dropped ids remembered for their error message


class SessionGone(SegVolError):
    """A request names a session this server does not hold (any more)."""


@dataclass(frozen=True)
class SessionLimits:
    """``max_sessions``; ``ttl_s`` idle seconds before a session (or an unfinished
    upload) is dropped; ``memory_bytes`` across all sessions; ``max_upload_bytes``
    of one compressed volume; ``max_voxels`` of one volume; ``cache_bytes`` /
    ``text_cache_bytes`` of each session's runtime."""

    max_sessions: int = 16
    ttl_s: float = 900.0
    memory_bytes: int = 8 * 2**30
    max_upload_bytes: int = 1024 * MIB
    max_voxels: int = 1024**3
    cache_bytes: int = 512 * MIB
    text_cache_bytes: int = 16 * MIB


@dataclass(eq=False)
class Session:
    """One session: an upload in progress (``header``, ``chunks``) or a ready ``runtime``."""

    id: str
    header: W.VolumeHeader | None = None
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    runtime: SegVolRuntime | None = None
    shape: tuple[int, int, int] | None = None
    reserved: int = 0
    last_used: float = 0.0
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ready(self) -> bool:
        return self.runtime is not None


def reservation(header: W.VolumeHeader, limits: SessionLimits, zoom_voxels: int) -> int:
    """Bytes a session may hold once its volume is in: the compressed upload
    and the raw array (while it is turned into the runtime's), the float32
    scan and crop image (at most the scan's size each), the zoom-out image and
    the two cache bounds. An upper bound: the crop is usually smaller."""
    voxels = header.voxels  # exact: a shape whose int64 product wraps must not shrink the reservation
    return header.compressed_bytes + header.raw_bytes + 8 * voxels + 4 * zoom_voxels + limits.cache_bytes + limits.text_cache_bytes


class SessionStore:
    """The server's sessions (see the module doc). ``make_runtime()`` gives a
    fresh runtime on the shared backend; ``clock`` is monotonic seconds."""

    def __init__(self, make_runtime: Callable[[], SegVolRuntime], limits: SessionLimits, zoom_voxels: int,
                 clock: Callable[[], float] = time.monotonic):
        self._make_runtime = make_runtime
        self.limits = limits
        self._zoom_voxels = zoom_voxels
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._dropped: OrderedDict[str, str] = OrderedDict()  # id -> why it is gone

    # -- bookkeeping (store lock held) ----------------------------------------------
    def _drop(self, sid: str, why: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            session.chunks.clear()
            if session.runtime is not None:
                session.runtime.release_volume()  # the backend is shared: never closed here
                session.runtime = None
        self._dropped[sid] = why
        while len(self._dropped) > _FORGET_AFTER:
            self._dropped.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        for sid, s in list(self._sessions.items()):
            if s.busy == 0 and now - s.last_used > self.limits.ttl_s:
                self._drop(sid, f"expired after {self.limits.ttl_s:g} s idle")

    def _used(self) -> int:
        return sum(s.reserved for s in self._sessions.values())

    def _make_room(self, need: int) -> None:
        """Evict idle sessions, least recently used first, until one more of
        ``need`` bytes fits both bounds; refuse when it cannot."""
        lim = self.limits
        for sid, s in list(self._sessions.items()):
            if len(self._sessions) < lim.max_sessions and self._used() + need <= lim.memory_bytes:
                break
            if s.busy == 0:
                self._drop(sid, "evicted to make room for newer sessions (least recently used)")
        if len(self._sessions) >= lim.max_sessions:
            raise SegVolError(f"the server holds its maximum of {lim.max_sessions} sessions, all busy; try again shortly")
        if self._used() + need > lim.memory_bytes:
            raise SegVolError(
                f"a session for this volume needs up to {need / MIB:.0f} MiB and the server's memory bound "
                f"({lim.memory_bytes / MIB:.0f} MiB across sessions) leaves {(lim.memory_bytes - self._used()) / MIB:.0f} MiB; "
                "close sessions or use a smaller volume"
            )

    def _gone(self, sid: str) -> SessionGone:
        why = self._dropped.get(sid)
        if why is None:
            return SessionGone(f"session {sid} is unknown to this server (never opened here, or lost when its server "
                               "restarted); open a new session")
        return SessionGone(f"session {sid} {why}; open a new session")

    # -- API ----------------------------------------------------------------------------
    def begin_upload(self, sid: str, header: W.VolumeHeader) -> Session:
        """A new session receiving ``header``'s volume (checked against the limits)."""
        lim = self.limits
        voxels = header.voxels  # exact (VolumeHeader.of bounds it); checked before anything is reserved or inflated
        if header.compressed_bytes > lim.max_upload_bytes:
            raise SegVolError(f"upload of {header.compressed_bytes / MIB:.1f} MiB exceeds this server's limit of "
                              f"{lim.max_upload_bytes / MIB:.1f} MiB (--max-upload-mb)")
        if voxels > lim.max_voxels:
            raise SegVolError(f"volume {header.shape} has {voxels} voxels, over this server's limit of {lim.max_voxels}")
        need = reservation(header, lim, self._zoom_voxels)
        with self._lock:
            self._expire()
            if sid in self._sessions:
                raise SegVolError(f"session {sid} already exists on this server; draw a new id")
            self._make_room(need)
            session = Session(sid, header=header, reserved=need, last_used=self._clock())
            self._sessions[sid] = session
            self._dropped.pop(sid, None)
            return session

    @contextlib.contextmanager
    def use(self, sid: str) -> Iterator[Session]:
        """The session ``sid`` with its lock held (requests on it run one at a time)."""
        with self._lock:
            self._expire()
            session = self._sessions.get(sid)
            if session is None:
                raise self._gone(sid)
            session.busy += 1
            self._sessions.move_to_end(sid)
        try:
            with session.lock:
                if self._sessions.get(sid) is not session:  # closed while this request waited
                    raise self._gone(sid)
                yield session
        finally:
            with self._lock:
                session.busy -= 1
                session.last_used = self._clock()

    def add_chunk(self, session: Session, index: int, chunk: bytes) -> bool:
        """Append the upload's chunk ``index`` (in order); True when the volume is complete."""
        header = session.header
        if session.ready or header is None:
            raise SegVolError(f"session {session.id} already holds its volume")
        if index != len(session.chunks):
            raise SegVolError(f"upload chunk {index} out of order (expected chunk {len(session.chunks)})")
        if session.received + len(chunk) > header.compressed_bytes:
            raise SegVolError(f"upload exceeds the {header.compressed_bytes} bytes its header announced")
        session.chunks.append(chunk)
        session.received += len(chunk)
        return session.received == header.compressed_bytes

    def finish_upload(self, session: Session) -> None:
        """Decompress the complete upload (in memory, chunk by chunk: no joined
        copy, at most the header's raw size) and preprocess it in a new runtime."""
        header = session.header
        if header is None:
            raise SegVolError(f"session {session.id} has no upload in progress")
        try:
            volume = W.decompress_volume(session.chunks, header)
        finally:
            session.chunks.clear()
        self.set_volume(session, volume, np.asarray(header.affine))

    def set_volume(self, session: Session, volume: np.ndarray, affine: np.ndarray) -> None:
        """Give ``session`` its runtime on ``volume`` (scan space ``(I, J, K)``)."""
        runtime = self._make_runtime()
        runtime.set_volume(volume, affine, overwrite_input=True)  # the session's own array: only its shape is kept
        session.runtime, session.shape, session.header = runtime, tuple(int(s) for s in volume.shape), None  # type: ignore[assignment]
        with self._lock:  # the reservation shrinks to what it holds now
            images = int(runtime.crop_image.nbytes + runtime.zoom_image.nbytes)
            session.reserved = images + self.limits.cache_bytes + self.limits.text_cache_bytes

    def open_ready(self, sid: str, volume: np.ndarray, affine: np.ndarray) -> tuple[int, int, int]:
        """A session on a volume the server read itself (a server-side path)."""
        header = W.VolumeHeader(volume.dtype.name if volume.dtype.name in W.VOLUME_DTYPES else "float32",
                                tuple(int(s) for s in volume.shape), tuple(map(tuple, affine)), 1)  # type: ignore[arg-type]
        self.begin_upload(sid, header)
        try:
            with self.use(sid) as session:
                self.set_volume(session, volume, affine)
                return session.shape  # type: ignore[return-value]
        except BaseException:
            self.close(sid, "failed to open")
            raise

    def close(self, sid: str, why: str = "was closed") -> bool:
        """Drop ``sid``; False when it was not held."""
        with self._lock:
            held = sid in self._sessions
            if held:
                self._drop(sid, why)
            return held

    def sweep(self) -> None:
        """Drop the sessions idle past the TTL (also done on every request)."""
        with self._lock:
            self._expire()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ready = sum(1 for s in self._sessions.values() if s.ready)
            return {"sessions": len(self._sessions), "ready": ready, "uploading": len(self._sessions) - ready,
                    "reserved_bytes": self._used(), "memory_bytes": self.limits.memory_bytes}


class Sweeper(threading.Thread):
    """Expires idle sessions every ``period_s`` until :meth:`stop` (memory goes
    back without traffic)."""

    def __init__(self, store: SessionStore, period_s: float):
        super().__init__(name="segvol-session-sweeper", daemon=True)
        self._store, self._period = store, period_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._period):
            self._store.sweep()

    def stop(self) -> None:
        self._stopped.set()
