"""ONNX Runtime CUDA backend with IO binding, and the shared CUDA plumbing.

* CPU-runnable: the IO-binding wiring (:func:`run_bound`) on a toy graph with
  numpy buffers bound by address as ``device_type="cpu"`` - the same calls
  the CUDA path makes with CuPy pointers; shape helpers; the GPU query and
  the missing-GPU errors with a fake CUDA driver.
* GPU: ORT CUDA with IO binding on CuPy memory vs ORT CPU on tiny exported
  artifacts (needs onnxruntime-gpu, CuPy and a GPU; skipped otherwise).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.backends import cuda_common as C
from segvol_rt.backends.tensorrt.engines import GpuIdentity
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from tests.support import fake_cupy
from tests.support.shared import shared_path

TOY = S.GraphSpec(
    "toy",
    inputs=(
        S.TensorSpec("a", "float32", ("B", "C"), ("B", 4)),
        S.TensorSpec("k", "int64", ("B", "L"), ("B", "L")),
    ),
    outputs=(S.TensorSpec("out", "float32", ("B", "C"), ("B", 4)),),
    ranges={"B": (1, 2, 4), "L": (1, 3, 5)},
)


def toy_model(path: Path) -> Path:
    """out = 2 * a + sum(k, axis=1, keepdims) as float."""
    onnx = pytest.importorskip("onnx")
    h, T = onnx.helper, onnx.TensorProto
    nodes = [
        h.make_node("Mul", ["a", "two"], ["a2"]),
        h.make_node("ReduceSum", ["k", "axes"], ["ks"], keepdims=1),
        h.make_node("Cast", ["ks"], ["kf"], to=T.FLOAT),
        h.make_node("Add", ["a2", "kf"], ["out"]),
    ]
    graph = h.make_graph(
        nodes,
        "toy",
        [h.make_tensor_value_info("a", T.FLOAT, ["B", 4]), h.make_tensor_value_info("k", T.INT64, ["B", "L"])],
        [h.make_tensor_value_info("out", T.FLOAT, ["B", 4])],
        initializer=[h.make_tensor("two", T.FLOAT, [], [2.0]), h.make_tensor("axes", T.INT64, [1], [1])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_run_bound_writes_into_preallocated_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from segvol_rt.backends.ort_cuda import run_bound

    session = ort.InferenceSession(str(toy_model(tmp_path / "toy.onnx")), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((3, 4)).astype(np.float32), "k": rng.integers(0, 9, (3, 5))}
    TOY.validate_inputs(feeds)
    shapes = C.output_shapes(TOY, feeds)
    assert shapes == {"out": (3, 4)}
    outputs = {"out": np.full(shapes["out"], np.nan, np.float32)}
    buffer_before = outputs["out"].ctypes.data
    run_bound(session, TOY, feeds, outputs, device_type="cpu", device_id=0, address=lambda a: a.ctypes.data)
    assert outputs["out"].ctypes.data == buffer_before  # written in place, not replaced
    expected = session.run(["out"], feeds)[0]
    np.testing.assert_array_equal(outputs["out"], expected)
    np.testing.assert_allclose(expected, 2 * feeds["a"] + feeds["k"].sum(1, keepdims=True), rtol=1e-6)


def test_output_shapes_of_the_real_graphs():
    config = SegVolConfig.tiny()
    specs = S.graph_specs(config)
    c, (d, h, w) = config.embed_dim, config.grid_size
    feeds = {
        "image_embedding": np.zeros((2, c, d, h, w), np.float32),
        "prompt_coords": np.zeros((2, 5, 3), np.float32),
        "prompt_labels": np.zeros((2, 5), np.int32),
        "text_embedding": np.zeros((2, c), np.float32),
    }
    assert C.axis_values(specs[S.PROMPT_DECODER], feeds) == {"B": 2, "N": 5}
    assert C.output_shapes(specs[S.PROMPT_DECODER], feeds) == {"low_res_logits": (2, 1, *config.low_res_size)}
    image = {"image": np.zeros((3, 1, *config.spatial_size), np.float32)}
    assert C.output_shapes(specs[S.IMAGE_ENCODER], image) == {"image_embedding": (3, c, d, h, w)}


class FakeDriver:
    """Stands in for libcuda: cuInit returns ``init_rc``; one GPU otherwise."""

    def __init__(self, init_rc=0, count=1):
        self.init_rc, self.count = init_rc, count

    def cuInit(self, flags):
        return self.init_rc

    def cuDeviceGetCount(self, out):
        out._obj.value = self.count
        return 0

    def cuDeviceGet(self, out, ordinal):
        out._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        ctypes.memmove(buf, b"NVIDIA H200\0", 12)
        return 0

    def cuDeviceGetAttribute(self, out, attr, dev):
        out._obj.value = {75: 9, 76: 0}[attr]
        return 0


def test_query_gpu_with_a_fake_driver(monkeypatch):
    monkeypatch.setattr(C, "_load_driver", lambda: FakeDriver())
    assert C.query_gpu(0) == GpuIdentity("NVIDIA H200", "9.0")
    with pytest.raises(SegVolError, match="no CUDA GPU 1"):
        C.query_gpu(1)


def test_query_gpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(C, "_load_driver", lambda: FakeDriver(init_rc=100))
    with pytest.raises(SegVolError, match="no CUDA-capable GPU"):
        C.query_gpu(0)


def test_query_gpu_here_is_a_gpu_or_a_clear_error():
    try:
        gpu = C.query_gpu(0)
    except SegVolError as exc:
        assert "GPU" in str(exc) or "driver" in str(exc)
    else:
        assert gpu.name and gpu.compute_capability.count(".") == 1


def test_missing_cupy_names_the_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(SegVolError, match=r"segvol-rt\[gpu\]"):
        C.require_cupy()


def test_ort_cuda_backend_without_gpu_stack_is_a_clear_error(tmp_path, monkeypatch):
    from segvol_rt.backends.ort_cuda import OrtCudaBackend

    monkeypatch.setitem(sys.modules, "cupy", None)

    class Art:
        specs = S.graph_specs(SegVolConfig.tiny())

    with pytest.raises(SegVolError, match=r"segvol-rt\[gpu\]"):
        OrtCudaBackend(Art())


def test_cuda_session_without_cuda_provider_names_the_gpu_extra(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    from segvol_rt.backends.ort_cuda import cuda_session

    with pytest.raises(SegVolError, match=r"segvol-rt\[gpu\]"):
        cuda_session(toy_model(tmp_path / "toy.onnx"), 0)


def test_cuda_sessions_keep_tf32_off_unless_asked(tmp_path, monkeypatch):
    """fp32 parity: the CUDA provider gets use_tf32=0 by default (ORT's own default is on)."""
    import types

    from segvol_rt.backends import ort_cuda

    seen = []

    class Session:
        def get_providers(self):
            return [ort_cuda.CUDA_PROVIDER, ort_cuda.CPU_PROVIDER]

    def fake_open(ort, path, name, options, providers):
        seen.append(providers[0])
        return Session()

    monkeypatch.setattr(ort_cuda, "require", lambda name: types.SimpleNamespace())
    monkeypatch.setattr(ort_cuda, "cuda_problem", lambda ort: None)
    monkeypatch.setattr(ort_cuda, "open_session", fake_open)
    ort_cuda.cuda_session(tmp_path / "g.onnx", 1, options=object())
    ort_cuda.cuda_session(tmp_path / "g.onnx", 0, options=object(), tf32=True)
    assert seen == [(ort_cuda.CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0"}),
                    (ort_cuda.CUDA_PROVIDER, {"device_id": "0", "use_tf32": "1"})]


# -- OrtCudaBackend on a fake cupy and ORT CPU (real tiny artifacts) -------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_backend_plumbing_with_fake_cupy_on_ort_cpu(tiny_artifacts_dir_cpu, monkeypatch, precision):
    """OrtCudaBackend._run end to end with a FAKE cupy (host arrays) and CPU
    sessions bound as device "cpu": checks buffer sizing, binding and the
    stream sync - not CUDA - for the fp32 graphs and their fp16 variants
    (fp32 IO both: the same bindings)."""
    ort = pytest.importorskip("onnxruntime")
    from segvol_rt.backends import ort_cuda
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
    from segvol_rt.io.artifacts import Artifacts

    cp = fake_cupy.make()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(
        ort_cuda, "cuda_session", lambda path, device_id, options=None, **kw: ort.InferenceSession(str(path))
    )
    monkeypatch.setattr(ort_cuda.OrtCudaBackend, "_bind_device", "cpu")
    art = Artifacts.load(tiny_artifacts_dir_cpu)
    backend = ort_cuda.OrtCudaBackend(art, precision=precision)
    reference = OnnxRuntimeBackend(art, device="cpu", precision=precision)
    assert backend.precision == precision and precision in backend.describe()
    image, tokens, coords, labels = _chain_inputs(art.config)
    emb = backend.encode_image(cp.asarray(image))
    text = backend.encode_text(cp.asarray(tokens))
    low = backend.decode(emb, cp.asarray(coords), cp.asarray(labels), text)
    assert isinstance(low, cp.ndarray) and ("synchronize", 0) in cp.log
    want_emb = reference.encode_image(image)
    want_text = reference.encode_text(tokens)
    np.testing.assert_array_equal(emb, want_emb)
    np.testing.assert_array_equal(text, want_text)
    np.testing.assert_array_equal(low, reference.decode(want_emb, coords, labels, want_text))


def _chain_inputs(config, batch=2, seed=2):
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 1, *config.spatial_size), dtype=np.float32)
    tokens = rng.integers(0, 49406, (batch, config.text.max_length))
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    coords = rng.uniform(0, 16, (batch, 3, 3)).astype(np.float32)
    labels = np.array([[1, 2, 3], [0, 1, -1]][:batch], np.int32)
    return image, tokens, coords, labels


