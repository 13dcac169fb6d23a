"""TensorRT engines: ``segvol-rt build`` and the TensorRT backend.

Two kinds of tests:

* ``test_fake_*`` run everywhere, each against both strict FAKE ``tensorrt``
  modules (tests/support/fake_tensorrt.py: TensorRT 10.x's and 11.x's
  documented surfaces) monkeypatched into ``sys.modules``. They check our
  wiring - which documented API calls the builder makes on each version, in
  which order, with which profile shapes, what it writes - and are NOT a
  TensorRT run: nothing is parsed, built or executed.
* ``test_real_*`` need ``tensorrt``, CuPy and a GPU (skipped with the reason
  otherwise): build fp32 and fp16 engines from tiny exported artifacts, run
  them, compare with ONNX Runtime on the CPU, and refuse a foreign engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.backends.tensorrt import engines as E
from segvol_rt.errors import SegVolError
from segvol_rt.io import artifacts as A
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.digests import sha256_file
from tests.support import fake_cupy, fake_tensorrt
from tests.support.shared import shared_path

FAKE_GPU = E.GpuIdentity("FAKE GPU", "9.0")
CHECKPOINT_SHA = "f" * 64


def make_artifacts(root: Path, config: SegVolConfig | None = None, broken: str | None = None, fp16: bool = True) -> Path:
    """A minimal artifacts dir with placeholder graph bytes (the fake parser never reads ONNX),
    with fp16 variants unless ``fp16`` is False."""
    config = config or SegVolConfig.tiny()
    root.mkdir()
    graphs = {}
    for name, spec in S.graph_specs(config).items():
        # The fake parser embeds this text in the fake engine, whose runtime reads the IO from it.
        body = b"BROKEN" if name == broken else json.dumps(spec.to_dict()).encode()
        (root / spec.file).write_bytes(body)
        graphs[name] = {"file": spec.file, "sha256": sha256_file(root / spec.file), "spec": spec.to_dict()}
        if fp16:
            half = spec.file.replace(".onnx", ".fp16.onnx")
            (root / half).write_bytes(body + b" ")  # a different file of the same IO
            graphs[name]["variants"] = {"fp16": {"file": half, "sha256": sha256_file(root / half)}}
    A.write_manifest(
        root,
        {
            "format_version": A.FORMAT_VERSION,
            "checkpoint": {"name": "fake.pth", "sha256": CHECKPOINT_SHA, "format": "test"},
            "config": config.to_dict(),
            "graphs": graphs,
            "engines": {},
        },
    )
    return root


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def fake_trt(request, monkeypatch):
    """The strict fake of TensorRT 10.x, then of 11.x: every fake test runs on both."""
    from segvol_rt.backends.tensorrt import build as tensorrt_build

    trt = fake_tensorrt.make(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_build, "_query_gpu", lambda: FAKE_GPU)
    return trt


def _one_build(calls: list[tuple]) -> list[tuple]:
    """The calls of the first engine build (up to and including get_timing_cache)."""
    end = next(i for i, c in enumerate(calls) if c[0] == "config.get_timing_cache")
    return calls[: end + 1]


def test_fake_fp16_build_calls_the_documented_api_in_order(tmp_path, fake_trt):
    """One code path on both versions: a strongly typed network from the fp16
    graph, the workspace limit, no flag, no per-layer pin."""
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art")
    build_engines(root, BuildOptions(precision="fp16", max_batch=2, max_points=4), graphs=[S.PROMPT_DECODER])
    calls = _one_build(fake_trt.calls)
    kinds = [c[0] for c in calls if not c[0].startswith("layer.")]
    assert kinds == [
        "Logger",
        "Builder",
        "builder.create_network",
        "OnnxParser",
        "parse_from_file",
        "builder.create_builder_config",
        "config.set_memory_pool_limit",
        "builder.create_optimization_profile",
        "profile.set_shape",
        "profile.set_shape",
        "profile.set_shape",
        "profile.set_shape",
        "config.add_optimization_profile",
        "config.create_timing_cache",
        "config.set_timing_cache",
        "builder.build_serialized_network",
        "config.get_timing_cache",
    ]
    strongly = 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # bit 1 on 10.x, bit 0 on 11.x
    assert ("builder.create_network", strongly) in calls
    assert ("parse_from_file", "prompt_decoder.fp16.onnx") in calls  # the fp16 graph carries the precision
    assert ("config.set_memory_pool_limit", fake_tensorrt.MemoryPoolType.WORKSPACE, 4 << 30) in calls
    # Profile shapes: the spec's, with batch capped at 2 and tokens at 4 + EXTRA_TOKENS.
    c, (d, h, w) = 32, SegVolConfig.tiny().grid_size
    n = 4 + S.EXTRA_TOKENS
    shapes = {c_[1]: c_[2:] for c_ in calls if c_[0] == "profile.set_shape"}
    assert shapes == {
        "image_embedding": ((1, c, d, h, w), (1, c, d, h, w), (2, c, d, h, w)),
        "prompt_coords": ((1, 1, 3), (1, 3, 3), (2, n, 3)),
        "prompt_labels": ((1, 1), (1, 3), (2, n)),
        "text_embedding": ((1, c), (1, c), (2, c)),
    }


def test_fake_fp32_build_sets_no_precision_flags(tmp_path, fake_trt):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art")
    build_engines(root, BuildOptions(precision="fp32"))
    kinds = [c[0] for c in fake_trt.calls]
    assert "config.set_flag" not in kinds and "layer.precision" not in kinds and "layer.set_output_type" not in kinds
    assert kinds.count("builder.build_serialized_network") == 3
    assert [c[1] for c in fake_trt.calls if c[0] == "parse_from_file"] == [s.file for s in S.graph_specs(SegVolConfig.tiny()).values()]


def test_fake_trt11_rejects_the_weak_typing_api(fake_trt):
    """The 11.x fake lacks what 11.x removed, so code touching it fails as on the real one;
    the 10.x fake documents it, but a strongly typed build refuses it."""
    if fake_trt.__version__.startswith("11"):
        for name in fake_tensorrt.REMOVED_IN_11_FLAGS:
            with pytest.raises(AttributeError):
                getattr(fake_trt.BuilderFlag, name)
        with pytest.raises(AttributeError):
            fake_trt.BuilderFlag.FP16  # noqa: B018
        with pytest.raises(AttributeError):
            fake_trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # noqa: B018
        layer = fake_trt.ILayer([], "x")
        assert not hasattr(layer, "precision") and not hasattr(layer, "set_output_type")
        assert not hasattr(fake_tensorrt.FakeEngine, "device_memory_size")
        return
    builder = fake_trt.Builder(fake_trt.Logger(fake_trt.Logger.WARNING))
    network = builder.create_network(1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    config = builder.create_builder_config()
    config.set_flag(fake_trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    assert hasattr(fake_tensorrt.FakeEngine10, "device_memory_size")


def test_network_flags_by_feature_detection():
    from segvol_rt.backends.tensorrt.build import network_flags

    assert network_flags(fake_tensorrt.make(10)) == 1 << 1
    assert network_flags(fake_tensorrt.make(11)) == 1 << 0
    later = fake_tensorrt.make(11)
    later.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {})  # a release without the member
    assert network_flags(later) == 0


def test_fake_fp16_build_needs_fp16_graphs(tmp_path, fake_trt, monkeypatch):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art", fp16=False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # refused before tensorrt is looked for
    with pytest.raises(SegVolError, match=r"has no fp16 graphs .*segvol-rt export --precision fp16"):
        build_engines(root, BuildOptions(precision="fp16"))


def test_fake_build_writes_plain_engines_and_manifest_records(tmp_path, fake_trt):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art")
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"OLD")
    records = build_engines(root, BuildOptions(precision="fp16", timing_cache=cache))
    manifest = json.loads((root / A.MANIFEST).read_text())
    assert set(manifest["engines"]) == set(S.GRAPH_NAMES)
    specs = A.Artifacts.load(root).specs
    for graph in S.GRAPH_NAMES:
        rec = E.EngineRecord.from_dict(manifest["engines"][graph])
        assert rec == records[graph]
        path = root / rec.file
        # The file is exactly TensorRT's serialized engine: no header of ours.
        assert path.read_bytes().startswith(b"FAKE-SERIALIZED-ENGINE/")
        assert rec.sha256 == sha256_file(path)
        assert rec.graph_sha256 == manifest["graphs"][graph]["variants"]["fp16"]["sha256"]  # the graph it was built from
        assert rec.model_sha256 == CHECKPOINT_SHA
        assert (rec.tensorrt_version, rec.gpu_name, rec.compute_capability) == (fake_trt.__version__, "FAKE GPU", "9.0")
        assert rec.precision == rec.graph_variant == "fp16" and rec.profiles == E.profile_shapes(specs[graph])
        assert manifest["engines"][graph]["graph_variant"] == "fp16" and rec.options["strongly_typed"] is True
    A.Artifacts.load(root).verify()  # engine hashes are checked like the graphs
    # The timing cache is read once, threaded through the three builds, then saved.
    blobs = [c[1] for c in fake_trt.calls if c[0] == "config.create_timing_cache"]
    assert blobs == [b"OLD", b"OLD+timed", b"OLD+timed+timed"]
    assert cache.read_bytes() == b"OLD+timed+timed+timed"
    assert not [p for p in root.rglob(".*") if p.name != A.MANIFEST]  # no temporary files left


def test_fake_parser_errors_name_the_node(tmp_path, fake_trt):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art", broken=S.TEXT_ENCODER)
    with pytest.raises(SegVolError) as info:
        build_engines(root, BuildOptions(precision="fp32"), graphs=[S.TEXT_ENCODER])
    msg = str(info.value)
    assert "text_encoder.onnx" in msg and "'/blocks.0/attn/Einsum'" in msg and "(Einsum)" in msg
    assert "unsupported equation" in msg and "node 7" in msg


def test_fake_build_refuses_limits_above_the_exported_range(tmp_path, fake_trt):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art")
    with pytest.raises(SegVolError, match="exceeds the exported range"):
        build_engines(root, BuildOptions(max_batch=S.DEFAULT_MAX_BATCH + 1))
    with pytest.raises(SegVolError, match="prompt_decoder: axis N limit"):
        build_engines(root, BuildOptions(max_points=S.DEFAULT_MAX_POINTS + 1))  # the last graph's limit
    assert "builder.build_serialized_network" not in [c[0] for c in fake_trt.calls]  # checked before any build


def test_fake_failed_build_leaves_a_consistent_manifest(tmp_path, fake_trt):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art", broken=S.PROMPT_DECODER)  # the last of the three
    with pytest.raises(SegVolError, match="parser rejected prompt_decoder.onnx"):
        build_engines(root, BuildOptions(precision="fp32"))
    art = A.Artifacts.load(root)
    assert set(art.manifest["engines"]) == {S.IMAGE_ENCODER, S.TEXT_ENCODER}
    art.verify()  # the engines on disk are the ones recorded


def test_fake_build_refuses_a_changed_graph(tmp_path, fake_trt):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art")
    (root / "image_encoder.fp16.onnx").write_bytes(b"changed")
    with pytest.raises(SegVolError, match="does not match manifest.json"):
        build_engines(root, BuildOptions(), graphs=[S.IMAGE_ENCODER])
    (root / "text_encoder.onnx").write_bytes(b"changed")
    with pytest.raises(SegVolError, match="does not match manifest.json"):
        build_engines(root, BuildOptions(precision="fp32"), graphs=[S.TEXT_ENCODER])


def test_build_options_are_validated():
    from segvol_rt.backends.tensorrt.build import BuildOptions

    with pytest.raises(SegVolError, match="precision"):
        BuildOptions(precision="int8")


def test_missing_tensorrt_names_the_extra(tmp_path, monkeypatch):
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(SegVolError, match=r"segvol-rt\[trt\]"):
        build_engines(make_artifacts(tmp_path / "art"), BuildOptions())


def test_cli_build_reports_missing_tensorrt(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from segvol_rt.app.cli import app

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    root = make_artifacts(tmp_path / "art")
    result = CliRunner().invoke(app, ["build", "--artifacts", str(root), "--precision", "fp32"])
    assert result.exit_code != 0 and isinstance(result.exception, SegVolError)
    assert "segvol-rt[trt]" in str(result.exception)


def test_fake_cli_build(tmp_path, fake_trt):
    from typer.testing import CliRunner

    from segvol_rt.app.cli import app

    root = make_artifacts(tmp_path / "art")
    result = CliRunner().invoke(app, ["build", "--artifacts", str(root), "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert f"image_encoder: engines/image_encoder.plan (fp16, TensorRT {fake_trt.__version__}, FAKE GPU)" in result.output
    assert "from image_encoder.fp16.onnx (strongly typed, fp16)" in result.output
    rec = E.engine_records(A.Artifacts.load(root).manifest)[S.IMAGE_ENCODER]
    assert rec.profiles["image"]["max"][0] == 2


# -- the TensorRT backend on fake tensorrt + fake cupy (wiring only) ------------
@pytest.fixture
def fake_stack(fake_trt, monkeypatch):
    """Fake tensorrt and cupy; engines built by the fake builder (max batch 2)."""
    from segvol_rt.backends.tensorrt import runner as trt_backend

    cp = fake_cupy.make()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(trt_backend, "query_gpu", lambda device_id: FAKE_GPU)
    return fake_trt, cp


def _built(tmp_path) -> Path:
    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    root = make_artifacts(tmp_path / "art")
    build_engines(root, BuildOptions(precision="fp16", max_batch=2, max_points=4))
    return root


def _feeds(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    c, grid = config.embed_dim, config.grid_size
    return {
        S.IMAGE_ENCODER: {"image": rng.random((batch, 1, *config.spatial_size), dtype=np.float32)},
        S.TEXT_ENCODER: {"token_ids": rng.integers(0, 49408, (batch, config.text.max_length))},
        S.PROMPT_DECODER: {
            "image_embedding": rng.random((batch, c, *grid), dtype=np.float32),
            "prompt_coords": rng.random((batch, 3, 3), dtype=np.float32),
            "prompt_labels": np.ones((batch, 3), np.int32),
            "text_embedding": rng.random((batch, c), dtype=np.float32),
        },
    }


def test_fake_backend_binds_every_tensor_and_orders_streams(tmp_path, fake_stack):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    trt, cp = fake_stack
    backend = TensorRTBackend(Artifacts.load(_built(tmp_path)))
    assert backend.xp is cp and backend.precision == "fp16"
    assert backend.device_memory_bytes == dict.fromkeys(S.GRAPH_NAMES, 1 << 20)  # _v2 on both versions
    config = SegVolConfig.tiny()
    for graph, feeds in _feeds(config, batch=2).items():
        spec = backend.specs[graph]
        trt.calls.clear()
        cp.log.clear()
        out = backend.run(graph, {k: cp.asarray(v) for k, v in feeds.items()})
        want = fake_tensorrt.fake_outputs(spec, feeds)
        assert set(out) == set(want)
        for name in want:
            assert isinstance(out[name], cp.ndarray)
            np.testing.assert_allclose(out[name], want[name], rtol=1e-6)
        kinds = [c[0] for c in trt.calls]
        n_in, n_out = len(spec.inputs), len(spec.outputs)
        assert kinds == ["context.set_input_shape", "context.set_tensor_address"] * n_in + [
            "context.set_tensor_address"
        ] * n_out + ["context.execute_async_v3"]
        assert trt.calls[-1][2] == backend.stream.ptr  # enqueued on the backend's stream
        # the backend's stream waits for the caller's (null) stream, then the caller waits for it
        assert cp.log == [("record", 0), ("wait_event", backend.stream.ptr, 0),
                          ("record", backend.stream.ptr), ("wait_event", 0, backend.stream.ptr)]


def test_fake_backend_validates_against_the_engine_profile(tmp_path, fake_stack):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    _, cp = fake_stack
    backend = TensorRTBackend(Artifacts.load(_built(tmp_path)))
    feeds = _feeds(SegVolConfig.tiny(), batch=3)[S.IMAGE_ENCODER]  # exported up to 8, built up to 2
    with pytest.raises(SegVolError, match=r"B=3 outside \[1, 2\]"):
        backend.run(S.IMAGE_ENCODER, {k: cp.asarray(v) for k, v in feeds.items()})


def test_fake_backend_refuses_foreign_or_changed_engines(tmp_path, fake_stack):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    root = _built(tmp_path)
    art = Artifacts.load(root)
    engines = dict(art.manifest["engines"])
    art.update(engines={**engines, S.PROMPT_DECODER: {**engines[S.PROMPT_DECODER], "gpu_name": "Other GPU"}})
    with pytest.raises(SegVolError, match=r"prompt_decoder.plan cannot run here \(GPU: engine built for 'Other GPU', here 'FAKE GPU'\)"):
        TensorRTBackend(Artifacts.load(root))
    art.update(engines=engines)
    (root / engines[S.TEXT_ENCODER]["file"]).write_bytes(b"FAKE-SERIALIZED-ENGINE/{}")
    with pytest.raises(SegVolError, match="does not match its manifest sha256"):
        TensorRTBackend(Artifacts.load(root))
    with pytest.raises(SegVolError, match=r"are not fp32 .*segvol-rt build --precision fp32"):
        TensorRTBackend(Artifacts.load(root), precision="fp32")
    art.update(engines={})
    with pytest.raises(SegVolError, match="no TensorRT engine for .*segvol-rt build"):
        TensorRTBackend(Artifacts.load(root))


def test_fake_backend_casts_int64_inputs_for_int32_engines(tmp_path, fake_stack, monkeypatch):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    _, cp = fake_stack
    monkeypatch.setattr(fake_tensorrt.FakeEngine, "narrowed", {"token_ids"})
    backend = TensorRTBackend(Artifacts.load(_built(tmp_path)))
    feeds = _feeds(SegVolConfig.tiny(), batch=2)[S.TEXT_ENCODER]
    out = backend.encode_text(cp.asarray(feeds["token_ids"]))  # int64 in, engine reads int32
    want = fake_tensorrt.fake_outputs(backend.specs[S.TEXT_ENCODER], feeds)["text_embedding"]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    monkeypatch.setattr(fake_tensorrt.FakeEngine, "narrowed", {"image"})  # float narrowing is not accepted
    with pytest.raises(SegVolError, match="image is int32 in the engine, float32 in the spec"):
        TensorRTBackend(Artifacts.load(tmp_path / "art"))


def test_fake_backend_cuda_graph_captures_once_then_replays(tmp_path, fake_stack):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    trt, cp = fake_stack
    backend = TensorRTBackend(Artifacts.load(_built(tmp_path)), cuda_graph_batch=2)
    config = SegVolConfig.tiny()
    spec = backend.specs[S.IMAGE_ENCODER]
    results = []
    for seed in (0, 1, 2):
        trt.calls.clear()
        feeds = _feeds(config, batch=2, seed=seed)[S.IMAGE_ENCODER]
        out = backend.encode_image(cp.asarray(feeds["image"]))
        np.testing.assert_allclose(out, fake_tensorrt.fake_outputs(spec, feeds)["image_embedding"], rtol=1e-6)
        results.append(out)
        executes = [c for c in trt.calls if c[0] == "context.execute_async_v3"]
        assert len(executes) == (2 if seed == 0 else 0)  # warm-up + captured; then replay only
    assert [c[0] for c in cp.log].count("graph.launch") == 3
    assert not np.shares_memory(results[1], results[2])  # each call returns its own copy
    trt.calls.clear()
    backend.encode_image(cp.asarray(_feeds(config, batch=1)[S.IMAGE_ENCODER]["image"]))  # other batch: plain run
    assert [c[0] for c in trt.calls].count("context.execute_async_v3") == 1


# -- real TensorRT on a GPU ------------------------------------------------------
def _real_trt_or_skip():
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"tensorrt is not importable here ({exc}); TensorRT tests need the [trt] extra and a GPU")
    try:
        from segvol_rt.backends.cuda_common import query_gpu, require_cupy

        query_gpu(0)
        require_cupy(0)
    except SegVolError as exc:
        pytest.skip(f"no usable GPU/CuPy: {exc}")


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory, tiny_pth):
    """Tiny artifacts exported by segvol-rt's exporter (parity checks off: the export tests do them)."""
    _real_trt_or_skip()
    from segvol_rt.export.exporter import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("trt") / "art"
    export_artifacts(tiny_pth, out, tokenizer=shared_path("clip"), options=ExportOptions(verify=False, precision="fp16"))
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def _build_copy(src: Path, dst: Path, precision: str) -> Path:
    import shutil

    from segvol_rt.backends.tensorrt.build import BuildOptions, build_engines

    shutil.copytree(src, dst)
    build_engines(dst, BuildOptions(precision=precision, workspace_gib=1.0))
    return dst


