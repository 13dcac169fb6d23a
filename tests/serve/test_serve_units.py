"""Serving without a server: the wire format, the session store's bounds (count,
LRU, idle TTL, memory), the served error line, the rebuilt geometry, and a
torch-free, backend-free client import. (tests/serve/test_serve.py runs the real server.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import traceback
import zlib

import numpy as np
import pytest

from segvol_rt import wire as W
from segvol_rt.errors import SegVolError
from segvol_rt.serve.models import _ERRORS, Handlers, ld_library_path_with, served
from segvol_rt.serve.sessions import MIB, SessionGone, SessionLimits, SessionStore, reservation


# -- protocol --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 7, 9), (1, 1, 1), (64, 3, 17)])
def test_mask_round_trip(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(s // 4, max(s // 4 + 1, 3 * s // 4)) for s in shape)] = rng.random(1)[0] > -1
    mask &= (rng.random(shape) > 0.3).astype(np.uint8)
    stream, box = W.encode_mask(np.asfortranarray(mask))
    assert np.array_equal(W.decode_mask(stream, box, shape), mask)


def test_empty_mask_round_trip() -> None:
    stream, box = W.encode_mask(np.zeros((4, 5, 6), np.uint8))
    assert box.tolist() == [0] * 6
    assert not W.decode_mask(stream, box, (4, 5, 6)).any()


def test_volume_round_trip_keeps_dtype_and_values() -> None:
    vol = np.asfortranarray(np.random.default_rng(1).integers(-1024, 3000, (20, 30, 7)).astype(np.int16))
    wire = W.wire_volume(vol)
    stream = W.compress_volume(wire)
    header = W.VolumeHeader("int16", vol.shape, tuple(map(tuple, np.eye(4))), len(stream), W.memory_order(vol))
    back = W.decompress_volume(stream, header)
    assert back.dtype == np.int16 and np.array_equal(back, vol)


@pytest.mark.parametrize("order", ["C", "F"])
def test_volume_travels_in_its_memory_order(order: str) -> None:
    vol = np.asarray(np.random.default_rng(3).integers(0, 200, (6, 5, 4)).astype(np.uint8), order=order)
    stream = W.compress_volume(vol)
    header = W.VolumeHeader.of({"dtype": "uint8", "shape": [6, 5, 4], "affine": np.eye(4).tolist(),
                                "compressed_bytes": len(stream), "order": W.memory_order(vol)})
    back = W.decompress_volume(stream, header)
    assert np.array_equal(back, vol) and back.flags.f_contiguous == (order == "F")


def test_float_volume_of_integers_travels_as_int16() -> None:
    vol = np.random.default_rng(2).integers(-1024, 3000, (8, 8, 8)).astype(np.float32)
    narrow = W.narrow_integers(vol)
    assert narrow.dtype == np.int16 and np.array_equal(narrow.astype(np.float32), vol)
    frac = vol + 0.5
    assert W.narrow_integers(frac).dtype == np.float32


def test_decompression_is_bounded_by_the_header() -> None:
    bomb = zlib.compress(b"\0" * (64 * MIB))
    header = W.VolumeHeader("uint8", (16, 16, 16), tuple(map(tuple, np.eye(4))), len(bomb))
    with pytest.raises(SegVolError, match="more than the 4096 bytes"):
        W.decompress_volume(bomb, header)
    with pytest.raises(SegVolError, match="not a valid zlib stream"):
        W.decompress_volume(b"not zlib", header)


@pytest.mark.parametrize("meta, match", [
    ({"dtype": "complex64", "shape": [1, 1, 1], "affine": np.eye(4).tolist(), "compressed_bytes": 1}, "dtype"),
    ({"dtype": "int16", "shape": [1, 0, 1], "affine": np.eye(4).tolist(), "compressed_bytes": 1}, "shape"),
    ({"dtype": "int16", "shape": [1, 1, 1], "affine": [[1, 2]], "compressed_bytes": 1}, "affine"),
    ({"dtype": "int16", "shape": [1, 1, 1], "affine": np.eye(4).tolist(), "compressed_bytes": -3}, "compressed_bytes"),
])
def test_volume_header_refuses_bad_meta(meta: dict, match: str) -> None:
    with pytest.raises(SegVolError, match=match):
        W.VolumeHeader.of(meta)


def test_session_ids_and_json() -> None:
    assert W.check_session_id("a" * 32) == "a" * 32
    for bad in ("A" * 32, "a" * 31, "../" + "a" * 29, 5):
        with pytest.raises(SegVolError, match="32 lowercase hex"):
            W.check_session_id(bad)  # type: ignore[arg-type]
    with pytest.raises(SegVolError, match="not valid JSON"):
        W.from_json_bytes(b"{", "request")
    with pytest.raises(SegVolError, match="JSON object"):
        W.from_json_bytes(b"[1]", "request")


def test_served_error_is_exactly_one_line() -> None:
    """PyTriton sends format_exception(e, e.__traceback__): ours is the tag line alone."""

    def handler(_request: object) -> dict:
        raise SegVolError("box (0, 0, 0, 999, 9, 9) is outside\n the scan")

    try:
        served(handler)([{}])
    except Exception as exc:  # noqa: BLE001
        text = "".join(traceback.format_exception(None, exc, exc.__traceback__))
    assert text == "segvol_rt.error[request]: box (0, 0, 0, 999, 9, 9) is outside the scan\n"
    assert W.parse_error(f"Model execute error: {text}\n\nAt:\n  model.py(1)") == (
        "request", "box (0, 0, 0, 999, 9, 9) is outside the scan")
    assert set(_ERRORS) == set(W.ERROR_CODES)


def test_ld_library_path_puts_libdir_first() -> None:
    assert ld_library_path_with("/py/lib", "/a:/py/lib::/b") == "/py/lib:/a:/b"
    assert ld_library_path_with("/py/lib", "") == "/py/lib"


# -- session store --------------------------------------------------------------------
class _FakeRuntime:
    def __init__(self) -> None:
        self.crop_image = np.zeros((4, 4, 4), np.float32)
        self.zoom_image = np.zeros((2, 2, 2), np.float32)
        self.released = False

    def set_volume(self, volume: np.ndarray, affine: np.ndarray, overwrite_input: bool = False) -> None:
        self.volume = volume

    def release_volume(self) -> None:
        self.released = True


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _header(shape: tuple[int, int, int] = (4, 4, 4), size: int = 10) -> W.VolumeHeader:
    return W.VolumeHeader("int16", shape, tuple(map(tuple, np.eye(4))), size)


def _store(clock: _Clock, **limits: int | float) -> SessionStore:
    lim = SessionLimits(**{"max_sessions": 3, "ttl_s": 10.0, "memory_bytes": 10 * MIB, "cache_bytes": 1000,
                           "text_cache_bytes": 100, **limits})  # type: ignore[arg-type]
    return SessionStore(_FakeRuntime, lim, zoom_voxels=8, clock=clock)  # type: ignore[arg-type]


def _open(store: SessionStore, sid: str) -> None:
    store.begin_upload(sid, _header())
    with store.use(sid) as s:
        store.set_volume(s, np.zeros((4, 4, 4), np.int16), np.eye(4))


def sid(n: int) -> str:
    return f"{n:032x}"


def test_lru_eviction_at_the_session_count() -> None:
    clock = _Clock()
    store = _store(clock)
    for n in range(3):
        _open(store, sid(n))
        clock.t += 1
    with store.use(sid(0)):  # 0 becomes the most recently used
        pass
    _open(store, sid(3))
    with pytest.raises(SessionGone, match="evicted"), store.use(sid(1)):
        pass
    for n in (0, 2, 3):
        with store.use(sid(n)) as s:
            assert s.ready


def test_busy_sessions_are_never_evicted() -> None:
    clock = _Clock()
    store = _store(clock, max_sessions=1)
    _open(store, sid(0))
    with store.use(sid(0)), pytest.raises(SegVolError, match="maximum of 1 sessions, all busy"):
        _open(store, sid(1))


def test_idle_ttl_expires_and_says_so() -> None:
    clock = _Clock()
    store = _store(clock)
    _open(store, sid(0))
    clock.t += 9
    with store.use(sid(0)):
        pass
    clock.t += 9  # 9 s after the last use: still alive
    with store.use(sid(0)):
        pass
    clock.t += 11
    with pytest.raises(SessionGone, match="expired after 10 s idle; open a new session"), store.use(sid(0)):
        pass
    with pytest.raises(SessionGone, match="unknown to this server"), store.use(sid(9)):
        pass


def test_memory_bound_across_sessions() -> None:
    clock = _Clock()
    one = reservation(_header(), SessionLimits(cache_bytes=1000, text_cache_bytes=100), 8)
    store = _store(clock, memory_bytes=one + 10, max_sessions=10)
    store.begin_upload(sid(0), _header())  # uploading: holds its whole reservation
    with pytest.raises(SegVolError, match="memory bound"), store.use(sid(0)):  # busy: cannot be evicted for the next one
        store.begin_upload(sid(1), _header())
    store.close(sid(0))
    big = _header((4000, 4000, 4000), 10)
    with pytest.raises(SegVolError, match="over this server's limit"):
        store.begin_upload(sid(2), big)


def test_upload_limit_and_chunk_order() -> None:
    clock = _Clock()
    store = _store(clock, max_upload_bytes=100)
    with pytest.raises(SegVolError, match="exceeds this server's limit"):
        store.begin_upload(sid(0), _header(size=101))
    store.begin_upload(sid(1), _header(size=20))
    with store.use(sid(1)) as s:
        with pytest.raises(SegVolError, match="out of order"):
            store.add_chunk(s, 1, b"x")
        assert not store.add_chunk(s, 0, b"x" * 10)
        with pytest.raises(SegVolError, match="exceeds the 20 bytes"):
            store.add_chunk(s, 1, b"x" * 11)


def test_requests_on_one_session_run_one_at_a_time() -> None:
    clock = _Clock()
    store = _store(clock)
    _open(store, sid(0))
    inside, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with store.use(sid(0)):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            threading.Event().wait(0.01)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 1


def test_handlers_refuse_malformed_requests() -> None:
    store = _store(_Clock())
    h = Handlers(store)
    with pytest.raises(SegVolError, match="'session' is missing"):
        h.segment({})
    with pytest.raises(SegVolError, match="32 lowercase hex"):
        h.segment({"session": np.array([b"nope"], dtype=object)})
    with pytest.raises(SegVolError, match="not valid JSON"):
        h.segment({"session": np.array([sid(1).encode()], dtype=object), "request": np.array([b"{"], dtype=object)})
    with pytest.raises(SegVolError, match="not served"):
        h.segment({"session": np.array([sid(1).encode()], dtype=object),
                   "request": np.array([b'{"probabilities": true}'], dtype=object)})
    with pytest.raises(SegVolError, match="reads no server-side paths"):
        h.open({"session": np.array([sid(1).encode()], dtype=object),
                "meta": np.array([W.to_json_bytes({"wire": W.WIRE_VERSION, "path": "x.nii"})], dtype=object)})


# -- wire version handshake ---------------------------------------------------------
@pytest.mark.parametrize("meta", [{"path": "x.nii"}, {"wire": W.WIRE_VERSION + 1, "chunk": 0}, {"wire": "1", "chunk": 0}])
def test_a_client_of_another_wire_version_gets_one_line(meta: dict) -> None:
    h = Handlers(_store(_Clock()))
    request = {"session": np.array([sid(1).encode()], dtype=object), "meta": np.array([W.to_json_bytes(meta)], dtype=object)}
    with pytest.raises(W.VersionMismatch, match="wire version"):
        h.open(request)
    try:
        served(h.open)([request])
    except Exception as exc:  # noqa: BLE001
        text = "".join(traceback.format_exception(None, exc, exc.__traceback__))
    assert text.startswith("segvol_rt.error[version]: the client speaks wire version ") and text.count("\n") == 1, text
    assert W.parse_error(text)[0] == "version"


# -- client ---------------------------------------------------------------------------------
def test_client_import_is_torch_and_backend_free() -> None:
    code = ("import sys, segvol_rt.client, segvol_rt.client.client, segvol_rt.app.remote\n"
            "bad = [m for m in ('torch', 'onnxruntime', 'segvol_rt.backends', 'segvol_rt.export', 'pytriton', 'cupy')"
            " if m in sys.modules]\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_geometry_rebuilt_from_the_crop_box_equals_the_runtime_s() -> None:
    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.pipeline.geometry import Geometry
    from segvol_rt.pipeline.preprocess import preprocess

    ph = make_phantom(3, shape=(70, 60, 20))
    pre = preprocess(ph.image.astype(np.float32), (32, 128, 128), affine=ph.affine)
    d, h, w = pre.image.shape
    crop_box = pre.geometry.box((0, 0, 0, d - 1, h - 1, w - 1), "crop", "model")
    assert Geometry.build(ph.image.shape, crop_box, (32, 128, 128)) == pre.geometry


# -- the serve command's checks -------------------------------------------------------------
def test_serve_options_are_checked_before_anything_starts() -> None:
    from pathlib import Path

    from segvol_rt.serve.server import ServeOptions, check_options, runtime_options

    art = Path("artifacts")
    with pytest.raises(SegVolError, match="not loopback.*API key"):
        check_options(ServeOptions(art, host="0.0.0.0"))
    with pytest.raises(SegVolError, match="16 to 1024 printable ASCII"):
        check_options(ServeOptions(art, host="10.1.2.3", api_key="short"))
    check_options(ServeOptions(art, host="0.0.0.0", api_key="k" * 16))
    check_options(ServeOptions(art, host="::1"))
    with pytest.raises(SegVolError, match="distinct"):
        check_options(ServeOptions(art, http_port=8000, grpc_port=8000))
    assert runtime_options(ServeOptions(art))["precision"] is None  # the backend's default
    assert runtime_options(ServeOptions(art, precision="fp16"))["precision"] == "fp16"


def test_serve_without_the_extra_names_it() -> None:
    pytest.importorskip("typer")
    if __import__("importlib").util.find_spec("pytriton") is not None:
        pytest.skip("pytriton is installed in this environment")
    from tests.support.serving import DEMO_ARTIFACTS

    out = subprocess.run([sys.executable, "-m", "segvol_rt", "serve", "--artifacts", str(DEMO_ARTIFACTS)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "segvol-rt[serve]" in out.stderr
