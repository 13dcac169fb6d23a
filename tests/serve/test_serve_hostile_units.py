"""The server's surfaces under hostile use, without a server (issue 22): shapes
whose products wrap or overflow, inflation bounded whatever the stream,
nothing but one line reaching a client (user errors, and internal errors
with an id the log carries), a stray ``open`` that names another session,
and a client that raises SegVolError whatever its HTTP stack does.
(tests/test_serve.py runs the same classes against a real server.)"""

from __future__ import annotations

import logging
import traceback
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest

from segvol_rt import wire as W
from segvol_rt.errors import SegVolError
from segvol_rt.pipeline.geometry import Geometry
from segvol_rt.serve.models import Handlers, served
from segvol_rt.serve.sessions import MIB, SessionLimits, SessionStore, reservation

EYE = np.eye(4).tolist()
WRAPS = [[2**62, 2, 2], [2**70, 1, 1], [2**21, 2**21, 2**21], [3, 0, 1], [1, 1, True], [1.0, 1, 1], [1, 1]]


def _meta(shape: Any, size: int = 10) -> dict[str, Any]:
    return {"dtype": "int16", "shape": shape, "affine": EYE, "compressed_bytes": size}


# -- checked arithmetic on shapes -------------------------------------------------------------
@pytest.mark.parametrize("shape", WRAPS)
def test_shapes_that_wrap_or_overflow_are_one_line(shape: Any) -> None:
    with pytest.raises(SegVolError, match="meta.shape") as err:
        W.VolumeHeader.of(_meta(shape))
    assert "\n" not in str(err.value)


def test_sizes_are_exact_and_checked_before_anything_is_reserved() -> None:
    """A header built past VolumeHeader.of (as a bug might) still cannot wrap: voxels are exact."""
    header = W.VolumeHeader("int16", (2**62, 2, 2), tuple(map(tuple, np.eye(4))), 100)
    assert header.voxels == 2**64 and header.raw_bytes == 2**65  # int64 would say 0
    lim = SessionLimits()
    assert reservation(header, lim, 8) > 2**65
    store = SessionStore(lambda: None, lim, zoom_voxels=8)  # type: ignore[arg-type, return-value]
    with pytest.raises(SegVolError, match="over this server's limit"):
        store.begin_upload("a" * 32, header)
    assert store.stats()["sessions"] == 0


