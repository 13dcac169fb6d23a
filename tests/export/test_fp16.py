"""fp16 graph variants (``segvol-rt export --precision fp16``) against fp32, on
ONNX Runtime CPU: what each export records, the TensorRT operator/type check,
the fp32-kept ops and nodes, why the decoder's Casts are kept fp32, masks of
the demo model through the whole pipeline on held-out phantoms, and (slow)
the full-size image encoder's embedding error."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import onnx
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.export import fp16 as F
from segvol_rt.export import trt_support
from segvol_rt.io import spec as S
from segvol_rt.io.artifacts import Artifacts

ort = pytest.importorskip("onnxruntime")

KEPT_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Sqrt", "Sin", "Cos")


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def test_each_export_records_its_fp16_variants(fresh_demo_artifacts):
    """Every graph has an fp16 variant: listed with its hash, its conversion and its
    own parity against the fp32 graph (within tolerance), same IO, hashes verified."""
    arts = Artifacts.load(fresh_demo_artifacts)
    arts.verify()  # the variants' hashes too
    assert arts.precisions == ("fp32", "fp16")
    for name in S.GRAPH_NAMES:
        entry = arts.graph_entry(name, "fp16")
        assert entry["file"] == name + ".fp16.onnx"
        assert entry["conversion"]["keep_io_types"] is True and "onnxconverter-common" in entry["conversion"]["tool"]
        assert set(KEPT_FP32) <= set(entry["conversion"]["fp32_ops"])
        parity = entry["parity"]
        assert parity["reference"].startswith("the fp32 graph") and parity["cases"]
        assert 0 < parity["max_rel_l2"] <= F.FP16_TOLERANCE
        session = ort.InferenceSession(str(arts.graph_path(name, "fp16")), providers=["CPUExecutionProvider"])
        spec = arts.specs[name]
        assert [(i.name, i.type) for i in session.get_inputs()] == [
            (t.name, {"float32": "tensor(float)", "int64": "tensor(int64)", "int32": "tensor(int32)"}[t.dtype])
            for t in spec.inputs
        ]
        assert [o.type for o in session.get_outputs()] == ["tensor(float)"] * len(spec.outputs)


def test_every_fp16_graph_passes_the_tensorrt_check(fresh_demo_artifacts):
    arts = Artifacts.load(fresh_demo_artifacts)
    for name in S.GRAPH_NAMES:
        report = trt_support.check_graph(arts.graph_path(name, "fp16"))
        assert report.ok, report.problems


def test_norms_softmax_reductions_and_the_staged_layernorm_run_in_fp32(fresh_demo_artifacts):
    """Weights are fp16; the kept op types and every node of the decoder's
    two-stage LayerNorm read and write float32."""
    arts = Artifacts.load(fresh_demo_artifacts)
    float_, half = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    for name in S.GRAPH_NAMES:
        model = onnx.load(str(arts.graph_path(name, "fp16")))
        types = _types(model)
        weights = [i.data_type for i in model.graph.initializer if i.data_type in (float_, half)]
        assert weights.count(half) > weights.count(float_), name  # the bulk of the weights is fp16
        for node in model.graph.node:
            staged = name == S.PROMPT_DECODER and node.name.startswith("/mask_decoder/output_upscaling/output_upscaling.1/")
            if node.op_type in KEPT_FP32 or (staged and node.op_type not in ("Constant", "Cast")):  # Casts: the edges
                data = [types.get(t) for t in (node.input[0], *node.output) if t]
                assert half not in data, (name, node.name, data)


def test_plain_conversion_of_the_decoder_fails_at_a_cast_node(fresh_demo_artifacts, tmp_path):
    """Why Casts to float stay fp32: without it the converter retypes their outputs
    but not their ``to``, and ONNX Runtime refuses the decoder."""
    from onnxconverter_common import float16

    model = onnx.load(str(Artifacts.load(fresh_demo_artifacts).graph_path(S.PROMPT_DECODER)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = float16.convert_float_to_float16(model, keep_io_types=True)
    path = tmp_path / "plain.onnx"
    onnx.save(plain, str(path))
    with pytest.raises(Exception, match=r"Type Error.*Cast"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_scope_prefixes_cover_called_and_uncalled_containers():
    assert F.scope_prefixes("mask_decoder.output_upscaling.1") == [
        "/mask_decoder/output_upscaling.1/", "/mask_decoder/output_upscaling/output_upscaling.1/"]
    with pytest.raises(SegVolError, match="no node of module"):
        F.fp32_nodes(onnx.ModelProto(), ["mask_decoder.nowhere"])
    assert F.fp16_file("prompt_decoder.onnx") == "prompt_decoder.fp16.onnx"


# -- the whole pipeline: masks of fp16 against fp32 ----------------------------------
PROMPT_KINDS = ("text", "text+box", "box", "points")


def _prompts(mask: np.ndarray, kind: str) -> dict:
    from segvol_rt.pipeline import prompts as P

    parts = set(kind.split("+"))
    out: dict = {}
    if "box" in parts:
        out["box"] = P.generate_box(mask)
    if "points" in parts:
        idx = np.argwhere(mask)
        best = idx[np.argmin(((idx - idx.mean(axis=0)) ** 2).sum(axis=1))]
        out["points"] = [(*map(int, best), 1)]
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def test_fp16_masks_match_fp32_on_held_out_phantoms(fresh_demo_artifacts):
    """The demo model through zoom-out-zoom-in on two held-out phantoms, every
    organ and prompt kind: Dice of the fp16 mask against the fp32 mask."""
    from segvol_rt import SegVolRuntime
    from segvol_rt.demo.phantom import PHANTOM_LABELS
    from segvol_rt.export.demo_training.cases import validation_phantoms

    runtimes = {p: SegVolRuntime.load(fresh_demo_artifacts, backend="onnxruntime", device="cpu", precision=p)
                for p in ("fp32", "fp16")}
    assert runtimes["fp16"].backend.precision == "fp16" and "(fp16)" in runtimes["fp16"].backend_reason
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for phantom in validation_phantoms(2):
        for rt in runtimes.values():
            rt.set_volume(phantom.image.astype(np.float32), phantom.affine)
        for organ in sorted(phantom.label_names):
            truth = phantom.labels == organ
            name = PHANTOM_LABELS[organ]
            for kind in PROMPT_KINDS:
                text = name if "text" in kind else None
                masks = [rt.segment(text, window_prompts="aligned", **_prompts(truth, kind)).mask > 0
                         for rt in runtimes.values()]
                scores[(name, kind)].append(_dice(*masks))
    per_organ: dict[str, list[float]] = defaultdict(list)
    for (name, _kind), values in scores.items():
        per_organ[name] += values
    worst = min(per_organ, key=lambda n: float(np.mean(per_organ[n])))
    mean = float(np.mean([v for values in scores.values() for v in values]))
    print(f"fp16 vs fp32 mask Dice: mean {mean:.4f}; worst organ {worst} {np.mean(per_organ[worst]):.4f}; "
          + ", ".join(f"{k}: {np.mean([v for (n, kk), vs in scores.items() if kk == k for v in vs]):.4f}"
                      for k in PROMPT_KINDS))
    assert mean >= 0.98
    assert min(v for values in scores.values() for v in values) >= 0.9


# -- full size ------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_image_encoder_fp16_embedding_error(tmp_path):
    """Official sizes, random weights: the fp16 image encoder's embedding of one
    window within 1e-2 relative L2 of the fp32 graph's (measured: 5.5e-4)."""
    torch = pytest.importorskip("torch")
    from segvol_rt.export import onnx as O
    from segvol_rt.export.model.segvol import SegVol
    from segvol_rt.io.config import SegVolConfig

    config = SegVolConfig.official()
    torch.manual_seed(0)
    model = SegVol.random(config, seed=5)
    spec = S.graph_specs(config)[S.IMAGE_ENCODER]
    module = O.graph_module(model, S.IMAGE_ENCODER)
    example = O.random_inputs(spec, config, {"B": 1}, np.random.default_rng(0))
    src = O.export_graph(module, spec, example, tmp_path / "image_encoder.onnx")
    del model, module
    dst = F.convert_graph(src, tmp_path / "image_encoder.fp16.onnx").path
    feeds = O.random_inputs(spec, config, {"B": 1}, np.random.default_rng(1))
    want = O.run_onnx(O.ort_session(src), spec, feeds)["image_embedding"]
    got = O.run_onnx(O.ort_session(dst), spec, feeds)["image_embedding"]
    assert O.rel_l2(got, want) <= 1e-2