def _run_all(backend, xp, image, tokens, coords, labels):
    """The three graphs chained; returns numpy outputs."""
    emb = backend.encode_image(xp.asarray(image))
    text = backend.encode_text(xp.asarray(tokens))
    low = backend.decode(emb, xp.asarray(coords), xp.asarray(labels), text)
    to_np = getattr(xp, "asnumpy", np.asarray)
    return to_np(emb), to_np(text), to_np(low)


def _inputs(config, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 1, *config.spatial_size), dtype=np.float32)
    tokens = rng.integers(0, 49406, (batch, config.text.max_length))
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    d, h, w = config.spatial_size
    coords = rng.uniform(0, [d, h, w], (batch, 3, 3)).astype(np.float32)
    labels = np.tile(np.array([[1, 2, 3]], np.int32), (batch, 1))
    return image, tokens, coords, labels


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engines_match_ort_cpu(tiny_artifacts, tmp_path, precision):
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    root = _build_copy(tiny_artifacts, tmp_path / precision, precision)
    art = Artifacts.load(root)
    art.verify()
    trt_backend = TensorRTBackend(art, precision=precision)
    cpu_backend = OnnxRuntimeBackend(art, device="cpu", precision=precision)
    feeds = _inputs(art.config)
    got = _run_all(trt_backend, trt_backend.xp, *feeds)
    want = _run_all(cpu_backend, np, *feeds)
    if precision == "fp32":
        for g, w in zip(got, want):
            assert _rel(g, w) <= 1e-3
    else:
        assert _dice(got[2] > 0, want[2] > 0) >= 0.99


