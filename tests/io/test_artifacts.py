"""Manifest read/write and hash checks on a hand-made artifacts directory
(a real export is checked in tests/export/test_exporter.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io import artifacts as A
from segvol_rt.io import digests
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.digests import sha256_file


def _make(root, config=None):
    """A minimal artifacts dir: dummy graph bytes, a tokenizer file, a text table."""
    config = config or SegVolConfig.tiny()
    root.mkdir()
    specs = S.graph_specs(config)
    graphs = {}
    for name, spec in specs.items():
        (root / spec.file).write_bytes(name.encode() * 10)
        graphs[name] = {"file": spec.file, "sha256": sha256_file(root / spec.file), "spec": spec.to_dict(),
                        "operators": {}, "parity": {}}
    (root / A.TOKENIZER_DIR).mkdir()
    (root / A.TOKENIZER_DIR / "vocab.json").write_text("{}")
    names = np.array(["liver", "spleen"])
    np.savez(root / A.TEXT_TABLE, names=names, embeddings=np.ones((2, config.embed_dim), np.float32))
    manifest = {
        "format_version": A.FORMAT_VERSION,
        "config": config.to_dict(),
        "prompt_template": config.prompt_template,
        "graphs": graphs,
        "tokenizer": {"dir": A.TOKENIZER_DIR, "files": {"vocab.json": sha256_file(root / "tokenizer/vocab.json")}},
        "text_table": {"file": A.TEXT_TABLE, "sha256": sha256_file(root / A.TEXT_TABLE), "count": 2},
        "engines": {},
    }
    A.write_manifest(root, manifest)
    return root


def test_load_and_verify(tmp_path):
    root = _make(tmp_path / "art")
    art = A.Artifacts.load(root)
    assert art.config == SegVolConfig.tiny()
    assert set(art.specs) == set(S.GRAPH_NAMES)
    assert art.specs[S.PROMPT_DECODER] == S.graph_specs(SegVolConfig.tiny())[S.PROMPT_DECODER]
    assert art.graph_path(S.IMAGE_ENCODER) == root / "image_encoder.onnx"
    art.verify()
    names, table = art.text_table()
    assert names == ["liver", "spleen"] and table.shape == (2, 32) and table.dtype == np.float32
    assert art.prompt_template == SegVolConfig.tiny().prompt_template
    assert not list(root.glob(".manifest-*"))  # the temporary file was renamed


def test_missing_jsonschema_is_a_clear_error_not_a_skipped_check(tmp_path, monkeypatch):
    """The manifest is validated or not loaded: without jsonschema (as on the
    lent GPU machine, unless benchmarks/device/ carries its wheels) one line names it."""
    import sys

    monkeypatch.setenv("SEGVOL_RT_CACHE", str(tmp_path / "cache"))  # no record that it passed before
    root = _make(tmp_path / "art")
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(SegVolError, match=r"jsonschema is needed for checking the artifacts' manifest"):
        A.Artifacts.load(root)


def test_hash_mismatch_names_the_file(tmp_path):
    root = _make(tmp_path / "art")
    (root / "prompt_decoder.onnx").write_bytes(b"changed")
    with pytest.raises(SegVolError, match="prompt_decoder.onnx does not match"):
        A.Artifacts.load(root).verify()
    root2 = _make(tmp_path / "art2")
    (root2 / "tokenizer/vocab.json").unlink()
    with pytest.raises(SegVolError, match="vocab.json is listed .* but missing"):
        A.Artifacts.load(root2).verify()


def test_engine_entries_are_checked(tmp_path):
    root = _make(tmp_path / "art")
    art = A.Artifacts.load(root)
    (root / "engines").mkdir()
    (root / "engines/x.plan").write_bytes(b"engine")
    art.update(engines={"x": {"file": "engines/x.plan", "sha256": sha256_file(root / "engines/x.plan")}})
    A.Artifacts.load(root).verify()
    (root / "engines/x.plan").write_bytes(b"other")
    with pytest.raises(SegVolError, match="x.plan does not match"):
        A.Artifacts.load(root).verify()
    A.Artifacts.load(root).verify(engines=False)  # the ONNX-only path ignores engines


def test_verify_files_checks_each_file_once(tmp_path, monkeypatch):
    """``verify_files`` hashes what it is given, and a file it checked already is not
    read again (``auto`` checks the files of each backend it tries)."""
    root = _make(tmp_path / "art")
    art = A.Artifacts.load(root)
    hashed = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    art.verify_files(art.graph_files("fp32"))
    assert sorted(hashed) == sorted(f"{g}.onnx" for g in S.GRAPH_NAMES)
    art.verify_files([*art.graph_files("fp32"), *art.support_files()])
    assert len(hashed) == len(S.GRAPH_NAMES) + len(art.support_files())
    assert {rel for rel, _ in art.files()} == {rel for rel, _ in [*art.graph_files(), *art.support_files()]}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: shutil.rmtree(root), "does not exist"),
        (lambda root: (root / A.MANIFEST).unlink(), "has no manifest.json"),
        (lambda root: (root / A.MANIFEST).write_text("{not json"), "not valid JSON"),
        (lambda root: (root / A.MANIFEST).write_text("[1, 2]"), "JSON object"),
        (lambda root: _set(root, format_version=99), "format_version 99 is not supported"),
        (lambda root: _set(root, graphs={}), "lists no graph"),
        (lambda root: _set(root, config={"bogus": 1}), "unknown SegVol config fields"),
    ],
)
def test_clear_errors(tmp_path, damage, message):
    root = _make(tmp_path / "art")
    damage(root)
    with pytest.raises(SegVolError, match=message):
        A.Artifacts.load(root)


def test_text_table_shape_is_checked(tmp_path):
    root = _make(tmp_path / "art")
    np.savez(root / A.TEXT_TABLE, names=np.array(["a"]), embeddings=np.ones((1, 7), np.float32))
    with pytest.raises(SegVolError, match="does not fit"):
        A.Artifacts.load(root).text_table()


def test_unknown_graph_name(tmp_path):
    art = A.Artifacts.load(_make(tmp_path / "art"))
    with pytest.raises(SegVolError, match="no graph 'nope'"):
        art.graph_path("nope")


def _set(root, **fields):
    data = json.loads((root / A.MANIFEST).read_text())
    data.update(fields)
    (root / A.MANIFEST).write_text(json.dumps(data))
