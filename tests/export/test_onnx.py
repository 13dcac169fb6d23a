"""The three exported graphs against torch (tiny config): dynamic batch and
token axes, every prompt combination against the official-style decoder call,
the spec's IO, TensorRT operator support, and the full-size export (slow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from segvol_rt.errors import SegVolError
from segvol_rt.export import onnx as O
from segvol_rt.export import trt_support
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig

TOL = O.PARITY_TOLERANCE
CONFIG = SegVolConfig.tiny()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and idle OpenMP workers fight
    ORT's on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> SegVol:
    return SegVol.random(CONFIG, seed=7)


@pytest.fixture(scope="module")
def specs():
    return S.graph_specs(CONFIG)


@pytest.fixture(scope="module")
def exported(model, specs, tmp_path_factory):
    """graph name -> (path, ORT session), exported once for the module."""
    out = tmp_path_factory.mktemp("graphs")
    rng = np.random.default_rng(0)
    result = {}
    for name in S.GRAPH_NAMES:
        spec = specs[name]
        path = O.export_graph(O.graph_module(model, name), spec, O.random_inputs(spec, CONFIG, {"B": 2, "N": 5}, rng), out / spec.file)
        result[name] = (path, O.ort_session(path))
    return result


def _emb(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, CONFIG.embed_dim, *CONFIG.grid_size), dtype=np.float32)


# -- IO and operator support ---------------------------------------------------
@pytest.mark.parametrize("name", S.GRAPH_NAMES)
def test_io_matches_spec(exported, specs, name):
    spec = specs[name]
    graph = onnx.load(str(exported[name][0])).graph
    for values, tensors in ((graph.input, spec.inputs), (graph.output, spec.outputs)):
        assert [v.name for v in values] == [t.name for t in tensors]
        for v, t in zip(values, tensors):
            assert onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) == np.dtype(t.dtype)
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            assert dims == list(t.shape), (v.name, dims, t.shape)


@pytest.mark.parametrize("name", S.GRAPH_NAMES)
def test_tensorrt_supports_exported_graphs(exported, name):
    report = trt_support.check_graph(exported[name][0])
    assert report.ok, report.problems
    assert report.opset == O.DEFAULT_OPSET
    assert sum(report.operators.values()) > 0


def test_old_opset_is_refused(model, specs, tmp_path):
    spec = specs[S.IMAGE_ENCODER]
    example = O.random_inputs(spec, CONFIG, {"B": 2}, np.random.default_rng(0))
    with pytest.raises(SegVolError, match="opset >= 17"):
        O.export_graph(O.graph_module(model, S.IMAGE_ENCODER), spec, example, tmp_path / "x.onnx", opset=16)


# -- encoders --------------------------------------------------------------------
@pytest.mark.parametrize("name", [S.IMAGE_ENCODER, S.TEXT_ENCODER])
def test_encoders_dynamic_batch(exported, model, specs, name):
    parity = O.verify_encoder(exported[name][1], O.graph_module(model, name), specs[name], CONFIG, [1, 2, 3, 4])
    assert parity.ok, parity.cases
    assert [c["batch"] for c in parity.cases] == [1, 2, 3, 4]


def test_text_encoder_max_batch(exported, model, specs):
    spec = specs[S.TEXT_ENCODER]
    top = spec.ranges["B"][2]
    parity = O.verify_encoder(exported[S.TEXT_ENCODER][1], O.graph_module(model, S.TEXT_ENCODER), spec, CONFIG, [top])
    assert parity.ok, parity.cases


# -- prompt decoder --------------------------------------------------------------
def test_decoder_every_prompt_combination(exported, model, specs):
    """ORT graph with the runtime's token layout vs official-style
    points/boxes/text calls: 7 combos x batch 1..4, the point counts 1..16
    taken in turn (every count meets every combo with points)."""
    cases = O.decoder_cases(CONFIG, [1, 2, 3, 4], [1, 16, 2, 7], seed=3)
    parity = O.verify_decoder(exported[S.PROMPT_DECODER][1], model, specs[S.PROMPT_DECODER], CONFIG, cases)
    assert len(parity.cases) == 7 * 4
    assert parity.ok, max(parity.cases, key=lambda c: c["rel_l2"])
    assert {c["prompts"] for c in parity.cases} == {"+".join(c) for c in O.PROMPT_COMBOS}
    assert {c["tokens"] for c in parity.cases} >= {1, 2, 3, 4, 19}  # text .. 16 points + box + text


def test_decoder_token_axis_1_to_max(exported, model, specs):
    """Any N in 1..max (random valid token kinds) against the torch wrapper."""
    spec = specs[S.PROMPT_DECODER]
    session = exported[S.PROMPT_DECODER][1]
    wrapper = O.graph_module(model, S.PROMPT_DECODER)
    rng = np.random.default_rng(1)
    lo, _, hi = spec.ranges["N"]
    for n in range(lo, hi + 1):
        b = 1 + n % 4
        feeds = O.random_inputs(spec, CONFIG, {"B": b, "N": n}, rng)
        feeds["prompt_labels"][:] = rng.integers(S.LABEL_PAD, S.LABEL_TEXT + 1, size=(b, n))
        got = O.run_onnx(session, spec, feeds)["low_res_logits"]
        want = O.run_torch(wrapper, spec, feeds)["low_res_logits"]
        assert got.shape == (b, 1, *CONFIG.low_res_size)
        assert O.rel_l2(got, want) <= TOL, n


def test_wrapper_matches_official_style_decoder(model, specs):
    """The torch wrapper (staged LayerNorm) vs the model's official-style call."""
    wrapper = O.graph_module(model, S.PROMPT_DECODER)
    for case in O.decoder_cases(CONFIG, [1, 3], [1, 16], seed=4):
        emb = _emb(case.batch)
        got = O.run_torch(wrapper, specs[S.PROMPT_DECODER], O.decoder_feeds(emb, case, CONFIG.embed_dim))
        assert O.rel_l2(got["low_res_logits"], O.official_low_res(model, emb, case)) <= 1e-6, case.combo


