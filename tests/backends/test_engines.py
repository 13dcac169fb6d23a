"""Engine records and compatibility checks (pure functions; no TensorRT, no GPU)."""

from __future__ import annotations

import pytest

from segvol_rt.backends.tensorrt import engines as E
from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig

MODEL = "a" * 64
GRAPH = "b" * 64
GPU = E.GpuIdentity("NVIDIA H200", "9.0")


def record(**changes) -> E.EngineRecord:
    fields = dict(
        graph=S.IMAGE_ENCODER,
        file=E.engine_file(S.IMAGE_ENCODER),
        sha256="c" * 64,
        precision="fp16",
        profiles={"image": {"min": [1, 1, 16, 64, 64], "opt": [8, 1, 16, 64, 64], "max": [8, 1, 16, 64, 64]}},
        tensorrt_version="10.7.0",
        gpu_name=GPU.name,
        compute_capability=GPU.compute_capability,
        model_sha256=MODEL,
        graph_sha256=GRAPH,
    )
    fields.update(changes)
    return E.EngineRecord(**fields)


def here(**changes):
    kwargs = dict(model_sha256=MODEL, graph_sha256=GRAPH, tensorrt_version="10.7.0", gpu=GPU)
    kwargs.update(changes)
    return kwargs


def test_matching_engine_passes():
    assert E.engine_mismatches(record(), **here()) == []
    E.check_engine(record(), **here())


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"model_sha256": "d" * 64}, ["model (checkpoint sha256)", "aaaaaaaaaaaa...", "dddddddddddd..."]),
        ({"graph_sha256": "e" * 64}, ["graph (ONNX sha256)", "bbbbbbbbbbbb...", "eeeeeeeeeeee..."]),
        ({"tensorrt_version": "10.3.0"}, ["TensorRT version", "'10.7.0'", "'10.3.0'"]),
        ({"gpu": E.GpuIdentity("NVIDIA A100-SXM4-80GB", "8.0")}, ["GPU", "'NVIDIA A100-SXM4-80GB'", "compute capability", "'8.0'"]),
        ({"gpu": E.GpuIdentity("NVIDIA H200", "9.1")}, ["compute capability: engine built for '9.0', here '9.1'"]),
    ],
)
def test_each_mismatch_is_named(changes, words):
    with pytest.raises(SegVolError) as info:
        E.check_engine(record(), **here(**changes))
    message = str(info.value)
    for word in words:
        assert word in message
    assert "segvol-rt build" in message and record().file in message
    assert "\n" not in message


def test_all_mismatches_reported_together():
    problems = E.engine_mismatches(
        record(),
        **here(model_sha256="0" * 64, tensorrt_version="10.0.1", gpu=E.GpuIdentity("Tesla T4", "7.5")),
    )
    assert [p.split(":")[0] for p in problems] == ["model (checkpoint sha256)", "TensorRT version", "GPU", "compute capability"]


def test_record_round_trip_and_validation():
    r = record()
    assert E.EngineRecord.from_dict(r.to_dict()) == r
    data = r.to_dict()
    del data["gpu_name"]
    with pytest.raises(SegVolError, match="gpu_name"):
        E.EngineRecord.from_dict(data)
    with pytest.raises(SegVolError, match="precision"):
        E.EngineRecord.from_dict({**r.to_dict(), "precision": "int8"})


def test_engine_records_and_has_engines():
    manifest = {"engines": {g: record(graph=g, file=E.engine_file(g)).to_dict() for g in S.GRAPH_NAMES}}
    records = E.engine_records(manifest)
    assert set(records) == set(S.GRAPH_NAMES) and E.has_engines(manifest)
    assert E.engine_records({}) == {} and not E.has_engines({})
    assert not E.has_engines({"engines": {S.IMAGE_ENCODER: record().to_dict()}})


def test_artifact_hashes():
    manifest = {"checkpoint": {"sha256": MODEL}, "graphs": {S.TEXT_ENCODER: {"sha256": GRAPH}}}
    assert E.artifact_hashes(manifest, S.TEXT_ENCODER) == (MODEL, GRAPH)
    with pytest.raises(SegVolError, match="export again"):
        E.artifact_hashes(manifest, S.IMAGE_ENCODER)


