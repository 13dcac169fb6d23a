"""Artifacts whose hashes match but whose content is bad are refused in one
line naming the file (and, for the manifest, the JSON pointer of the field):
a truncated or garbage graph, the wrong graph in a slot, a manifest entry
without ``file``, a numeric sha256, an ``embed_dim`` that disagrees with the
graphs, a garbage text table. Also: the shipped JSON Schema, the additive
format rule, the graph IO check and the lazily opened text encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io import artifacts as A
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.digests import sha256_file

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
    from tests.support.tiny_artifacts import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


def _copy(tiny: Path, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    shutil.copytree(tiny, root)
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / A.MANIFEST).read_text())


def _save(root: Path, manifest: dict, rehash: bool = True) -> Path:
    """Write ``manifest`` with the sha256 of every listed file brought up to date,
    so only the content is bad, never a hash."""
    if rehash:
        for entry in manifest["graphs"].values():
            if isinstance(entry.get("file"), str) and (root / entry["file"]).is_file():
                entry["sha256"] = sha256_file(root / entry["file"])
        table = manifest.get("text_table") or {}
        if (root / table.get("file", "-")).is_file():
            table["sha256"] = sha256_file(root / table["file"])
    (root / A.MANIFEST).write_text(json.dumps(manifest))
    return root


def _open(root: Path):
    """What the runtime does on load: manifest, hashes, then the ONNX Runtime backend."""
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend

    artifacts = A.Artifacts.load(root)
    artifacts.verify()
    return OnnxRuntimeBackend(artifacts, device="cpu", threads=1)


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the graphs ----------------------------------------------------------------------------------


def _damage_graph(root: Path, graph: str, data: bytes) -> None:
    (root / f"{graph}.onnx").write_bytes(data)
    _save(root, _manifest(root))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_bad_graph_bytes_name_the_file(damage, tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    raw = (root / "image_encoder.onnx").read_bytes()
    data = {"truncated": raw[: len(raw) // 2], "garbage": bytes(range(256)) * 40, "empty": b""}[damage]
    _damage_graph(root, S.IMAGE_ENCODER, data)
    with pytest.raises(SegVolError) as info:
        _open(root)
    message = _one_line(info)
    assert f"cannot open the image_encoder graph {root / 'image_encoder.onnx'}" in message
    assert "not a valid ONNX graph" in message


def test_wrong_graph_in_a_slot(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    manifest = _manifest(root)
    manifest["graphs"][S.IMAGE_ENCODER]["file"] = "text_encoder.onnx"  # the text encoder's file as the image encoder
    _save(root, manifest)
    with pytest.raises(SegVolError) as info:
        _open(root)
    message = _one_line(info)
    assert "text_encoder.onnx is not the image_encoder graph its spec describes" in message
    assert "inputs ['token_ids'], the spec has ['image']" in message and "looks like the text_encoder graph" in message


def test_wrong_graph_in_the_lazy_text_slot_is_refused_when_opened(tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    manifest = _manifest(root)
    manifest["graphs"][S.TEXT_ENCODER]["file"] = "prompt_decoder.onnx"
    _save(root, manifest)
    backend = _open(root)  # the text encoder is not opened yet
    with pytest.raises(SegVolError, match="prompt_decoder.onnx is not the text_encoder graph .*looks like the prompt_decoder"):
        backend.encode_text(np.zeros((1, 77), np.int64))


def test_embed_dim_of_the_graphs_disagrees_with_a_consistent_manifest(tiny, tmp_path):
    """Config and specs say 64 channels; the graphs have 32: the session IO check says so."""
    root = _copy(tiny, tmp_path)
    manifest = _manifest(root)
    manifest["config"]["embed_dim"] = 64
    config = SegVolConfig.from_dict(manifest["config"])
    limits = {"max_batch": manifest["graphs"][S.IMAGE_ENCODER]["spec"]["ranges"]["B"][2], "max_points": 16}
    for name, spec in S.graph_specs(config, **limits).items():
        manifest["graphs"][name]["spec"] = spec.to_dict()
    _save(root, manifest)
    with pytest.raises(SegVolError) as info:
        _open(root)
    message = _one_line(info)
    assert "image_encoder.onnx is not the image_encoder graph" in message
    assert "output image_embedding has C=32, the spec says 64" in message


def test_session_io_check():
    from segvol_rt.backends.onnxruntime import check_session_io

    spec = S.graph_specs(SegVolConfig.tiny())[S.TEXT_ENCODER]

    def session(inputs, outputs):
        arg = lambda n, t, s: SimpleNamespace(name=n, type=t, shape=s)  # noqa: E731
        return SimpleNamespace(get_inputs=lambda: [arg(*i) for i in inputs], get_outputs=lambda: [arg(*o) for o in outputs])

    good_out = [("text_embedding", "tensor(float)", ["B", 32])]
    check_session_io(session([("token_ids", "tensor(int64)", ["batch", 77])], good_out), spec, Path("t.onnx"))
    check_session_io(session([("token_ids", "tensor(int64)", ["B", "L"])], good_out), spec, Path("t.onnx"))  # symbolic fixed dim
    bad = {
        "input token_ids is int32, the spec says int64": [("token_ids", "tensor(int32)", ["B", 77])],
        "input token_ids has shape ['B'], the spec says ['B', 77]": [("token_ids", "tensor(int64)", ["B"])],
        "input token_ids has L=76, the spec says 77": [("token_ids", "tensor(int64)", ["B", 76])],
        "input token_ids has a fixed B=1, the spec makes it dynamic": [("token_ids", "tensor(int64)", [1, 77])],
    }
    for words, inputs in bad.items():
        with pytest.raises(SegVolError, match=words.replace("[", r"\[").replace("]", r"\]")):
            check_session_io(session(inputs, good_out), spec, Path("t.onnx"))


# -- the manifest --------------------------------------------------------------------------------


def _edit(root: Path, edit) -> Path:
    manifest = _manifest(root)
    edit(manifest)
    return _save(root, manifest, rehash=False)


MANIFEST_CASES = {
    "entry without file": (lambda m: m["graphs"][S.IMAGE_ENCODER].pop("file"), "/graphs/image_encoder lists no field 'file'"),
    "numeric sha256": (
        lambda m: m["graphs"][S.PROMPT_DECODER].__setitem__("sha256", 12345),
        "/graphs/prompt_decoder/sha256 is 12345, expected string",
    ),
    "short sha256": (
        lambda m: m["graphs"][S.PROMPT_DECODER].__setitem__("sha256", "abc"),
        '/graphs/prompt_decoder/sha256 is "abc", not hex sha256',
    ),
    "embed_dim disagrees with the specs": (
        lambda m: m["config"].__setitem__("embed_dim", 64),
        "/graphs/image_encoder/spec/outputs/0/shape/1 is 32, expected 64 (axis C) for this config (embed_dim 64",
    ),
    "a path out of the directory": (
        lambda m: m["text_table"].__setitem__("file", "../elsewhere.npz"),
        '/text_table/file is "../elsewhere.npz", not a path inside the artifacts directory',
    ),
    "swapped specs": (
        lambda m: m["graphs"][S.IMAGE_ENCODER].__setitem__("spec", m["graphs"][S.TEXT_ENCODER]["spec"]),
        "/graphs/image_encoder/spec/name is 'text_encoder', expected 'image_encoder'",
    ),
    "inverted range": (
        lambda m: m["graphs"][S.PROMPT_DECODER]["spec"]["ranges"].__setitem__("N", [5, 3, 1]),
        "/graphs/prompt_decoder/spec/ranges/N is [5, 3, 1], not [min, opt, max]",
    ),
    "missing config field": (lambda m: m["config"].pop("patch_size"), "/config lists no field 'patch_size'"),
    "graphs as a list": (lambda m: m.__setitem__("graphs", []), "/graphs is [], expected object"),
    "text table count": (lambda m: m["text_table"].__setitem__("count", "91"), '/text_table/count is "91", expected integer'),
    "format_version as text": (lambda m: m.__setitem__("format_version", "1"), "format_version '1' is not supported"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest_fields_are_named_by_pointer(case, tiny, tmp_path):
    edit, words = MANIFEST_CASES[case]
    root = _edit(_copy(tiny, tmp_path), edit)
    with pytest.raises(SegVolError) as info:
        A.Artifacts.load(root)
    message = _one_line(info)
    assert message.startswith(f"{root / A.MANIFEST}: ") and words in message, message


def test_the_schema_is_shipped_and_is_draft_2020_12():
    from jsonschema import Draft202012Validator

    schema = A.manifest_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["format_version"]["enum"] == list(A.SUPPORTED_FORMATS)
    assert A.FORMAT_VERSION in A.SUPPORTED_FORMATS


def test_fresh_export_passes_the_schema(tiny):
    A.validate_manifest(_manifest(tiny), tiny / A.MANIFEST)


def test_changes_stay_additive(tiny, tmp_path):
    """Fields this reader does not know are accepted (outside the model config)."""
    root = _edit(_copy(tiny, tmp_path), lambda m: (m.__setitem__("added_later", {"x": 1}),
                                                   m["graphs"][S.IMAGE_ENCODER].__setitem__("notes", "new")))
    assert A.Artifacts.load(root).config.embed_dim == 32
    _edit(root, lambda m: m["config"].__setitem__("new_size", 3))
    with pytest.raises(SegVolError, match="/config: unknown SegVol config fields \\['new_size'\\]"):
        A.Artifacts.load(root)


# -- the text table ------------------------------------------------------------------------------


def _bad_npz(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    elif kind == "no embeddings":
        np.savez(path, names=np.array(["liver"]))
    elif kind == "object names":
        np.savez(path, names=np.array(["liver", None], dtype=object), embeddings=np.ones((2, 32), np.float32))
    elif kind == "a bare array":
        with open(path, "wb") as fh:
            np.save(fh, np.ones((2, 32), np.float32))
    elif kind == "NaN embeddings":
        np.savez(path, names=np.array(["liver"]), embeddings=np.full((1, 32), np.nan, np.float32))


@pytest.mark.parametrize(
    "kind, words",
    [
        ("garbage", "is not a readable text table"),
        ("no embeddings", "lacks the array(s) ['embeddings']"),
        ("object names", "is not a readable text table"),
        ("a bare array", "holds one array, not a text table archive"),
        ("NaN embeddings", "expected finite 2D floats"),
    ],
)
def test_bad_text_table(kind, words, tiny, tmp_path):
    root = _copy(tiny, tmp_path)
    _bad_npz(root / A.TEXT_TABLE, kind)
    _save(root, _manifest(root))
    artifacts = A.Artifacts.load(root)
    artifacts.verify()  # the hash matches
    with pytest.raises(SegVolError) as info:
        artifacts.text_table()
    message = _one_line(info)
    assert str(root / A.TEXT_TABLE) in message and words in message, message


# -- the text encoder opens only when a phrase needs it -----------------------------------------


def test_text_encoder_opens_only_for_a_phrase_outside_the_table(tiny):
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
    from segvol_rt.runtime import SegVolRuntime

    artifacts = A.Artifacts.load(tiny)
    backend = OnnxRuntimeBackend(artifacts, device="cpu", threads=1)
    assert sorted(backend.sessions) == [S.IMAGE_ENCODER, S.PROMPT_DECODER]
    rt = SegVolRuntime(artifacts, backend, "test")
    names, _ = artifacts.text_table()
    assert "liver" in names
    rt.text_embeddings(["liver", "Left Kidney"])  # table rows
    assert S.TEXT_ENCODER not in backend.sessions
    rt.text_embeddings(["a phrase outside the table"])
    assert S.TEXT_ENCODER in backend.sessions


def test_segment_with_a_table_name_never_opens_the_text_encoder(tiny):
    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.runtime import SegVolRuntime

    rt = SegVolRuntime.load(tiny, backend="onnxruntime", device="cpu")
    phantom = make_phantom(1, (64, 64, 24))
    rt.set_volume(phantom.image, phantom.affine)
    rt.segment(text="liver")
    assert S.TEXT_ENCODER not in rt.backend.sessions
    rt.segment(text="the liver, please")
    assert S.TEXT_ENCODER in rt.backend.sessions


def test_session_memory_options():
    from segvol_rt.backends import onnxruntime as B

    options = B.session_options(ort, 1, B.SessionMemory(arena=False, mem_pattern=False, prepacking=False))
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    defaults = B.session_options(ort, 1)
    assert defaults.enable_cpu_mem_arena and not defaults.enable_mem_pattern  # the measured defaults
    with pytest.raises(RuntimeError):  # prepacking stays on: the entry is never set
        defaults.get_session_config_entry("session.disable_prepacking")


def test_explicit_memory_options_reach_every_session(tiny):
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend, SessionMemory

    backend = OnnxRuntimeBackend(A.Artifacts.load(tiny), threads=1, memory=SessionMemory(mem_pattern=True))
    assert all(o.enable_mem_pattern for o in backend._options.values())
    out = backend.encode_text(np.zeros((2, 77), np.int64))
    assert out.shape == (2, 32) and np.isfinite(out).all()


def test_default_options_keep_results_exact(tiny):
    """The memory defaults change no bit: against the memory pattern on, and per row across batches."""
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend, SessionMemory

    artifacts = A.Artifacts.load(tiny)
    ours = OnnxRuntimeBackend(artifacts, threads=1)
    planned = OnnxRuntimeBackend(artifacts, threads=1, memory=SessionMemory(mem_pattern=True))
    D, H, W = artifacts.config.spatial_size
    image = np.random.default_rng(0).random((2, 1, D, H, W), dtype=np.float32)
    np.testing.assert_array_equal(ours.encode_image(image), planned.encode_image(image))
    np.testing.assert_array_equal(ours.encode_image(image[:1])[0], ours.encode_image(image)[0])
    ids = artifacts.tokenizer().encode_names(["phrase zero", "phrase one"], artifacts.prompt_template)
    np.testing.assert_array_equal(ours.encode_text(ids[:1])[0], ours.encode_text(ids)[0])


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_bad_graph_is_one_line(tiny, tmp_path):
    from segvol_rt.demo.phantom import make_phantom
    from tests.app.test_cli_infer import run_cli

    root = _copy(tiny, tmp_path)
    _damage_graph(root, S.PROMPT_DECODER, b"\x08\x07" + bytes(500))
    scan, _ = make_phantom(1, (64, 64, 24)).save(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    proc = run_cli(scan, "--text", "liver", "--artifacts", root, "--backend", "onnxruntime", "--out", tmp_path / "m.nii.gz")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open the prompt_decoder graph"), proc.stderr
    assert not (tmp_path / "m.nii.gz").exists()


def test_has_text_table(tiny, tmp_path):
    assert A.Artifacts.load(tiny).has_text_table
    root = _edit(_copy(tiny, tmp_path), lambda m: m.pop("text_table"))
    assert not A.Artifacts.load(root).has_text_table


def test_artifacts_path_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SegVolError, match="artifacts directory .*file is not a directory"):
        A.Artifacts.load(tmp_path / "file")