@pytest.mark.tensorrt
def test_real_cuda_graph_replay_matches_plain_run(tiny_artifacts, tmp_path):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    root = _build_copy(tiny_artifacts, tmp_path / "graph", "fp32")
    art = Artifacts.load(root)
    plain = TensorRTBackend(art)
    graphed = TensorRTBackend(art, cuda_graph_batch=2)
    cp = plain.xp
    for seed in (0, 1):  # capture, then replay with new data in the static buffer
        image = _inputs(art.config, seed=seed)[0]
        want = cp.asnumpy(plain.encode_image(cp.asarray(image)))
        got = cp.asnumpy(graphed.encode_image(cp.asarray(image)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert graphed._replay is not None and graphed._replay.graph is not None


@pytest.mark.tensorrt
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("gpu_name", "Some Other GPU", "GPU: engine built for 'Some Other GPU'"),
        ("compute_capability", "1.0", "compute capability"),
        ("tensorrt_version", "9.9.9", "TensorRT version"),
        ("model_sha256", "0" * 64, "model (checkpoint sha256)"),
        ("graph_sha256", "1" * 64, "graph (ONNX sha256)"),
    ],
)
def test_real_foreign_engine_is_refused(tiny_artifacts, tmp_path, field, value, words):
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    root = _build_copy(tiny_artifacts, tmp_path / field, "fp32")
    art = Artifacts.load(root)
    engines = dict(art.manifest["engines"])
    engines[S.TEXT_ENCODER] = {**engines[S.TEXT_ENCODER], field: value}
    art.update(engines=engines)
    with pytest.raises(SegVolError, match="cannot run here") as info:
        TensorRTBackend(Artifacts.load(root))
    assert words in str(info.value) and "segvol-rt build" in str(info.value)


