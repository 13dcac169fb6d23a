"""Bounded memory: the LRU-by-bytes cache (eviction order, pins, stats), the
runtime's window and phrase caches within ``cache_bytes`` /
``text_cache_bytes`` with unchanged results, and - on the shipped demo model -
a long session (100 segment() calls with new phrases and boxes, 20 scans)
whose RSS stays flat within the cache bounds."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.pipeline import caches as C
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.caches import ByteLRU


def _arr(kib: int) -> np.ndarray:
    return np.zeros(kib * 256, np.float32)  # kib KiB


# -- ByteLRU -----------------------------------------------------------------------


def test_evicts_least_recently_used_first_down_to_the_bound():
    lru: ByteLRU[str] = ByteLRU(3 * 1024)
    for k in "abc":
        lru.put(k, _arr(1))
    assert lru.get("a") is not None  # a is now the most recently used: b goes first
    lru.put("d", _arr(1))
    assert list(lru) == ["c", "a", "d"] and lru.nbytes == 3 * 1024 and lru.evictions == 1
    lru.put("e", _arr(2))  # needs two entries' room: c then a
    assert list(lru) == ["d", "e"] and lru.nbytes == 3 * 1024 and lru.evictions == 3


def test_reading_the_view_or_membership_does_not_count_as_use():
    lru: ByteLRU[str] = ByteLRU(2 * 1024)
    lru.put("a", _arr(1))
    lru.put("b", _arr(1))
    assert "a" in lru and lru.view()["a"].nbytes == 1024
    lru.put("c", _arr(1))
    assert list(lru) == ["b", "c"]
    with pytest.raises(TypeError):
        lru.view()["x"] = _arr(1)  # read-only


def test_replacing_a_key_counts_its_bytes_once():
    lru: ByteLRU[str] = ByteLRU(10 * 1024)
    lru.put("a", _arr(4))
    lru.put("a", _arr(2))
    assert len(lru) == 1 and lru.nbytes == 2 * 1024 and lru.peak_bytes == 4 * 1024


def test_pinned_entries_survive_until_the_pin_ends():
    lru: ByteLRU[str] = ByteLRU(2 * 1024)
    lru.put("old", _arr(1))
    with lru.pinned(["x", "y", "z"]):  # keys inserted later are pinned too
        for k in "xyz":
            lru.put(k, _arr(1))
        assert set(lru) == {"x", "y", "z"}  # "old" made room; the pinned three exceed the bound
        assert lru.nbytes == 3 * 1024 > lru.max_bytes
        assert lru.get("x") is not None  # x used last: y goes at the end of the pin
    assert list(lru) == ["z", "x"] and lru.nbytes == 2 * 1024
    assert lru.evictions == 2 and lru.peak_bytes == 3 * 1024


def test_pins_nest():
    lru: ByteLRU[str] = ByteLRU(0)
    with lru.pinned(["a"]):
        lru.put("a", _arr(1))
        with lru.pinned(["a", "b"]):
            lru.put("b", _arr(1))
        assert list(lru) == ["a"]  # b's pin ended; a is still pinned by the outer block
    assert len(lru) == 0 and lru.nbytes == 0 and lru.evictions == 2


def test_an_entry_larger_than_the_bound_is_kept_only_while_pinned():
    lru: ByteLRU[str] = ByteLRU(1024)
    lru.put("big", _arr(4))
    assert len(lru) == 0 and lru.evictions == 1
    with lru.pinned(["big"]):
        lru.put("big", _arr(4))
        assert lru.get("big") is not None
    assert len(lru) == 0


def test_stats_and_clear():
    lru: ByteLRU[str] = ByteLRU(4096)
    lru.put("a", _arr(1))
    lru.get("a")
    lru.get("nope")
    lru.put("b", "not an array")  # no .nbytes: counted as 0 bytes
    assert lru.stats() == {"entries": 2, "bytes": 1024, "max_bytes": 4096, "peak_bytes": 1024,
                           "evictions": 0, "hits": 1, "misses": 1}
    lru.clear()
    assert lru.stats()["entries"] == 0 and lru.stats()["bytes"] == 0 and lru.evictions == 0
    with pytest.raises(SegVolError, match="cache bound"):
        ByteLRU(-1)


def test_nbytes_of_any_array_like():
    assert C.nbytes(np.zeros((2, 3), np.float64)) == 48
    assert C.nbytes(None) == 0


class _Encoder:
    """A Graphs stand-in whose image embedding of a window is its mean, (1, 2, 2, 2)."""

    xp = np

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode_image(self, image):
        self.batches.append(image.shape[0])
        return np.broadcast_to(image.mean(axis=(1, 2, 3, 4))[:, None, None, None, None], (image.shape[0], 1, 2, 2, 2)).copy()


def test_embedding_cache_owns_each_row_of_a_batch():
    """A cached row is not a view of its batch: evicting its siblings frees them."""
    cache = Z.EmbeddingCache(max_bytes=10_000)
    image = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    keys = [(d, 0, 0, d + 2, 4, 4, d, 0, 0, d + 2, 4, 4) for d in range(3)]
    encoder = _Encoder()
    cache.ensure(encoder, image, keys, max_batch=3)
    assert encoder.batches == [3] and cache.windows_encoded == 3
    assert all(e.base is None or e.base.nbytes == e.nbytes for e in cache.embeddings.values())
    cache.ensure(encoder, image, keys[:2], max_batch=3)  # cached: no encoder call
    assert encoder.batches == [3] and cache.store.hits == 2


# -- the runtime's caches (tiny random-weight artifacts) ----------------------------------

SCAN = (150, 160, 40)  # crop (40, 160, 150): 6 zoom-in windows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
    from tests.support.tiny_artifacts import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


@pytest.fixture(scope="module")
def scan():
    return (np.random.default_rng(5).random(SCAN) * 1000 - 500).astype(np.float32)


def _runtime(tiny, scan, **bounds):
    from segvol_rt.runtime import SegVolRuntime

    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu", **bounds)
    rt.set_volume(scan)
    return rt


def test_a_call_whose_windows_exceed_the_bound_still_decodes_them_all(tiny, scan):
    free = _runtime(tiny, scan)
    want = free.segment(text="liver", keep_logits=True)
    window = free.stats["window_cache"]["bytes"] // want.n_windows
    assert want.n_windows == 6 and free.stats["window_cache"]["entries"] == 6

    rt = _runtime(tiny, scan, cache_bytes=3 * window)
    got = rt.segment(text="liver", keep_logits=True)
    np.testing.assert_array_equal(got.crop_logits, want.crop_logits)  # a bound never changes a result
    stats = rt.stats["window_cache"]
    assert stats["entries"] == 3 and stats["bytes"] == 3 * window and stats["evictions"] == 3
    assert stats["peak_bytes"] == 6 * window  # all six held while the call ran
    rt.segment(text="liver")
    assert rt.stats["windows_encoded"] == 6 + 3  # the three evicted ones, again
    assert rt.stats["window_cache"]["bytes"] <= 3 * window


def test_cache_bytes_zero_keeps_nothing_between_calls(tiny, scan):
    rt = _runtime(tiny, scan, cache_bytes=0, text_cache_bytes=0)
    first = rt.segment(text="a free phrase")
    again = rt.segment(text="a free phrase")
    np.testing.assert_array_equal(first.mask, again.mask)
    assert rt.stats["windows_encoded"] == 12 and rt.stats["window_cache"]["bytes"] == 0
    assert rt.stats["text_cache"]["entries"] == 0 and rt.stats["text_cache"]["misses"] == 2


def test_phrase_cache_is_bounded_and_least_recently_used_out(tiny, scan):
    rt = _runtime(tiny, scan)
    row = rt.text_embeddings(["phrase zero"])[0]
    rt = _runtime(tiny, scan, text_cache_bytes=2 * row.nbytes)
    a, b = rt.text_embeddings(["phrase zero", "phrase one"])
    np.testing.assert_array_equal(a, row)
    rt.text_embeddings(["phrase zero"])  # used: phrase one is now the oldest
    rt.text_embeddings(["phrase two"])
    assert list(rt._text_cache) == ["phrase zero", "phrase two"]
    got = rt.text_embeddings(["phrase one", "liver"])  # a table name is never cached
    np.testing.assert_array_equal(got[0], b)  # re-encoded after its eviction: the same row
    assert list(rt._text_cache) == ["phrase two", "phrase one"]
    assert rt.stats["text_cache"] == {"entries": 2, "bytes": 2 * row.nbytes, "max_bytes": 2 * row.nbytes,
                                      "peak_bytes": 3 * row.nbytes, "evictions": 2, "hits": 1, "misses": 4}


def test_stats_report_both_caches_with_and_without_a_volume(tiny, scan):
    rt = _runtime(tiny, scan, cache_bytes=12345, text_cache_bytes=678)
    rt.release_volume()
    stats = rt.stats
    assert stats["window_cache"]["max_bytes"] == 12345 and stats["window_cache"]["entries"] == 0
    assert stats["text_cache"]["max_bytes"] == 678
    rt.set_volume(scan)
    assert rt.stats["window_cache"]["max_bytes"] == 12345
    rt.clear_window_cache()
    assert rt.stats["window_cache"]["max_bytes"] == 12345


def _traced_at_zoom_in(rt, requests, monkeypatch) -> int:
    """tracemalloc's bytes in use when the call's zoom-in starts (numpy reports its arrays)."""
    import tracemalloc

    seen: list[int] = []
    inner = Z.zoom_in

    def spy(*args, **kwargs):
        seen.append(tracemalloc.get_traced_memory()[0])
        return inner(*args, **kwargs)

    monkeypatch.setattr(Z, "zoom_in", spy)
    tracemalloc.start()
    try:
        results = rt.segment_many(requests)
    finally:
        tracemalloc.stop()
        monkeypatch.setattr(Z, "zoom_in", inner)
    assert len(seen) == 1 and all(r.zoom_in_applied for r in results)
    return seen[0]


def test_the_zoom_in_holds_one_targets_crop_logits_whatever_the_targets(tiny, scan, monkeypatch):
    # each target's crop logits are a crop-sized float32 volume (gigabytes for eight targets
    # of a long scan): the others are computed again when their target finishes
    rt = _runtime(tiny, scan)
    crop_bytes = rt.crop_image.nbytes
    phrases = ["liver", "spleen", "aorta", "kidney", "pancreas", "stomach"]
    one = _traced_at_zoom_in(rt, [{"text": "liver"}], monkeypatch)
    rt.clear_window_cache()
    six = _traced_at_zoom_in(rt, [{"text": t} for t in phrases], monkeypatch)
    assert six - one < crop_bytes // 2, (six - one, crop_bytes)
    # and the results are those of the targets run one at a time, kept logits included
    together = rt.segment_many([{"text": t, "keep_logits": True} for t in phrases])
    for t, got in zip(phrases, together):
        alone = rt.segment(text=t, keep_logits=True)
        np.testing.assert_array_equal(got.mask, alone.mask)
        np.testing.assert_array_equal(got.crop_logits, alone.crop_logits)


def _set_volume_peak(rt, volume, **kwargs) -> int:
    """tracemalloc's peak bytes over ``rt.set_volume(volume, **kwargs)``."""
    import tracemalloc

    tracemalloc.start()
    try:
        rt.set_volume(volume, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_set_volume_normalises_a_scan_it_may_overwrite_in_place(tiny, scan):
    # the one-shot CLI hands its scan over: no second scan-sized float32 array (200 MiB at 512x512x200)
    rt = _runtime(tiny, scan)
    theirs = np.asfortranarray(scan)  # nibabel's order: used as it is, no conversion
    kept = theirs.copy(order="F")
    copied = _set_volume_peak(rt, theirs)
    np.testing.assert_array_equal(theirs, kept)  # by default the caller's array is left alone
    want = rt.segment(text="liver").mask
    in_place = _set_volume_peak(rt, theirs, overwrite_input=True)
    assert copied - in_place > 0.75 * theirs.nbytes, (copied, in_place)  # a scan-sized array less at the peak
    assert not np.array_equal(theirs, kept) and theirs.min() >= 0 and theirs.max() <= 1  # now the normalised scan
    np.testing.assert_array_equal(rt.segment(text="liver").mask, want)
    c_order = np.ascontiguousarray(kept)  # read into a Fortran-ordered copy: that copy is normalised, not this
    before = c_order.copy()
    assert _set_volume_peak(rt, c_order, overwrite_input=False) < copied + 0.25 * theirs.nbytes
    np.testing.assert_array_equal(c_order, before)
    np.testing.assert_array_equal(rt.segment(text="liver").mask, want)
    with pytest.raises(SegVolError, match="overwrite_input"):
        rt.set_volume(kept, overwrite_input="yes")


# -- a long session on the demo model: RSS stays flat -------------------------------------

CACHE_BYTES = 2 << 20  # about ten of the demo model's 192 KB windows: the loop must evict
TEXT_CACHE_BYTES = 16 << 10  # about 40 of its 384-byte phrases
RSS_SLACK = 40e6  # allocator and ONNX Runtime arena noise seen here: up to ~12 MB
SHAPE = (160, 160, 64)  # larger than the demo window (32, 128, 128) in-plane: ROIs and windows vary


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _boxes(labels: np.ndarray, rng: np.random.Generator, n: int) -> list[list[int]]:
    """The organs' bounding box, then n - 1 random boxes inside it (scan voxels, inclusive)."""
    nz = np.argwhere(labels > 0)
    a, b = nz.min(axis=0), nz.max(axis=0)
    out = [[*map(int, a), *map(int, b)]]
    for _ in range(n - 1):
        lo = rng.integers(a, b - 8)
        hi = np.minimum(lo + rng.integers(6, 40, 3), b)
        out.append([*map(int, lo), *map(int, hi)])
    return out


class _Alive:
    """Weak references to every array put in a ByteLRU: the bytes still alive are
    what the runtime really holds, whatever the allocator keeps in RSS."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.refs: list[weakref.ref[np.ndarray]] = []
        put = ByteLRU.put

        def tracked(lru, key, value):
            self.refs.append(weakref.ref(value))
            put(lru, key, value)

        monkeypatch.setattr(ByteLRU, "put", tracked)

    def nbytes(self) -> int:
        gc.collect()
        return sum(a.nbytes for a in (r() for r in self.refs) if a is not None)


def _within_bounds(rt) -> None:
    windows, texts = rt.stats["window_cache"], rt.stats["text_cache"]
    assert windows["bytes"] <= CACHE_BYTES and texts["bytes"] <= TEXT_CACHE_BYTES


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux)")
def test_a_long_session_keeps_rss_flat_within_the_cache_bounds(fresh_demo_artifacts, monkeypatch):
    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.runtime import SegVolRuntime

    alive = _Alive(monkeypatch)
    rng = np.random.default_rng(0)
    rt = SegVolRuntime.load(fresh_demo_artifacts, backend="onnxruntime", device="cpu",
                            cache_bytes=CACHE_BYTES, text_cache_bytes=TEXT_CACHE_BYTES)
    start = time.perf_counter()
    ph = make_phantom(1, SHAPE)
    # warm-up: ONNX Runtime's arena and the allocator reach their working size
    # on the largest ROI and a few scans
    for seed in (2, 3, 1):
        warm = ph if seed == 1 else make_phantom(seed, SHAPE)
        rt.set_volume(warm.image, warm.affine)
        for i, box in enumerate(_boxes(warm.labels, rng, 3)):
            rt.segment(text=f"warm-up phrase {seed} {i}", box=box, probabilities=True)
    base = _rss()
    evictions = 0
    for i, box in enumerate(_boxes(ph.labels, rng, 100)):
        rt.segment(text=f"a new phrase number {i}", box=box)
        _within_bounds(rt)
    evictions += rt.stats["window_cache"]["evictions"]
    after_boxes = _rss()
    for s in range(20):
        scan = make_phantom(100 + s, SHAPE)
        rt.set_volume(scan.image, scan.affine)
        rt.segment(text=f"scan {s}", box=_boxes(scan.labels, rng, 1)[0])
        _within_bounds(rt)
    after_scans = _rss()
    held = alive.nbytes()
    print(f"demo model, {SHAPE}: RSS +{(after_boxes - base) / 1e6:.1f} MB over 100 segment() calls, "
          f"+{(after_scans - after_boxes) / 1e6:.1f} MB over 20 scans; embeddings alive {held / 1e6:.2f} MB; "
          f"{evictions} window evictions; {time.perf_counter() - start:.0f} s")
    assert evictions > 50 and rt.stats["text_cache"]["evictions"] > 50  # the bounds were exercised
    assert held <= CACHE_BYTES + TEXT_CACHE_BYTES  # evicted and old scans' embeddings are freed
    bound = CACHE_BYTES + TEXT_CACHE_BYTES + RSS_SLACK
    assert after_boxes - base < bound and after_scans - base < bound