def _export_tiny(root: Path) -> Path:
    pytest.importorskip("torch")
    from segvol_rt.export.checkpoint import save_pth
    from segvol_rt.export.exporter import ExportOptions, export_artifacts
    from segvol_rt.export.model.segvol import SegVol

    ckpt = save_pth(SegVol.random(SegVolConfig.tiny(), seed=0), root / "tiny.pth")
    export_artifacts(ckpt, root / "art", tokenizer=shared_path("clip"), options=ExportOptions(verify=False, precision="fp16"))
    return root / "art"


@pytest.fixture(scope="module")
def tiny_artifacts_dir_cpu(tmp_path_factory):
    """Tiny artifacts from segvol-rt's exporter (seeded random weights; parity checks off)."""
    return _export_tiny(tmp_path_factory.mktemp("ortcpu"))


# -- real GPU --------------------------------------------------------------------
def _gpu_stack_or_skip():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (needs onnxruntime-gpu, the [gpu] extra)")
    try:
        return C.require_cupy(0)
    except SegVolError as exc:
        pytest.skip(f"no CuPy/GPU: {exc}")


def test_gpu_io_binding_on_cupy_matches_host_run(tmp_path):
    cp = _gpu_stack_or_skip()
    from segvol_rt.backends.ort_cuda import cuda_session, run_bound

    session = cuda_session(toy_model(tmp_path / "toy.onnx"), 0)
    rng = np.random.default_rng(1)
    host = {"a": rng.standard_normal((2, 4)).astype(np.float32), "k": rng.integers(0, 9, (2, 3))}
    dev = C.device_inputs(cp, TOY, host)
    out = C.empty_outputs(cp, TOY, C.output_shapes(TOY, dev))
    cp.cuda.get_current_stream().synchronize()
    run_bound(session, TOY, dev, out, device_type="cuda", device_id=0, address=lambda a: a.data.ptr)
    np.testing.assert_allclose(cp.asnumpy(out["out"]), 2 * host["a"] + host["k"].sum(1, keepdims=True), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_artifacts_dir(tmp_path_factory):
    _gpu_stack_or_skip()
    return _export_tiny(tmp_path_factory.mktemp("ortcuda"))


def test_gpu_ort_cuda_backend_matches_ort_cpu(tiny_artifacts_dir):
    cp = _gpu_stack_or_skip()
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
    from segvol_rt.backends.ort_cuda import OrtCudaBackend
    from segvol_rt.io.artifacts import Artifacts

    art = Artifacts.load(tiny_artifacts_dir)
    gpu, cpu = OrtCudaBackend(art), OnnxRuntimeBackend(art, device="cpu")
    assert gpu.xp is cp
    image, tokens, coords, labels = _chain_inputs(art.config)
    emb_gpu = gpu.encode_image(cp.asarray(image))  # stays on the GPU into the decoder
    text_gpu = gpu.encode_text(cp.asarray(tokens))
    assert isinstance(emb_gpu, cp.ndarray) and isinstance(text_gpu, cp.ndarray)
    emb_cpu, text_cpu = cpu.encode_image(image), cpu.encode_text(tokens)
    np.testing.assert_allclose(cp.asnumpy(emb_gpu), emb_cpu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(text_gpu), text_cpu, rtol=1e-5, atol=1e-5)
    low_gpu = gpu.decode(emb_gpu, cp.asarray(coords), cp.asarray(labels), text_gpu)
    low_cpu = cpu.decode(emb_cpu, coords, labels, text_cpu)
    np.testing.assert_allclose(cp.asnumpy(low_gpu), low_cpu, rtol=1e-5, atol=1e-5)


def test_gpu_ort_cuda_fp16_graphs_match_fp32(tiny_artifacts_dir):
    """The fp16 variants on the CUDA provider against the fp32 graphs on the CPU:
    relative L2 of each output within the export's fp16 tolerance."""
    cp = _gpu_stack_or_skip()
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
    from segvol_rt.backends.ort_cuda import OrtCudaBackend
    from segvol_rt.export.fp16 import FP16_TOLERANCE
    from segvol_rt.io.artifacts import Artifacts

    art = Artifacts.load(tiny_artifacts_dir)
    gpu, cpu = OrtCudaBackend(art, precision="fp16"), OnnxRuntimeBackend(art, device="cpu")
    image, tokens, coords, labels = _chain_inputs(art.config)
    emb, text = cpu.encode_image(image), cpu.encode_text(tokens)
    pairs = [
        (gpu.encode_image(cp.asarray(image)), emb),
        (gpu.encode_text(cp.asarray(tokens)), text),
        (gpu.decode(cp.asarray(emb), cp.asarray(coords), cp.asarray(labels), cp.asarray(text)), cpu.decode(emb, coords, labels, text)),
    ]
    for got, want in pairs:
        got = cp.asnumpy(got)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= FP16_TOLERANCE
