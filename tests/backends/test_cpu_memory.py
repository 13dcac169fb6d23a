"""What the CPU backends do to keep the process's resident set low, on tiny
graphs: the mapped weight pages given back (:mod:`segvol_rt.backends.resident`),
ONNX Runtime's arena shrunk after each run, OpenVINO's decoder memory released
after each run - each without changing a bit of what the graphs compute. The
full-size peak RSS is held by tests/backends/test_openvino.py (slow)."""

from __future__ import annotations

import mmap
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.backends import resident as M
from segvol_rt.io import spec as S

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise are Linux's")

SMAPS = """\
7f0000000000-7f0000004000 r--p 00000000 08:01 42                         /models/a.onnx
Size:                 16 kB
Rss:                  16 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
7f0000004000-7f0000008000 rw-p 00000000 08:01 42                         /models/a.onnx
Anonymous:             0 kB
7f0000008000-7f000000c000 r--p 00000000 08:01 43                         /models/b.onnx
Anonymous:             4 kB
7f000000c000-7f0000010000 rw-p 00000000 00:00 0
Anonymous:            16 kB
7f0000010000-7f0000014000 r--p 00000000 08:01 44                         /models/other.bin
Anonymous:             0 kB
"""


def test_only_read_only_mappings_without_private_pages_of_the_named_files_are_dropped(monkeypatch):
    maps = M.file_mappings(SMAPS)
    assert [(m.path, m.perms, m.anonymous_kib) for m in maps] == [
        ("/models/a.onnx", "r--p", 0), ("/models/a.onnx", "rw-p", 0), ("/models/b.onnx", "r--p", 4),
        ("/models/other.bin", "r--p", 0)]
    monkeypatch.setattr(M.Path, "resolve", lambda self: self)  # the paths above exist nowhere
    chosen = M.droppable(maps, [Path("/models/a.onnx"), Path("/models/b.onnx")])
    assert [(m.start, m.end) for m in chosen] == [(0x7F0000000000, 0x7F0000004000)]  # writable, copy-on-write: kept


