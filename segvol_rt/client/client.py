"""A torch-free client of ``segvol-rt serve`` (the ``client`` extra: tritonclient).

    client = SegVolClient("http://127.0.0.1:8000")
    with client.open_session("ct.nii.gz") as session:     # read here, uploaded once
        seg = session.segment(text="liver")                # a Segmentation, as the local API's
        seg = session.segment(box=(10, 20, 5, 60, 80, 40), zoom_in=False)

Prompts and masks are in **scan** voxel indices ``(i, j, k)`` of the volume
as uploaded (as :meth:`segvol_rt.runtime.SegVolRuntime.segment` takes them).
A volume travels in its own integer dtype where it has one, zlib-compressed, in
chunks (:mod:`segvol_rt.wire`); a mask comes back as the packed
bits of its bounding box. Every request carries the session id in the
``X-SegVol-Session`` header, so a router with consistent hashing on it keeps
the session on its server.

Errors are :class:`~segvol_rt.errors.SegVolError`, never the HTTP library's
own: the server's one-line message for a user error (or, for a bug of the
server's, a line with the error id its log carries), :class:`SessionGoneError`
for a session the server no longer holds (expired, evicted, closed, or its
server stopped: open a new one), "the server is starting" for a server whose
models are not loaded yet, and a line naming the URL when the server cannot
be reached.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from segvol_rt import wire as W
from segvol_rt._optional import require
from segvol_rt.client.volumes import read_volume
from segvol_rt.errors import SegVolError, one_line
from segvol_rt.types import Segmentation

ACCESS_TOKEN_HEADER = "triton-access-token"  # Triton's restricted-API header (PyTriton's security config)


class SessionGoneError(SegVolError):
    """The server does not hold this session (any more): open a new one."""


@dataclass(frozen=True)
class Upload:
    """How a volume went up: raw and compressed bytes, chunks, seconds."""

    raw_bytes: int
    compressed_bytes: int
    chunks: int
    seconds: float
    compress_seconds: float


class SegVolClient:
    """A connection to one server (or a router in front of several).

    Any thread may use it and its sessions: tritonclient's HTTP client (on
    gevent) works only in the thread that made it, so each thread gets its
    own connection, made on first use (sessions live on the server, not in a
    connection).

    ``url``: ``http://host:port`` (Triton's HTTP endpoint); ``api_key``: the
    server's key when it has one; ``timeout_s``: seconds a request may take
    (a full-size prompt on a CPU takes tens of seconds)."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 600.0, connect_timeout_s: float = 10.0):
        http = require("tritonclient.http")
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SegVolError(f"server URL {url!r} must look like http://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.netloc}"
        if api_key is not None:
            W.check_api_key(api_key)
        self._http = http
        self._api_key = api_key
        self._connect = lambda: http.InferenceServerClient(parts.netloc, ssl=parts.scheme == "https",
                                                            connection_timeout=connect_timeout_s, network_timeout=timeout_s,
                                                            concurrency=1)
        self._local = threading.local()

    @property
    def _client(self) -> Any:
        """This thread's tritonclient connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        """Close this thread's connection (another thread's goes with that thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> SegVolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health -------------------------------------------------------------------
    def ready(self) -> bool:
        """Triton's readiness (``/v2/health/ready``) and the three models'."""
        try:
            return bool(self._client.is_server_ready()) and all(self._client.is_model_ready(m) for m in W.MODELS)
        except Exception:  # noqa: BLE001 - not reachable is "not ready"
            return False

    # -- requests -------------------------------------------------------------------
    def _headers(self, sid: str) -> dict[str, str]:
        headers = {W.SESSION_HEADER: sid}
        if self._api_key:
            headers[ACCESS_TOKEN_HEADER] = self._api_key
        return headers

    def _bytes_input(self, name: str, value: bytes) -> Any:
        tensor = self._http.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
        return tensor

    def infer(self, model: str, sid: str, inputs: Mapping[str, bytes], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One request to ``model`` in session ``sid``; the outputs by name."""
        tensors = [self._bytes_input("session", sid.encode()), *(self._bytes_input(k, v) for k, v in inputs.items())]
        wanted = [self._http.InferRequestedOutput(name, binary_data=True) for name in outputs]
        try:
            result = self._client.infer(model, tensors, outputs=wanted, headers=self._headers(sid))
        except self._exception_type() as exc:
            raise self._error(exc, sid, model) from None
        except (OSError, ConnectionError) as exc:
            raise SegVolError(f"cannot reach the segvol-rt server at {self.url} (not running, or still loading its models: "
                              f"it listens once they are loaded) ({one_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - the HTTP stack's own errors (a header it refuses, a reply it cannot parse)
            raise SegVolError(f"the request to the segvol-rt server at {self.url} failed ({one_line(exc)})") from None
        return {name: result.as_numpy(name) for name in outputs}

    def _exception_type(self) -> type[Exception]:
        return require("tritonclient.utils").InferenceServerException

    def _error(self, exc: Any, sid: str, model: str) -> SegVolError:
        text = exc.message() if hasattr(exc, "message") else str(exc)
        parsed = W.parse_error(text or "")
        if parsed is not None:
            code, message = parsed
            if code == "version":
                return W.VersionMismatch(f"segvol-rt server at {self.url}: {message}")
            return SessionGoneError(message) if code == "session" else SegVolError(message)
        status = exc.status() if hasattr(exc, "status") else None
        detail = " ".join(str(text).split())[:200]
        if str(status) == "404" and "unknown model" in detail.lower():
            return SegVolError(f"the server at {self.url} is starting (its model {model} is not loaded yet): try again "
                               "once its /v2/health/ready answers 200 (SegVolClient.ready())")
        if status in ("502", "503", "504", 502, 503, 504):
            return SessionGoneError(f"the server holding session {sid} is unreachable behind {self.url} (HTTP {status}); "
                                    "open a new session")
        return SegVolError(f"segvol-rt server at {self.url} failed the request (status {status}): {detail}")

    # -- sessions --------------------------------------------------------------------
    def open_session(self, path_or_array: str | Path | np.ndarray, affine: np.ndarray | None = None,
                     series: str | None = None) -> RemoteSession:
        """A session on a volume: a NIfTI file or DICOM folder (read here, with
        ``series`` choosing a DICOM series), or an ``(I, J, K)`` array with its
        4x4 ``affine`` (identity by default)."""
        if isinstance(path_or_array, (str, Path)):
            if affine is not None:
                raise SegVolError("affine: a file brings its own affine; pass affine only with an array")
            volume, affine = read_volume(Path(path_or_array), series)
        else:
            if series is not None:
                raise SegVolError("series names a DICOM series of a folder; it does not apply to an array")
            volume = path_or_array
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        return self._upload(W.wire_volume(W.narrow_integers(volume)), affine)

    def _upload(self, volume: np.ndarray, affine: np.ndarray) -> RemoteSession:
        sid = uuid.uuid4().hex
        t0 = time.perf_counter()
        stream = W.compress_volume(volume)
        t1 = time.perf_counter()
        header = W.VolumeHeader(volume.dtype.name, tuple(int(s) for s in volume.shape),  # type: ignore[arg-type]
                                tuple(tuple(float(v) for v in row) for row in affine), len(stream), W.memory_order(volume))
        W.VolumeHeader.of(header.as_dict())  # the server's checks, here first
        chunks = [stream[i : i + W.CHUNK_BYTES] for i in range(0, len(stream), W.CHUNK_BYTES)]
        info: dict[str, Any] = {}
        for index, chunk in enumerate(chunks):
            meta = {**header.as_dict(), "chunk": index} if index == 0 else {"chunk": index}
            out = self.infer(W.OPEN_MODEL, sid, {"meta": W.to_json_bytes({"wire": W.WIRE_VERSION, **meta}), "chunk": chunk}, ("info",))
            info = _json(out["info"])
            W.check_server_version(info, self.url)
        if info.get("state") != "ready":
            raise SegVolError(f"the server did not complete session {sid} ({info.get('state')})")
        upload = Upload(volume.nbytes, len(stream), len(chunks), time.perf_counter() - t0, t1 - t0)
        return RemoteSession(self, sid, info, upload)

    def open_server_path(self, path: str) -> RemoteSession:
        """A session on a scan the server reads itself (``path`` relative to its
        ``--allow-path-root``; refused by servers without one)."""
        sid = uuid.uuid4().hex
        meta = W.to_json_bytes({"wire": W.WIRE_VERSION, "path": path})
        info = _json(self.infer(W.OPEN_MODEL, sid, {"meta": meta, "chunk": b""}, ("info",))["info"])
        W.check_server_version(info, self.url)
        return RemoteSession(self, sid, info, None)


def _json(arr: np.ndarray) -> dict[str, Any]:
    return json.loads(bytes(arr.reshape(-1)[0]))


class RemoteSession:
    """One volume on the server.

    ``shape``: the scan's ``(I, J, K)``; ``geometry``: its coordinate chain
    (:class:`segvol_rt.pipeline.geometry.Geometry`, rebuilt from the server's
    crop box and reorientation); ``provenance``: what serves it (backend, device, checkpoint);
    ``upload``: how it went up (None for a server-side path)."""

    def __init__(self, client: SegVolClient, sid: str, info: Mapping[str, Any], upload: Upload | None):
        self.client, self.id, self.upload = client, sid, upload
        self.shape = W.checked_shape(info.get("shape"), "the server's shape")
        self.geometry = W.decode_geometry(info.get("geometry"), self.shape)
        self.provenance: dict[str, Any] = dict(info.get("provenance") or {})
        self.closed = False

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            with contextlib.suppress(SessionGoneError):  # already gone (expired, or its server stopped)
                self.close()

    def segment(self, text: str | None = None, box: Any = None, points: Any = None, **options: Any) -> Segmentation:
        """As :meth:`segvol_rt.runtime.SegVolRuntime.segment` (options: zoom_in,
        seed, window_prompts); the mask is uint8 ``(I, J, K)`` in scan space."""
        request = W.encode_request(text, box, points, options)
        out = self.client.infer(W.SEGMENT_MODEL, self.id, {"request": request}, ("mask", "box", "info"))
        return W.decode_result(bytes(out["mask"].reshape(-1)[0]), out["box"], _json(out["info"]))

    def close(self) -> None:
        """Free the session on the server."""
        self.client.infer(W.CLOSE_MODEL, self.id, {}, ("info",))
        self.closed = True

