"""The three served models' inference callables (open, segment, close) over a
:class:`~segvol_rt.serve.sessions.SessionStore`; tensors as
:mod:`segvol_rt.wire` defines them.

PyTriton calls each with a list of requests (``batching=False``: one at a
time per model instance; several instances run in threads at once). A user
error becomes :class:`ServedError`, which PyTriton turns into the Triton
error the client sees, ending in one line ``segvol_rt.error[CODE]: MESSAGE``
(Triton's Python stub puts its own prefix and trailer around it, and logs
it: the message quotes prompt coordinates or limits at most, never voxels
or the server's paths); our log says only that a request was refused. Any
other exception is a bug: logged with its traceback under a fresh error id,
reported to the client as one line ``segvol_rt.error[internal]: ...`` that
names the id and nothing else (no traceback, no path), and the server keeps
serving. Nothing from a volume or a prompt is logged.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt import wire as W
from segvol_rt.errors import SegVolError
from segvol_rt.serve.sessions import Session, SessionGone, SessionStore

LOG = logging.getLogger("segvol_rt.serve")

class ServedError(Exception):
    """A user error as Triton reports it: the one line of :func:`protocol.error_text`.

    PyTriton sends a failed request the ``traceback.format_exception`` of the
    exception; a user error has no traceback worth sending (nor one to leak),
    so this one shows none: ``__traceback__`` reads None, and the class's
    printed name is the protocol's tag, so the text is exactly our line."""

    __module__ = "segvol_rt"

    def __init__(self, code: str, message: str):
        line = W.error_text(code, message)
        super().__init__(line.split(": ", 1)[1])
        self.line = line

    @property
    def __traceback__(self) -> None:  # noqa: PLE0307 - deliberately hidden, see the class doc
        return None

    @__traceback__.setter
    def __traceback__(self, _value: Any) -> None:
        pass


# the printed name: "<module>.<qualname>: message" must read "segvol_rt.error[CODE]: ..."
def _error_class(code: str) -> type[ServedError]:
    return type(f"error[{code}]", (ServedError,), {"__qualname__": f"error[{code}]", "__module__": "segvol_rt"})


_ERRORS = {code: _error_class(code) for code in W.ERROR_CODES}


def served(fn: Callable[..., dict[str, np.ndarray]]) -> Callable[[Sequence[Mapping[str, np.ndarray]]], list[dict[str, np.ndarray]]]:
    """A per-request handler as a PyTriton callable; SegVolError -> ServedError."""

    @functools.wraps(fn)
    def infer(requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        out = []
        for request in requests:
            try:
                out.append(fn(request))
            except W.VersionMismatch as exc:
                LOG.info("%s: refused (another wire version)", fn.__name__)
                raise _ERRORS["version"]("version", str(exc)) from None
            except SessionGone as exc:
                LOG.info("%s: refused (session gone)", fn.__name__)  # the message names the session only for its client
                raise _ERRORS["session"]("session", str(exc)) from None
            except SegVolError as exc:
                LOG.info("%s: refused (request error)", fn.__name__)  # the message may quote prompts or a path
                raise _ERRORS["request"]("request", str(exc)) from None
            except Exception:
                raise internal_error(fn.__name__) from None
        return out

    return infer


def internal_error(handler: str) -> ServedError:
    """The one line a client gets for a bug of ours: a fresh error id, which the
    log line written here (with the traceback, from inside the ``except``) also
    carries, so the operator finds the details the client may not see."""
    incident = uuid.uuid4().hex[:12]
    LOG.exception("%s: failed (a bug in segvol-rt), error id %s", handler, incident)
    return _ERRORS["internal"]("internal", f"the server failed on this request (a bug in segvol-rt); "
                                           f"its log has the details under error id {incident}")


def _one_bytes(request: Mapping[str, np.ndarray], name: str) -> bytes:
    """The single BYTES element of input ``name``."""
    if name not in request:  # PyTriton's Request is a mapping without get()
        raise SegVolError(f"input {name!r} is missing")
    arr = request[name]
    flat = np.asarray(arr).reshape(-1)
    if flat.size != 1:
        raise SegVolError(f"input {name!r} must hold one element, not {flat.size}")
    value = flat[0]
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, (bytes, np.bytes_)):
        raise SegVolError(f"input {name!r} must be BYTES")
    return bytes(value)


