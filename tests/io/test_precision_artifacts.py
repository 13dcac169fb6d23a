"""Graph variants in the manifest: additive (artifacts without them load as
fp32-only), hashed like the graphs, checked by the schema, and picked by
``precision`` in every ONNX Runtime backend. On copies of the shipped demo
artifacts (which carry fp16 variants); no torch needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.demo.model import shipped_artifacts_dir
from segvol_rt.errors import SegVolError
from segvol_rt.io import artifacts as A
from segvol_rt.io import spec as S


@pytest.fixture
def demo(tmp_path) -> Path:
    return Path(shutil.copytree(shipped_artifacts_dir(), tmp_path / "art"))


def _edit(root: Path, change) -> None:
    manifest = json.loads((root / A.MANIFEST).read_text())
    change(manifest)
    (root / A.MANIFEST).write_text(json.dumps(manifest))


def test_artifacts_without_variants_load_as_fp32_only(demo):
    def drop(m):
        for g in m["graphs"].values():
            g.pop("variants")

    _edit(demo, drop)
    for name in S.GRAPH_NAMES:
        (demo / f"{name}.fp16.onnx").unlink()
    arts = A.Artifacts.load(demo)
    arts.verify()
    assert arts.precisions == ("fp32",)
    with pytest.raises(SegVolError, match=r"has no fp16 graphs \(exported at fp32\); export them: segvol-rt export --precision fp16"):
        arts.graph_path(S.IMAGE_ENCODER, "fp16")


def test_variant_files_are_hashed_and_schema_checked(demo):
    arts = A.Artifacts.load(demo)
    assert arts.precisions == ("fp32", "fp16")
    with open(demo / "prompt_decoder.fp16.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SegVolError, match=r"prompt_decoder.fp16.onnx does not match manifest.json"):
        arts.verify()
    _edit(demo, lambda m: m["graphs"]["text_encoder"]["variants"]["fp16"].pop("sha256"))
    with pytest.raises(SegVolError, match=r"/graphs/text_encoder/variants/fp16 lists no field 'sha256'"):
        A.Artifacts.load(demo)
    _edit(demo, lambda m: m["graphs"]["text_encoder"]["variants"]["fp16"].update(sha256="0" * 64, file="../x.onnx"))
    with pytest.raises(SegVolError, match=r"/graphs/text_encoder/variants/fp16/file"):
        A.Artifacts.load(demo)


def test_a_variant_missing_for_one_graph_means_no_fp16(demo):
    _edit(demo, lambda m: m["graphs"]["text_encoder"].pop("variants"))
    arts = A.Artifacts.load(demo)
    assert arts.precisions == ("fp32",)


def test_the_onnxruntime_backend_runs_the_asked_variant(demo):
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend

    arts = A.Artifacts.load(demo)
    image = np.random.default_rng(0).random((1, 1, *arts.config.spatial_size), dtype=np.float32)
    out = {}
    for precision in ("fp32", "fp16"):
        backend = OnnxRuntimeBackend(arts, precision=precision, threads=1)
        assert backend.precision == precision and f"{precision})" in backend.describe()
        assert backend._paths[S.IMAGE_ENCODER].name == ("image_encoder.fp16.onnx" if precision == "fp16" else "image_encoder.onnx")
        out[precision] = backend.encode_image(image)
    assert out["fp16"].dtype == np.float32  # fp32 IO for both variants
    rel = np.linalg.norm(out["fp16"] - out["fp32"]) / np.linalg.norm(out["fp32"])
    assert 0 < rel < 2e-2
    with pytest.raises(SegVolError, match="precision must be one of fp32, fp16"):
        OnnxRuntimeBackend(arts, precision="bf16")