def test_text_term_per_row(exported, model, specs):
    """Rows of one batch may differ in having text: each row equals its own
    official call, and text_embedding is ignored where no label-4 token is."""
    spec = specs[S.PROMPT_DECODER]
    session = exported[S.PROMPT_DECODER][1]
    rng = np.random.default_rng(5)
    with_text = O.random_case(("text", "box"), 1, 0, CONFIG, rng)  # box min, box max, text
    no_text = O.random_case(("points",), 1, 2, CONFIG, rng)  # 2 points, pad
    emb = _emb(2)
    rows = [O.decoder_feeds(emb[i : i + 1], c, CONFIG.embed_dim) for i, c in enumerate((with_text, no_text))]
    feeds = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    feeds["text_embedding"][1] = 1e3  # must not leak into row 1
    got = O.run_onnx(session, spec, feeds)["low_res_logits"]
    for i, case in enumerate((with_text, no_text)):
        want = O.official_low_res(model, emb[i : i + 1], case)
        assert O.rel_l2(got[i : i + 1], want) <= TOL
    feeds["text_embedding"][1] = 0.0
    again = O.run_onnx(session, spec, feeds)["low_res_logits"]
    np.testing.assert_array_equal(again[1], got[1])


def test_pad_token_ignores_coords(exported, specs):
    spec = specs[S.PROMPT_DECODER]
    session = exported[S.PROMPT_DECODER][1]
    case = O.random_case(("points",), 2, 3, CONFIG, np.random.default_rng(6))
    feeds = O.decoder_feeds(_emb(2), case, CONFIG.embed_dim)
    base = O.run_onnx(session, spec, feeds)["low_res_logits"]
    pads = feeds["prompt_labels"] == S.LABEL_PAD
    assert pads.any()
    feeds["prompt_coords"][pads] = 123.0
    np.testing.assert_array_equal(O.run_onnx(session, spec, feeds)["low_res_logits"], base)


def test_staged_layer_norm_equals_layer_norm():
    norm = torch.nn.LayerNorm((4, 3, 5, 6))
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    staged = O.StagedLayerNorm(norm)
    x = torch.randn(2, 4, 3, 5, 6) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(staged(x), norm(x), rtol=1e-5, atol=1e-5)
    module = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sequential(norm, torch.nn.LayerNorm(6)))
    copy = O.stage_volume_norms(module)
    assert isinstance(copy[1][0], O.StagedLayerNorm) and isinstance(copy[1][1], torch.nn.LayerNorm)
    assert isinstance(module[1][0], torch.nn.LayerNorm)  # the original is untouched


def test_rel_l2():
    assert O.rel_l2(np.ones(4), np.ones(4)) == 0.0
    assert O.rel_l2(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(0.5)
    with pytest.raises(SegVolError, match="shape"):
        O.rel_l2(np.ones(3), np.ones(4))
    parity = O.Parity("g")
    parity.add(float("nan"), batch=1)
    assert not parity.ok
    with pytest.raises(SegVolError, match="not faithful"):
        parity.require()


# -- full size -------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_export(tmp_path):
    """Official sizes, random weights: each graph exported, TensorRT-checked
    and within rel L2 1e-5 of torch on ORT at batch 1 (the decoder for every
    prompt combination). The files live in tmp_path only."""
    from segvol_rt.export.exporter import ExportOptions, export_graph

    config = SegVolConfig.official()
    model = SegVol.random(config, seed=11)
    specs = S.graph_specs(config)
    options = ExportOptions(image_batches=(1,), text_batches=(1,), decoder_batches=(1,), point_counts=(16,))
    for name in (S.IMAGE_ENCODER, S.PROMPT_DECODER, S.TEXT_ENCODER):
        result = export_graph(tmp_path, model, specs[name], config, options)
        assert result.parity is not None and result.parity.ok, result.parity.cases
        assert result.parity.max_rel_l2 <= TOL
        (tmp_path / result.file).unlink()  # keep the disk footprint to one graph