def test_engine_records_written_before_graph_variants_load_as_built_from_fp32():
    record = {
        "graph": S.IMAGE_ENCODER, "file": "engines/image_encoder.plan", "sha256": "a" * 64, "precision": "fp16",
        "profiles": {}, "tensorrt_version": "10.3.0", "gpu_name": "G", "compute_capability": "9.0",
        "model_sha256": "b" * 64, "graph_sha256": "c" * 64,
    }
    assert E.EngineRecord.from_dict(record).graph_variant == "fp32"
    assert E.EngineRecord.from_dict({**record, "graph_variant": "fp16"}).graph_variant == "fp16"
    with pytest.raises(SegVolError, match="graph_variant 'int8'"):
        E.EngineRecord.from_dict({**record, "graph_variant": "int8"})


def test_fake_backend_keeps_cast_inputs_alive_until_enqueue(tmp_path, fake_stack, monkeypatch):
    """A cast copy (int64 token ids -> int32) is bound by address: the fake
    context checks at enqueue and at execution that every bound address is
    still held by a live array (else CuPy's pool could reuse it first)."""
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    _, cp = fake_stack
    monkeypatch.setattr(fake_tensorrt.FakeEngine, "narrowed", {"token_ids"})
    backend = TensorRTBackend(Artifacts.load(_built(tmp_path)))
    ids = cp.asarray(_feeds(SegVolConfig.tiny(), batch=2)[S.TEXT_ENCODER]["token_ids"])
    backend.encode_text(ids)  # raises "released before enqueue" if a bound copy died in bind
    engine = backend._engines[S.TEXT_ENCODER]
    context = engine.context
    held = backend._in_flight[S.TEXT_ENCODER]
    assert held.inputs["token_ids"].dtype == np.int32
    assert all(fake_cupy.allocated(ptr) for ptr in context.addresses.values())


def test_fake_context_refuses_a_buffer_released_before_enqueue(tmp_path, fake_stack, monkeypatch):
    """The check itself: binding a temporary and dropping it is caught."""
    from segvol_rt.backends.tensorrt.runner import TensorRTBackend
    from segvol_rt.io.artifacts import Artifacts

    _, cp = fake_stack
    backend = TensorRTBackend(Artifacts.load(_built(tmp_path)))
    engine = backend._engines[S.TEXT_ENCODER]
    ids = _feeds(SegVolConfig.tiny(), batch=2)[S.TEXT_ENCODER]["token_ids"]
    engine.bind(engine.context, {"token_ids": cp.asarray(ids)}, cp)  # the result (and the input) dropped
    with pytest.raises(RuntimeError, match=r"released before enqueue"):
        engine.enqueue(engine.context, backend.stream)
