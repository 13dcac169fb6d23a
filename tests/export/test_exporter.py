"""`segvol-rt export` end to end with a tiny model and a small trained
tokenizer (no ../shared needed), and its user errors."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segvol_rt.app.cli import app, main
from segvol_rt.errors import SegVolError
from segvol_rt.export import exporter as X
from segvol_rt.export import onnx as O
from segvol_rt.export import trt_support
from segvol_rt.export.checkpoint import save_hf, save_pth
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io import artifacts as A
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.tokenizer import ClipTokenizer, format_prompt, train_bpe
from segvol_rt.io.vocabulary import CATEGORIES

QUICK = X.ExportOptions(verify=False)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and idle OpenMP workers fight
    ORT's on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "clip"
    train_bpe([format_prompt(n) for n in CATEGORIES], 700, out)
    return out


@pytest.fixture(scope="module")
def config(tok_dir) -> SegVolConfig:
    """The tiny architecture with the trained tokenizer's ids (the text
    encoder pools at its end token)."""
    tok = ClipTokenizer.from_dir(tok_dir)
    tiny = SegVolConfig.tiny()
    text = dataclasses.replace(
        tiny.text, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
    )
    return dataclasses.replace(tiny, text=text)


@pytest.fixture(scope="module")
def model(config) -> SegVol:
    return SegVol.random(config, seed=5)


@pytest.fixture(scope="module")
def pth(model, tmp_path_factory):
    return save_pth(model, tmp_path_factory.mktemp("pth") / "tiny.pth")


@pytest.fixture(scope="module")
def hf_dir(model, tok_dir, tmp_path_factory):
    return save_hf(model, tmp_path_factory.mktemp("hf") / "segvol", tokenizer_files=tok_dir)


@pytest.fixture(scope="module")
def cli_export(hf_dir, tmp_path_factory):
    """One full CLI export (with verification) shared by the checks below."""
    out = tmp_path_factory.mktemp("cli") / "artifacts"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(hf_dir), "--out", str(out), "--max-batch", "4"])
    return out, result


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_cli_export_end_to_end(cli_export, config, model):
    out, result = cli_export
    assert result.exit_code == 0, result.output
    for stage in ("loading checkpoint", "image_encoder: exporting", "TensorRT check", "max rel L2", "text table"):
        assert stage in result.output
    for name in ("image_encoder.onnx", "text_encoder.onnx", "prompt_decoder.onnx", "text_table.npz", "tokenizer/"):
        assert name in result.output  # the summary table
    assert _leftovers(out.parent) == []

    art = A.Artifacts.load(out)
    art.verify()
    assert art.config == config
    assert art.specs == S.graph_specs(config, max_batch=4, max_points=S.DEFAULT_MAX_POINTS)
    m = art.manifest
    assert m["checkpoint"]["format"] == "hf" and len(m["checkpoint"]["sha256"]) == 64
    assert m["opset"] == 17 and m["prompt_template"] == config.prompt_template
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime", "numpy"}
    assert m["engines"] == {}
    for name in S.GRAPH_NAMES:
        graph = m["graphs"][name]
        assert graph["operators"] == trt_support.check_graph(art.graph_path(name)).operators
        assert graph["parity"]["max_rel_l2"] <= O.PARITY_TOLERANCE
    decoder_cases = m["graphs"][S.PROMPT_DECODER]["parity"]["cases"]
    assert {c["prompts"] for c in decoder_cases} == {"+".join(c) for c in O.PROMPT_COMBOS}
    assert {c["batch"] for c in decoder_cases} == {1, 2, 3, 4}


def test_artifacts_text_table_and_tokenizer(cli_export, tok_dir, model):
    out, _ = cli_export
    art = A.Artifacts.load(out)
    names, table = art.text_table()
    assert names == list(CATEGORIES) and table.dtype == np.float32
    tok = art.tokenizer()
    ids = tok.encode_names(names[:5], template=art.prompt_template)
    np.testing.assert_array_equal(ids, ClipTokenizer.from_dir(tok_dir).encode_names(names[:5]))
    # The table equals the exported text graph on the same ids.
    session = O.ort_session(art.graph_path(S.TEXT_ENCODER))
    got = O.run_onnx(session, art.specs[S.TEXT_ENCODER], {"token_ids": ids})["text_embedding"]
    assert O.rel_l2(got, table[:5]) <= O.PARITY_TOLERANCE
    with torch.no_grad():
        want = model.text_encoder(torch.from_numpy(ids)).numpy()  # batch 5 vs 16: last-bit differences
    np.testing.assert_allclose(table[:5], want, rtol=1e-5, atol=1e-6)


def test_pth_needs_tokenizer(pth, tmp_path):
    with pytest.raises(SegVolError, match="carries no CLIP tokenizer.*--tokenizer"):
        X.export_artifacts(pth, tmp_path / "a", options=QUICK)
    assert not (tmp_path / "a").exists() and _leftovers(tmp_path) == []


def test_pth_with_tokenizer_and_force(pth, tok_dir, tmp_path):
    out = tmp_path / "a"
    first = X.export_artifacts(pth, out, tokenizer=tok_dir, options=QUICK)
    assert first.manifest["checkpoint"]["format"] == "pth"
    assert first.manifest["graphs"][S.PROMPT_DECODER]["parity"] is None
    before = (out / A.MANIFEST).read_text()
    with pytest.raises(SegVolError, match="already exists; pass --force"):
        X.export_artifacts(pth, out, tokenizer=tok_dir, options=QUICK)
    assert (out / A.MANIFEST).read_text() == before
    (out / "stale.txt").write_text("old")
    X.export_artifacts(pth, out, tokenizer=tok_dir, options=QUICK, force=True)
    assert not (out / "stale.txt").exists()
    A.Artifacts.load(out).verify()
    assert _leftovers(tmp_path) == []


def test_force_refuses_foreign_directory(pth, tok_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SegVolError, match="not an artifacts directory"):
        X.export_artifacts(pth, out, tokenizer=tok_dir, options=QUICK, force=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_failure_leaves_previous_artifacts(pth, tok_dir, tmp_path, monkeypatch):
    out = tmp_path / "a"
    X.export_artifacts(pth, out, tokenizer=tok_dir, options=QUICK)
    before = (out / A.MANIFEST).read_text()

    def failing(path):
        report = trt_support.GraphReport(str(path), 17, {"Unique": 1}, ["Unique node 'u': not supported"])
        return report

    monkeypatch.setattr(X.trt_support, "check_graph", failing)
    with pytest.raises(SegVolError, match="would not parse in TensorRT"):
        X.export_artifacts(pth, out, tokenizer=tok_dir, options=QUICK, force=True)
    assert (out / A.MANIFEST).read_text() == before
    assert _leftovers(tmp_path) == []


def test_tokenizer_must_fit_the_text_encoder(tmp_path, tok_dir):
    official_ids = SegVol.random(SegVolConfig.tiny(), seed=1)  # pools at 49407, the trained tokenizer ends at 699
    ckpt = save_pth(official_ids, tmp_path / "m.pth")
    with pytest.raises(SegVolError, match="does not fit this checkpoint: end token id 699"):
        X.export_artifacts(ckpt, tmp_path / "a", tokenizer=tok_dir, options=QUICK)


def test_bad_options():
    with pytest.raises(SegVolError, match="opset >= 17"):
        X.ExportOptions(opset=13).check()
    with pytest.raises(SegVolError, match="--max-batch"):
        X.ExportOptions(max_batch=0).check()


# -- CLI user errors: one line on stderr, exit code 2 ----------------------------
def _run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["segvol-rt", "export", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.err


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "wrong_keys", "unwritable", "no_tokenizer", "exists"])
def test_cli_user_errors(case, tmp_path, monkeypatch, capsys, pth, tok_dir):
    out = tmp_path / "out"
    ckpt = pth
    extra = ["--tokenizer", tok_dir]
    if case == "missing":
        ckpt, expect = tmp_path / "nope.pth", "not found"
    elif case == "not_a_checkpoint":
        ckpt = tmp_path / "junk.pth"
        ckpt.write_bytes(b"\x00junk" * 100)
        expect = "junk.pth"
    elif case == "wrong_keys":
        ckpt = tmp_path / "keys.pth"
        torch.save({"model": {"module.foo.weight": torch.zeros(2)}}, ckpt)
        expect = "keys.pth"
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out, expect = blocker / "out", "cannot write the output directory"
    elif case == "no_tokenizer":
        extra, expect = [], "--tokenizer"
    else:
        out.mkdir()
        expect = "already exists"
    code, err = _run_main(monkeypatch, capsys, "--checkpoint", ckpt, "--out", out, "--skip-verify", *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0]
    assert "Traceback" not in err
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_manifest_is_json_with_relative_paths(cli_export):
    out, _ = cli_export
    data = json.loads((out / A.MANIFEST).read_text())
    for rel, _digest in A.Artifacts(out, data).files():
        assert not rel.startswith("/") and (out / rel).is_file()