def _session_id(request: Mapping[str, np.ndarray]) -> str:
    raw = _one_bytes(request, "session")
    try:
        return W.check_session_id(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise SegVolError("session id must be 32 lowercase hex digits") from None


def _bytes_out(value: bytes) -> np.ndarray:
    # object dtype: numpy's fixed-width bytes would drop trailing NUL bytes of binary data
    return np.array([value], dtype=object)


class Handlers:
    """The models' request handlers on one store. ``allowed_root``: the folder
    under which ``meta.path`` may name a server-side scan (None: paths refused)."""

    def __init__(self, store: SessionStore, allowed_root: Path | None = None, provenance: Mapping[str, Any] | None = None):
        self.store = store
        self.provenance = dict(provenance or {})
        self.allowed_root = allowed_root.resolve() if allowed_root is not None else None

    # -- open ----------------------------------------------------------------------
    def open(self, request: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sid = _session_id(request)
        meta = W.from_json_bytes(_one_bytes(request, "meta"), "meta")
        W.check_client_version(meta)
        if "path" in meta:
            return self._info(self._open_path(sid, meta["path"]))
        index = meta.get("chunk")
        if type(index) is not int or index < 0:
            raise SegVolError("meta.chunk must be an integer >= 0")
        chunk = _one_bytes(request, "chunk")
        if index == 0:  # this request makes the session: it may also drop it
            self.store.begin_upload(sid, W.VolumeHeader.of(meta))
        with self.store.use(sid) as session:
            if not self._add_chunk(session, index, chunk, created=index == 0):
                return self._info({"state": "receiving", "wire": W.WIRE_VERSION, "received": session.received})
            try:
                self.store.finish_upload(session)
            except BaseException:  # the session's own upload, complete, cannot become a volume: it never will
                self.store.close(sid, "failed to open (bad upload)")
                raise
            LOG.info("session %s opened (%d voxels)", sid, int(np.prod(session.shape or ())))
            return self._info(self._ready(session))

    def _add_chunk(self, session: Session, index: int, chunk: bytes, created: bool) -> bool:
        """:meth:`SessionStore.add_chunk`; True when the upload is complete. A chunk
        that does not continue the upload (out of order, past the announced
        size, a session that already holds its volume) is refused and leaves the
        session as it was: a request that merely names a session, as anyone's
        malformed or stray request may, never closes it. Only the request that
        created the session drops it when its own first chunk is refused."""
        try:
            return self.store.add_chunk(session, index, chunk)
        except BaseException:
            if created:
                self.store.close(session.id, "failed to open (bad upload)")
            raise

    def _open_path(self, sid: str, path: Any) -> dict[str, Any]:
        if self.allowed_root is None:
            raise SegVolError("this server reads no server-side paths (start it with --allow-path-root DIR)")
        if not isinstance(path, str) or not path:
            raise SegVolError("meta.path must be a non-empty string")
        target = (self.allowed_root / path).resolve()
        if not target.is_relative_to(self.allowed_root):
            raise SegVolError("meta.path must lie under the server's --allow-path-root")
        from segvol_rt.io.scans import read_any

        try:
            scan = read_any(target)  # a NIfTI file or a DICOM series, as the client reads them
        except SegVolError as exc:  # the client named the file relative to the root: the server's layout stays private
            raise SegVolError(str(exc).replace(str(target), path)) from None
        self.store.open_ready(sid, scan.data, scan.affine)
        LOG.info("session %s opened from a server-side file", sid)
        with self.store.use(sid) as session:
            return self._ready(session)

    def _ready(self, session: Session) -> dict[str, Any]:
        """What a client learns of a ready session: the scan's shape, the
        geometry (:func:`segvol_rt.wire.encode_geometry`: the model-space crop
        box, the model's window and the reorientation applied) and
        what serves it (:data:`provenance`)."""
        rt = session.runtime
        if rt is None:
            raise SegVolError(f"session {session.id} is still receiving its volume")
        return {"state": "ready", "wire": W.WIRE_VERSION, "shape": list(session.shape or ()),
                "geometry": W.encode_geometry(rt.geometry, rt.config.spatial_size), "provenance": self.provenance}

    # -- segment --------------------------------------------------------------------
    def segment(self, request: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sid = _session_id(request)
        fields = W.decode_request(_one_bytes(request, "request"))
        with self.store.use(sid) as session:
            if session.runtime is None:
                raise SegVolError(f"session {sid} is still receiving its volume")
            began = time.monotonic()
            seg = session.runtime.segment(**fields)
            ended = time.monotonic()
            shape = session.shape or ()
        # the server's monotonic clock around the runtime call (what overlapped with what)
        stream, box, info = W.encode_result(seg, tuple(shape), (began, ended))
        return {"mask": _bytes_out(stream), "box": box, "info": _bytes_out(info)}

    # -- close ------------------------------------------------------------------------
    def close(self, request: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sid = _session_id(request)
        with self.store.use(sid):  # waits for a request in progress on it
            self.store.close(sid)
        LOG.info("session %s closed", sid)
        return self._info({"state": "closed"})

    @staticmethod
    def _info(doc: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"info": _bytes_out(W.to_json_bytes(doc))}


def ld_library_path_with(libdir: str, current: str | None = None) -> str:
    """``LD_LIBRARY_PATH`` with ``libdir`` first (the Python backend stub must load
    this interpreter's libpython, not the system's: pytriton#51)."""
    parts = [p for p in (current if current is not None else os.environ.get("LD_LIBRARY_PATH", "")).split(":") if p]
    return ":".join([libdir, *[p for p in parts if p != libdir]])
