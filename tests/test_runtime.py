"""SegVolRuntime: the public API, the window cache and batching, backend
selection (reasons and errors)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")  # the artifacts are exported from a torch model

from segvol_rt.backends import cuda_common, registry, select  # noqa: E402
from segvol_rt.backends.base import Backend  # noqa: E402
from segvol_rt.errors import MissingDependencyError, SegVolError  # noqa: E402
from segvol_rt.io import spec as S  # noqa: E402
from segvol_rt.io.artifacts import Artifacts  # noqa: E402
from segvol_rt.runtime import Request, SegVolRuntime  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

SCAN = (150, 160, 40)  # crop (40, 160, 150): 6 zoom-in windows
BOX = "30,40,8,110,120,30"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


@pytest.fixture(scope="module")
def scan():
    return (np.random.default_rng(5).random(SCAN) * 1000 - 500).astype(np.float32)


@pytest.fixture
def rt(tiny, scan):
    runtime = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    runtime.set_volume(scan)
    return runtime


class CountingBackend(Backend):
    """Wraps a backend and counts graph calls and encoded windows."""

    def __init__(self, inner: Backend):
        super().__init__(inner.specs)
        self.inner = inner
        self.name, self.device = inner.name, inner.device
        self.calls = {g: 0 for g in S.GRAPH_NAMES}
        self.images = 0

    def _run(self, graph, feeds):
        self.calls[graph] += 1
        if graph == S.IMAGE_ENCODER:
            self.images += feeds["image"].shape[0]
        return self.inner._run(graph, feeds)


def counting_runtime(tiny, scan) -> tuple[SegVolRuntime, CountingBackend]:
    """An ORT CPU runtime on ``scan`` whose backend counts graph calls."""
    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    counting = CountingBackend(rt.backend)
    rt.backend = counting
    rt.set_volume(scan)
    return rt, counting


# -- the API -------------------------------------------------------------------------


def test_segment_result(rt):
    seg = rt.segment(text="liver", probabilities=True)
    assert seg.mask.shape == SCAN and seg.mask.dtype == np.uint8
    assert set(np.unique(seg.mask)) <= {0, 1} and seg.mask.any()
    assert seg.probabilities.shape == SCAN and seg.probabilities.dtype == np.float32
    # the mask is torch's rule on the logits (ops.positive_mask); numpy's float32 exp (SIMD
    # or not, with the array's alignment) is within a few ulp of it, so voxels whose
    # probability is within rounding of 0.5 may fall on either side
    off = seg.mask != (seg.probabilities > 0.5)
    assert np.all(np.abs(seg.probabilities[off] - 0.5) <= 4 * 2.0**-24)
    assert seg.zoom_in_applied and not seg.no_foreground and seg.n_windows == 6
    assert seg.roi is not None and seg.crop_logits is None
    for stage in ("encode_zoom_out", "decode_zoom_out", "encode_windows", "decode_windows", "blend", "postprocess"):
        assert stage in seg.timings
    assert "encode_windows" in rt.stats["timings"]


def test_zoom_out_only(rt):
    seg = rt.segment(box=BOX, zoom_in=False)
    assert not seg.zoom_in_applied and seg.n_windows == 0 and seg.roi is None and seg.mask.any()


def test_segment_many_matches_single_calls(rt):
    targets = ["liver", {"box": BOX}, Request(text="kidney", points="60,70,20", seed=3)]
    many = rt.segment_many(targets)
    for target, got in zip(targets, many):
        req = Request.of(target)
        one = rt.segment(req.text, req.box, req.points, seed=req.seed)
        assert np.array_equal(one.mask, got.mask)


def test_window_cache_encodes_shared_windows_once(tiny, scan):
    rt, counting = counting_runtime(tiny, scan)
    counting.window_batch = 8  # a GPU's choice, capped to the spec's max (4)
    a, b = rt.segment_many(["liver", {"box": BOX}])
    assert a.roi == b.roi and a.n_windows == b.n_windows == 6  # same ROI -> same windows
    # zoom-out image once, the 6 shared windows once, in batches of the spec's max (4)
    assert counting.images == 1 + 6
    assert counting.calls[S.IMAGE_ENCODER] == 1 + 2
    assert rt.stats["windows_encoded"] == 6 and rt.stats["encoder_calls"] == 2
    rt.segment(text="spleen")  # a later target reuses the cache, and the zoom-out embedding
    assert counting.images == 7
    rt.set_volume(scan)  # a new volume clears it
    rt.segment(text="spleen")
    assert counting.images == 14


def test_text_embeddings_table_and_encoder(rt, tiny):
    counting = CountingBackend(rt.backend)
    rt.backend = counting
    names, table = Artifacts.load(tiny[0]).text_table()
    liver = names.index("liver")
    got = rt.text_embeddings(["  Liver ", "a free phrase", "A  free phrase"])
    np.testing.assert_array_equal(got[0], table[liver])
    assert counting.calls[S.TEXT_ENCODER] == 1  # one phrase, encoded once
    np.testing.assert_array_equal(got[1], got[2])


def test_no_foreground_keeps_coarse_result(tiny, scan):
    class Negative(Backend):
        name = "fake"

        def _run(self, graph, feeds):
            b = next(iter(feeds.values())).shape[0]
            if graph == S.IMAGE_ENCODER:
                return {"image_embedding": np.zeros((b, 32, 4, 4, 4), np.float32)}
            if graph == S.TEXT_ENCODER:
                return {"text_embedding": np.zeros((b, 32), np.float32)}
            return {"low_res_logits": np.full((b, 1, 16, 16, 16), -1.0, np.float32)}

    art = Artifacts.load(tiny[0])
    rt = SegVolRuntime(art, Negative(art.specs), "test")
    rt.set_volume(scan)
    seg = rt.segment(text="liver")
    assert seg.no_foreground and not seg.zoom_in_applied and seg.roi is None and not seg.mask.any()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "at least one prompt"),
        ({"box": "0,0,0,150,10,10"}, "outside the scan"),
        ({"box": "5,5,5,4,10,10"}, "empty"),
        ({"points": "1,2"}, "i,j,k"),
        ({"points": ";".join(["10,10,10"] * 17)}, "at most 16"),
        ({"text": " "}, "empty"),
    ],
)
def test_prompt_errors(rt, kwargs, message):
    with pytest.raises(SegVolError, match=message):
        rt.segment(**kwargs)


def test_segment_needs_a_volume(tiny):
    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    with pytest.raises(SegVolError, match="set_volume"):
        rt.segment(text="liver")


def test_runtime_does_not_import_torch(tiny):
    code = (
        "import sys, numpy as np; from segvol_rt import SegVolRuntime;"
        f"rt = SegVolRuntime.load({str(tiny[0])!r}, backend='auto', device='cpu');"
        f"rt.set_volume(np.random.default_rng(0).random({SCAN}).astype('float32'));"
        "rt.segment(text='a free phrase', box='30,40,8,110,120,30');"
        "print(rt.backend.name, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["onnxruntime", "False"]


# -- backends ------------------------------------------------------------------------


def test_auto_prefers_onnxruntime_cpu_without_gpu(tiny, monkeypatch):
    monkeypatch.setattr(cuda_common, "gpu_problem", lambda: "no CUDA device")
    backend, reason = select.open_backend(Artifacts.load(tiny[0]))
    assert (backend.name, backend.device) == ("onnxruntime", "cpu")
    assert reason == "onnxruntime on CPU (fp32): no CUDA device"


def test_auto_says_why_not_tensorrt(tiny, monkeypatch):
    """With a GPU but no engines, TensorRT is skipped with its reason."""
    monkeypatch.setattr(cuda_common, "gpu_problem", lambda: None)
    ort = registry.entry("onnxruntime")
    monkeypatch.setitem(registry.REGISTRY, "onnxruntime", dataclasses.replace(ort, open=_fail_on_cuda(ort.open)))
    backend, reason = select.open_backend(Artifacts.load(tiny[0]))
    assert backend.name == "onnxruntime" and backend.device == "cpu"
    assert "no TensorRT engines" in reason and "onnxruntime (cuda)" in reason


def _fail_on_cuda(opener):
    def wrapped(artifacts, device, **kw):
        if device == "cuda":
            raise SegVolError("no CUDAExecutionProvider (test)")
        return opener(artifacts, device, **kw)

    return wrapped


def test_auto_falls_back_to_torch(tiny, monkeypatch):
    def broken(*_a, **_k):
        raise SegVolError("onnxruntime is broken (test)")

    monkeypatch.setattr(cuda_common, "gpu_problem", lambda: "no CUDA device")
    ort = registry.entry("onnxruntime")
    monkeypatch.setitem(registry.REGISTRY, "onnxruntime", dataclasses.replace(ort, open=broken))
    backend, reason = select.open_backend(Artifacts.load(tiny[0]), checkpoint=tiny[1])
    assert backend.name == "torch" and "onnxruntime is broken" in reason


def test_torch_backend_matches_onnxruntime(tiny, scan):
    ort = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    pt = SegVolRuntime.load(tiny[0], backend="torch", device="cpu", checkpoint=tiny[1])
    assert pt.backend.name == "torch" and pt.backend_reason == "torch on CPU (fp32): requested"
    for rt in (ort, pt):
        rt.set_volume(scan)
    a = ort.segment(text="liver", box=BOX, keep_logits=True)
    b = pt.segment(text="liver", box=BOX, keep_logits=True)
    np.testing.assert_allclose(a.crop_logits, b.crop_logits, rtol=0, atol=1e-5 * np.abs(b.crop_logits).max())


def test_requested_backends_that_cannot_run(tiny, monkeypatch):
    art = Artifacts.load(tiny[0])
    with pytest.raises(SegVolError, match="no TensorRT engines"):
        select.open_backend(art, "tensorrt", "cuda")
    with pytest.raises(SegVolError, match="CUDA only"):
        select.open_backend(art, "tensorrt", "cpu")
    with pytest.raises(SegVolError, match="CUDA"):
        select.open_backend(art, "onnxruntime", "cuda")  # no GPU / no CUDAExecutionProvider here
    with pytest.raises(SegVolError, match="records no path"):
        select.open_backend(art, "torch", "cpu")  # the manifest names the checkpoint, not where it is
    with pytest.raises(SegVolError, match="unknown backend"):
        select.open_backend(art, "tvm")
    with pytest.raises(SegVolError, match="unknown device"):
        select.open_backend(art, "auto", "tpu")


def test_requesting_torch_without_torch(tiny, monkeypatch):
    import segvol_rt.backends.torch as torch_backend

    def missing(module):
        raise MissingDependencyError(f"{module} is needed for the torch reference backend; pip install 'segvol-rt[export]'")

    monkeypatch.setattr(torch_backend, "require", missing)
    with pytest.raises(SegVolError, match=r"torch is needed.*segvol-rt\[export\]"):
        select.open_backend(Artifacts.load(tiny[0]), "torch", "cpu", checkpoint=tiny[1])


def test_load_verifies_hashes(tiny, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny[0], copy)
    with open(copy / "prompt_decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SegVolError, match="does not match"):
        SegVolRuntime.load(copy, backend="onnxruntime", device="cpu")


def test_a_dropped_runtime_frees_its_backend_at_once(tiny, scan):
    """No reference cycle holds a runtime after its last reference goes (its stage hook
    is weak): an app that drops one gets the backend's models and memory back then,
    not whenever the garbage collector runs."""
    import gc
    import weakref

    runtime = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    runtime.set_volume(scan)
    runtime.segment(text="liver", box=BOX)
    runtime.text_embeddings(["a phrase of its own"])
    assert runtime.stats["timings"]
    gone, backend_gone = weakref.ref(runtime), weakref.ref(runtime.backend)
    gc.disable()
    try:
        del runtime
        assert gone() is None and backend_gone() is None
    finally:
        gc.enable()


def test_load_verifies_what_the_backend_reads(tiny, tmp_path):
    """A verifying load checks the files the backend opens, the lazily opened text
    encoder and the tokenizer included, and not the files it never reads: a
    changed TensorRT engine does not stop ONNX Runtime, and stops TensorRT
    (before any GPU is looked for)."""
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny[0], copy)
    (copy / "engines").mkdir()
    (copy / "engines/image_encoder.plan").write_bytes(b"engine")
    Artifacts.load(copy).update(engines={S.IMAGE_ENCODER: {"file": "engines/image_encoder.plan", "sha256": "0" * 64}})
    SegVolRuntime.load(copy, backend="onnxruntime", device="cpu").close()
    with pytest.raises(SegVolError, match="image_encoder.plan does not match"):
        select.open_backend(Artifacts.load(copy), "tensorrt", "cuda", verify=True)
    for damaged in ("text_encoder.onnx", "tokenizer/tokenizer.json"):
        with open(copy / damaged, "ab") as f:
            f.write(b"\0")
        with pytest.raises(SegVolError, match=f"{damaged.split('/')[-1]} does not match"):
            SegVolRuntime.load(copy, backend="onnxruntime", device="cpu")
        shutil.copy(tiny[0] / damaged, copy / damaged)


@pytest.mark.parametrize(
    "clear, images, text_calls",
    [
        ("clear_caches", 2 * 7, 2),  # zoom-out, 6 windows and the phrase again
        ("clear_window_cache", 1 + 2 * 6, 1),  # only the 6 windows again
    ],
)
def test_clearing_caches_redoes_that_work(tiny, scan, clear, images, text_calls):
    rt, counting = counting_runtime(tiny, scan)
    rt.segment(text="a free phrase")
    getattr(rt, clear)()
    rt.segment(text="a free phrase")
    assert counting.images == images and counting.calls[S.TEXT_ENCODER] == text_calls


def test_release_volume_keeps_the_backend(tiny, scan):
    rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    rt.set_volume(scan)
    first = rt.segment(text="liver").mask
    rt.release_volume()
    with pytest.raises(SegVolError, match="no volume"):
        rt.segment(text="liver")
    assert rt.stats["timings"]  # still usable: stats need no volume
    rt.set_volume(scan)
    np.testing.assert_array_equal(rt.segment(text="liver").mask, first)


def test_cpu_backends_encode_one_window_per_call(tiny, scan):
    rt, counting = counting_runtime(tiny, scan)
    ort = counting.inner
    assert ort.preferred_batch(S.IMAGE_ENCODER) == 1
    assert ort.preferred_batch(S.PROMPT_DECODER) == 1  # measured: onnxruntime.CPU_BATCHES
    rt.segment(text="liver")
    assert counting.calls[S.IMAGE_ENCODER] == counting.images == 1 + 6