# -- bounded, streamed inflation ---------------------------------------------------------------
def _peak(fn: Any) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(SegVolError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("size", [0, 4096])
def test_a_bomb_inflates_no_further_than_its_header(size: int) -> None:
    """size 0 is what [2**62, 2, 2] int16 wrapped to in int64: zlib's max_length 0 means 'unbounded'."""
    bomb = zlib.compress(b"\0" * (256 * MIB), 9)  # 256 KiB that would be 256 MiB
    peak = _peak(lambda: W.inflate_bounded([bomb], size, "the upload"))
    assert peak < 2 * len(bomb) + W.INFLATE_STEP + MIB, f"{peak / MIB:.0f} MiB traced"
    with pytest.raises(SegVolError, match="more than the"):
        W.inflate_bounded([bomb], size, "the upload")


def test_inflation_checks_the_whole_stream() -> None:
    raw = np.random.default_rng(0).integers(0, 255, 100_000).astype(np.uint8).tobytes()
    stream = zlib.compress(raw)
    pieces = [stream[i : i + 777] for i in range(0, len(stream), 777)]
    assert bytes(W.inflate_bounded(pieces, len(raw), "x")) == raw  # chunk by chunk, no joined copy
    for chunks, match in (([stream[:-10]], "inflates to"), ([stream, b"tail"], "after the end"),
                          ([b"not zlib"], "not a valid zlib"), ([stream], "more than")):
        with pytest.raises(SegVolError, match=match):
            W.inflate_bounded(chunks, len(raw) - (match == "more than"), "x")
    for size in (-1, 2**70, 1.5):
        with pytest.raises(SegVolError, match="not a size"):
            W.inflate_bounded([stream], size, "x")  # type: ignore[arg-type]


def test_a_mask_from_the_server_is_checked_too() -> None:
    stream, box = W.encode_mask(np.ones((4, 4, 4), np.uint8))
    for bad in ([0, 0, 0, 5, 4, 4], [2, 0, 0, 1, 4, 4], [-4, -4, 0, 0, 0, 4]):
        with pytest.raises(SegVolError, match="does not lie"):
            W.decode_mask(stream, np.array(bad), (4, 4, 4))
    with pytest.raises(SegVolError, match="more than"):
        W.decode_mask(zlib.compress(b"\xff" * MIB), box, (4, 4, 4))


# -- nothing but one line to the client -------------------------------------------------------
def test_deeply_nested_json_is_a_user_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(SegVolError, match="nested too deeply") as err:
        W.from_json_bytes(b'{"text": ' + deep + b"}", "request")
    assert "\n" not in str(err.value)


def _served_text(exc_to_raise: BaseException) -> str:
    def handler(_request: object) -> dict:
        raise exc_to_raise

    try:
        served(handler)([{}])
    except Exception as exc:  # noqa: BLE001 - PyTriton formats exactly this
        return "".join(traceback.format_exception(None, exc, exc.__traceback__))
    raise AssertionError("served() did not raise")


@pytest.mark.parametrize("bug", [RuntimeError("/srv/secret/path.py broke"), OverflowError("int too big"),
                                 RecursionError("deep"), MemoryError()])
def test_an_internal_error_is_one_line_and_an_id_in_the_log(bug: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="segvol_rt.serve"):
        text = _served_text(bug)
    assert text.count("\n") == 1 and "Traceback" not in text and "/srv" not in text
    assert not str(bug) or str(bug) not in text
    code, message = W.parse_error(text)  # type: ignore[misc]
    assert code == "internal"
    incident = message.rsplit("error id ", 1)[1]
    assert len(incident) == 12
    record = next(r for r in caplog.records if incident in r.getMessage())
    assert record.exc_info is not None and record.exc_info[0] is type(bug)  # the operator's traceback, under the id


# -- a stray open never touches another session --------------------------------------------------
class _Runtime:
    def __init__(self) -> None:
        self.crop_image = self.zoom_image = np.zeros((2, 2, 2), np.float32)
        self.geometry = Geometry.build((2, 2, 2), (0, 0, 0, 1, 1, 1), (2, 2, 2))
        self.config = type("C", (), {"spatial_size": (2, 2, 2)})()

    def set_volume(self, volume: np.ndarray, affine: np.ndarray, overwrite_input: bool = False) -> None:
        if not np.isfinite(volume).all():
            raise SegVolError("volume has NaN")

    def release_volume(self) -> None:
        pass


def _b(value: bytes | str) -> np.ndarray:
    return np.array([value.encode() if isinstance(value, str) else value], dtype=object)


def _open(h: Handlers, sid: str, meta: Any, chunk: bytes = b"") -> dict[str, Any]:
    raw = meta if isinstance(meta, bytes) else W.to_json_bytes({**meta, "wire": W.WIRE_VERSION})
    out = h.open({"session": _b(sid), "meta": _b(raw), "chunk": _b(chunk)})
    return W.from_json_bytes(bytes(out["info"][0]), "info")


def test_a_malformed_open_naming_another_session_leaves_it_alone() -> None:
    store = SessionStore(_Runtime, SessionLimits(), zoom_voxels=8)  # type: ignore[arg-type]
    h = Handlers(store)
    vol = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    stream = W.compress_volume(vol)
    header = W.VolumeHeader("int16", (2, 3, 4), tuple(map(tuple, np.eye(4))), len(stream))
    a, b = "a" * 32, "b" * 32
    assert _open(h, a, {**header.as_dict(), "chunk": 0}, stream)["state"] == "ready"
    half = len(stream) // 2
    assert _open(h, b, {**header.as_dict(), "chunk": 0}, stream[:half])["state"] == "receiving"
    strays = [({"chunk": 1}, b"junk", "already holds"), ({"chunk": 7}, b"x", "out of order"),
              ({**header.as_dict(), "chunk": 0}, stream, "already exists"), ({"chunk": -1}, b"", "meta.chunk"),
              (b"{not json", b"", "not valid JSON"), ({"chunk": 1}, b"x" * (len(stream) + 1), "exceeds")]
    for sid in (a, b):
        for meta, chunk, match in strays:
            if (sid, match) in ((a, "out of order"), (b, "already holds"), (a, "exceeds")):
                continue
            with pytest.raises(SegVolError, match=match):
                _open(h, sid, meta, chunk)
    with store.use(a) as s:
        assert s.ready  # untouched
    assert _open(h, b, {"chunk": 1}, stream[half:])["state"] == "ready"  # the owner's upload goes on as if nothing came


def test_the_session_s_own_requests_may_drop_it() -> None:
    store = SessionStore(_Runtime, SessionLimits(), zoom_voxels=8)  # type: ignore[arg-type]
    h = Handlers(store)
    nan = W.compress_volume(np.full((2, 2, 2), np.nan, np.float32))
    header = W.VolumeHeader("float32", (2, 2, 2), tuple(map(tuple, np.eye(4))), len(nan))
    with pytest.raises(SegVolError, match="NaN"):  # complete, and not a volume: it never will be
        _open(h, "c" * 32, {**header.as_dict(), "chunk": 0}, nan)
    with pytest.raises(SegVolError, match="exceeds"):  # the request that made it, refused
        _open(h, "d" * 32, {**header.as_dict(), "chunk": 0}, nan + b"x")
    assert store.stats()["sessions"] == 0


# -- the client raises SegVolError, whatever the HTTP stack does -----------------------------------------
def test_client_errors_are_segvolerror() -> None:
    pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    from segvol_rt.client import SegVolClient

    for key in ("k" * 10_000, "k" * 15, "key-with\r\nheader: injected", "ключ" * 8):
        with pytest.raises(SegVolError, match="printable ASCII"):
            SegVolClient("http://127.0.0.1:9", api_key=key)
    client = SegVolClient("http://127.0.0.1:9", api_key="k" * 1024)

    class HTTPParseError(Exception):  # a library's own exception type, as geventhttpclient's
        pass

    for raised, match in (
        (HTTPParseError("connection closed."), "failed .HTTPParseError: connection closed.\\)"),
        (ConnectionRefusedError(111, "refused"), "cannot reach .* still loading its models"),
        (InferenceServerException("Request for unknown model: 'segvol_close' is not found", status="404"),
         "is starting .its model segvol_close is not loaded yet"),
        (InferenceServerException("Model execute error: Traceback\n  File /x/model.py\nsegvol_rt.error[internal]: "
                                  "the server failed on this request (a bug in segvol-rt); its log has the details "
                                  "under error id 0123456789ab\n\nAt:\n", status="500"), "error id 0123456789ab$"),
    ):
        class Conn:
            def infer(self, *_a: Any, _raised: BaseException = raised, **_k: Any) -> None:
                raise _raised

        client._local.conn = Conn()
        with pytest.raises(SegVolError, match=match) as err:
            client.infer(W.CLOSE_MODEL, "0" * 32, {}, ("info",))
        assert "\n" not in str(err.value)