# -- profiles ------------------------------------------------------------------
@pytest.mark.parametrize("config", [SegVolConfig.tiny(), SegVolConfig.official()], ids=["tiny", "official"])
def test_profiles_of_all_three_graphs(config):
    specs = S.graph_specs(config)
    D, H, W = config.spatial_size
    C = config.embed_dim
    d, h, w = config.grid_size
    L = config.text.max_length
    p = {g: E.profile_shapes(specs[g]) for g in S.GRAPH_NAMES}
    assert p[S.IMAGE_ENCODER] == {
        "image": {"min": [1, 1, D, H, W], "opt": [8, 1, D, H, W], "max": [8, 1, D, H, W]},
    }
    assert p[S.TEXT_ENCODER] == {"token_ids": {"min": [1, L], "opt": [1, L], "max": [16, L]}}
    n_max = S.DEFAULT_MAX_POINTS + S.EXTRA_TOKENS
    assert p[S.PROMPT_DECODER] == {
        "image_embedding": {"min": [1, C, d, h, w], "opt": [1, C, d, h, w], "max": [8, C, d, h, w]},
        "prompt_coords": {"min": [1, 1, 3], "opt": [1, 3, 3], "max": [8, n_max, 3]},
        "prompt_labels": {"min": [1, 1], "opt": [1, 3], "max": [8, n_max]},
        "text_embedding": {"min": [1, C], "opt": [1, C], "max": [8, C]},
    }
    # Same numbers as GraphSpec.profile(), as lists.
    for g in S.GRAPH_NAMES:
        for name, (lo, opt, hi) in specs[g].profile().items():
            assert p[g][name] == {"min": list(lo), "opt": list(opt), "max": list(hi)}


def test_limits_lower_the_maxima_only():
    specs = S.graph_specs(SegVolConfig.tiny())
    limits = E.build_limits(max_batch=2, max_points=4)
    image = E.profile_shapes(specs[S.IMAGE_ENCODER], limits[S.IMAGE_ENCODER])["image"]
    assert image["min"][0] == 1 and image["opt"][0] == 2 and image["max"][0] == 2
    dec = E.profile_shapes(specs[S.PROMPT_DECODER], limits[S.PROMPT_DECODER])
    assert dec["prompt_coords"]["max"] == [2, 4 + S.EXTRA_TOKENS, 3]
    assert dec["prompt_coords"]["opt"] == [1, 3, 3]
    text = E.profile_shapes(specs[S.TEXT_ENCODER], limits[S.TEXT_ENCODER])
    assert text == E.profile_shapes(specs[S.TEXT_ENCODER])  # prompt count is never lowered


def test_limits_never_exceed_the_exported_range():
    specs = S.graph_specs(SegVolConfig.tiny(), max_batch=4, max_points=8)
    with pytest.raises(SegVolError, match=r"exceeds the exported range \[1, 4\]"):
        E.profile_shapes(specs[S.IMAGE_ENCODER], E.build_limits(8, None)[S.IMAGE_ENCODER])
    with pytest.raises(SegVolError, match="exceeds"):
        E.profile_shapes(specs[S.PROMPT_DECODER], E.build_limits(None, 9)[S.PROMPT_DECODER])
    with pytest.raises(SegVolError, match="at least 1"):
        E.build_limits(0, None)


def test_spec_for_profiles_narrows_validation():
    import numpy as np

    spec = S.graph_specs(SegVolConfig.tiny())[S.PROMPT_DECODER]
    profiles = E.profile_shapes(spec, E.build_limits(2, 2)[S.PROMPT_DECODER])
    narrowed = E.spec_for_profiles(spec, profiles)
    assert narrowed.ranges == {"B": (1, 1, 2), "N": (1, 3, 2 + S.EXTRA_TOKENS)}
    assert narrowed.inputs == spec.inputs and narrowed.outputs == spec.outputs
    c, (d, h, w) = 32, spec.inputs[0].shape[2:]
    feeds = {
        "image_embedding": np.zeros((3, c, d, h, w), np.float32),
        "prompt_coords": np.zeros((3, 2, 3), np.float32),
        "prompt_labels": np.zeros((3, 2), np.int32),
        "text_embedding": np.zeros((3, c), np.float32),
    }
    spec.validate_inputs(feeds)
    with pytest.raises(SegVolError, match=r"B=3 outside \[1, 2\]"):
        narrowed.validate_inputs(feeds)
    with pytest.raises(SegVolError, match="lacks input"):
        E.spec_for_profiles(spec, {"image_embedding": profiles["image_embedding"]})