def _resident_kib(path: Path) -> int:
    text = Path("/proc/self/smaps").read_text()
    total, inside = 0, False
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5] == str(path.resolve())
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def assert_dropped_pages_leave_the_resident_set(drop: Callable[[list[Path]], int], tmp_path: Path) -> None:
    """``drop([path])`` on a mapped, fully touched 8 MiB file gives its pages back (at least the
    file's bytes advised, under a quarter still resident) and the mapping reads back the same."""
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    data.tofile(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
        mapped = np.frombuffer(view, np.uint8)
        assert int(mapped.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page touched
        before = _resident_kib(path)
        assert drop([path]) >= data.nbytes
        assert _resident_kib(path) < before // 4
        np.testing.assert_array_equal(mapped, data)  # read back from the file
        del mapped


@linux_only
def test_dropped_pages_leave_the_resident_set_and_read_back_the_same(tmp_path):
    assert_dropped_pages_leave_the_resident_set(M.drop_mapped_pages, tmp_path)


def test_nothing_named_nothing_dropped():
    assert M.drop_mapped_pages([]) == 0


# -- ONNX Runtime: the arena shrunk at the end of each run ------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
    from tests.support.tiny_artifacts import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


def test_onnxruntime_shrinks_its_cpu_arena_after_every_run_by_default():
    ort = pytest.importorskip("onnxruntime")
    from segvol_rt.backends import onnxruntime as B

    options = B.run_options(ort)
    assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert B.run_options(ort, B.SessionMemory()) is None  # ONNX Runtime's own defaults (the CUDA sessions')
    assert B.run_options(ort, B.SessionMemory(arena=False, shrink_arena=True)) is None  # no arena to shrink


def test_onnxruntime_sessions_share_one_arena_registered_once():
    ort = pytest.importorskip("onnxruntime")
    from segvol_rt.backends import onnxruntime as B

    first, second = B.session_options(ort, 1), B.session_options(ort, 1)  # a second registration would raise
    assert first.get_session_config_entry("session.use_env_allocators") == "1" == \
        second.get_session_config_entry("session.use_env_allocators")
    with pytest.raises(RuntimeError):  # ONNX Runtime's own defaults (the CUDA sessions'): no shared arena
        B.session_options(ort, 1, B.SessionMemory()).get_session_config_entry("session.use_env_allocators")


def test_onnxruntime_shrinking_changes_no_bit(tiny):
    pytest.importorskip("onnxruntime")
    from segvol_rt.backends.onnxruntime import SESSION_MEMORY, OnnxRuntimeBackend
    from segvol_rt.io.artifacts import Artifacts

    artifacts = Artifacts.load(tiny)
    shrinking = OnnxRuntimeBackend(artifacts, threads=1)
    keeping = OnnxRuntimeBackend(artifacts, threads=1, memory=SESSION_MEMORY.__class__(mem_pattern=False))
    assert shrinking._run_options is not None and keeping._run_options is None
    D, H, W = artifacts.config.spatial_size
    image = np.random.default_rng(0).random((1, 1, D, H, W), dtype=np.float32)
    for _ in range(2):  # the second run allocates again what the first gave back
        np.testing.assert_array_equal(shrinking.encode_image(image), keeping.encode_image(image))


# -- OpenVINO: the mapped weights given back, the decoder's memory released --------------------------


def _decoder_feeds(backend, n=1):
    spec = backend.specs[S.PROMPT_DECODER]
    emb_shape = [n if a == "B" else s for a, s in zip(spec.inputs[0].axes, spec.inputs[0].shape)]
    rng = np.random.default_rng(1)
    return (rng.random(emb_shape, dtype=np.float32), rng.random((n, 3, 3), dtype=np.float32),
            np.zeros((n, 3), np.int32), rng.random((n, emb_shape[1]), dtype=np.float32))


def test_openvino_gives_back_the_mapped_weights_and_computes_the_same(tiny, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from segvol_rt.backends import openvino as OV
    from segvol_rt.io.artifacts import Artifacts

    dropped: list[list[Path]] = []
    real = OV.drop_mapped_pages
    monkeypatch.setattr(OV, "drop_mapped_pages", lambda files: dropped.append(list(files)) or real(files))
    artifacts = Artifacts.load(tiny)
    backend = OV.OpenVinoBackend(artifacts, cache_dir=tmp_path / "ov")
    assert [d[0] for d in dropped] == [artifacts.graph_path(g) for g in S.GRAPH_NAMES if g not in OV.LAZY_GRAPHS]
    monkeypatch.setattr(OV, "drop_mapped_pages", lambda files: 0)  # the same backend, nothing given back
    kept = OV.OpenVinoBackend(artifacts, cache_dir=tmp_path / "ov")
    feeds = _decoder_feeds(backend)
    np.testing.assert_array_equal(backend.decode(*feeds), kept.decode(*feeds))


def test_openvino_gives_back_a_large_image_encoders_pages_after_every_run(tiny, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from segvol_rt.backends import openvino as OV
    from segvol_rt.io.artifacts import Artifacts

    artifacts = Artifacts.load(tiny)
    image = np.random.default_rng(2).random((1, 1, *artifacts.config.spatial_size), dtype=np.float32)
    for bound, after_run in ((0, 1), (1 << 40, 0)):  # every file is "large" / none is (the tiny model's)
        monkeypatch.setattr(OV, "DROP_PAGES_AFTER_RUN_BYTES", bound)
        backend = OV.OpenVinoBackend(artifacts, cache_dir=tmp_path / "ov")
        dropped: list[list[Path]] = []
        monkeypatch.setattr(OV, "drop_mapped_pages", lambda files, sink=dropped: sink.append(list(files)) or 0)
        backend.run(S.IMAGE_ENCODER, {"image": image})
        assert len(dropped) == after_run
        if after_run:  # every graph file and cached blob: a run may read any of them back
            assert set(artifacts.graph_path(g) for g in S.GRAPH_NAMES) <= set(dropped[0])
        backend.run(S.PROMPT_DECODER, dict(zip(backend.specs[S.PROMPT_DECODER].input_names, _decoder_feeds(backend))))
        assert len(dropped) == after_run  # the decoder's runs are left alone (0.07 s each, measured)
        monkeypatch.undo()
        backend.close()


def test_openvino_releases_a_graphs_memory_before_another_runs_and_at_rest(tiny, tmp_path):
    """A graph's consecutive runs keep its memory (the decoder's, 0.05 s per call to fault
    in again); another graph's run and rest() give it back first; a model another thread's
    run holds is left alone, without an error, and released later."""
    pytest.importorskip("openvino")
    from segvol_rt.backends import openvino as OV
    from segvol_rt.io.artifacts import Artifacts

    assert frozenset(S.GRAPH_NAMES) == OV.RELEASED_BETWEEN_GRAPHS
    backend = OV.OpenVinoBackend(Artifacts.load(tiny), cache_dir=tmp_path / "ov")
    calls: list[str] = []
    real_release = backend._release
    backend._release = lambda graph: (calls.append(graph), real_release(graph))[1]  # type: ignore[method-assign]
    feeds = _decoder_feeds(backend, 2)
    image = np.random.default_rng(3).random((1, 1, *backend.specs[S.IMAGE_ENCODER].inputs[0].shape[2:]), dtype=np.float32)
    first = backend.decode(*feeds)
    np.testing.assert_array_equal(backend.decode(*feeds), first)
    assert calls == []  # consecutive decoder runs
    backend.encode_image(image)
    assert calls == [S.PROMPT_DECODER]  # before the encoder ran
    np.testing.assert_array_equal(backend.decode(*feeds), first)  # after a release, the same
    assert calls == [S.PROMPT_DECODER, S.IMAGE_ENCODER]
    backend.rest()
    assert calls == [S.PROMPT_DECODER, S.IMAGE_ENCODER, S.PROMPT_DECODER]
    backend.rest()  # nothing held
    assert len(calls) == 3

    class Busy:
        def release_memory(self):
            raise RuntimeError("Attempt to call release_memory() on a compiled model in a busy state")

    backend.decode(*feeds)
    real = backend.compiled[S.PROMPT_DECODER]
    backend.compiled[S.PROMPT_DECODER] = Busy()
    backend.rest()  # another thread's run holds it: no error, still held
    assert backend._held == {S.PROMPT_DECODER}
    backend.compiled[S.PROMPT_DECODER] = real
    backend.rest()
    assert backend._held == set()
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(backend.decode(*feeds))) for _ in range(3)]
    threads.append(threading.Thread(target=lambda: backend.encode_image(image)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 3 and all(np.array_equal(o, first) for o in outs)


def test_no_graph_holds_its_run_memory_after_a_request_or_under_the_blending(tiny, tmp_path, monkeypatch):
    """Between requests no graph's run memory is kept (a server's sessions wait there), and
    the decoder's is given back after each decoding stage, before the upsampling and
    blending allocate: the peak stays where releasing after every run had it."""
    pytest.importorskip("openvino")
    from segvol_rt.backends import openvino as OV
    from segvol_rt.pipeline import zoom as Z
    from segvol_rt.pipeline.flow import RequestFlow
    from segvol_rt.runtime import SegVolRuntime

    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path))
    rt = SegVolRuntime.load(tiny, backend="openvino", device="cpu")
    backend = rt.backend
    assert isinstance(backend, OV.OpenVinoBackend)
    held_at_blend: list[set[str]] = []
    real_blend = Z.blend
    monkeypatch.setattr(Z, "blend", lambda *a, **k: (held_at_blend.append(set(backend._held)), real_blend(*a, **k))[1])
    held_at_plan: list[set[str]] = []  # the coarse upsampling, after the zoom-out decoding
    real_plan = RequestFlow._plan
    monkeypatch.setattr(RequestFlow, "_plan",
                        lambda self, *a, **k: (held_at_plan.append(set(backend._held)), real_plan(self, *a, **k))[1])
    rt.set_volume(np.random.default_rng(0).random((140, 150, 40), dtype=np.float32) * 400 - 200)
    rt.segment(text="liver")
    assert backend._held == set()
    rt.segment_many([{"text": "liver"}, {"text": "a free phrase", "zoom_in": False}, {"text": "spleen"}])
    assert backend._held == set()
    assert held_at_blend and all(h == set() for h in held_at_blend)
    assert held_at_plan and all(h == set() for h in held_at_plan)
    rt.text_embeddings(["another phrase"])
    assert backend._held == set()


def test_openvino_first_compile_is_replaced_by_its_mapped_blob(tiny, tmp_path):
    """A cold cache: the compile writes its blob, and the backend keeps the model loaded
    from that blob (mapped weights it can give back), computing the same."""
    pytest.importorskip("openvino")
    from segvol_rt.backends import openvino as OV
    from segvol_rt.io.artifacts import Artifacts

    cold = OV.OpenVinoBackend(Artifacts.load(tiny), cache_dir=tmp_path / "ov")
    assert all(c.get_property("LOADED_FROM_CACHE") for c in cold.compiled.values())
    warm = OV.OpenVinoBackend(Artifacts.load(tiny), cache_dir=tmp_path / "ov")
    feeds = _decoder_feeds(cold)
    np.testing.assert_array_equal(cold.decode(*feeds), warm.decode(*feeds))
