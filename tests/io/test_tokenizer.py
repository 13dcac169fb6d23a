"""CLIP tokenizer: the exact ids of Hugging Face's tokenizers (fast, as official
SegVol uses, and the slow python BPE), both loading routes, padding/truncation,
special ids from the files, and a trained CLIP-style tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io.config import PROMPT_TEMPLATE
from segvol_rt.io.tokenizer import ClipTokenizer, format_prompt, train_bpe
from segvol_rt.io.vocabulary import CATEGORIES
from tests.support.shared import shared_path

ODD = [
    "",
    "LIVER",
    "Left Kidney",
    "  left   kidney  ",
    "liver\tand\nspleen",
    "liver\u00a0kidney",
    "liver, spleen; pancreas!",
    "the patient's liver isn't big",
    "vertebrae L1-L5 and T12",
    "a 3.5cm lesion at 12 o'clock",
    "Müller's Gallenblase",
    "café naïve résumé",
    "inferior-vena-cava",
    "(portal vein) & [splenic vein]",
    "a/b\\c {x} <y> 50% #1 @home ~tilde",
    "e\u0301 vs \u00e9",  # combining accent: NFC makes them the same
    "emoji 🫁 lungs",
    "kidney kidney kidney",
    "tumour/tumor",
    " ".join(["very long text about the abdomen"] * 30),
]
PHRASES = [format_prompt(n) for n in CATEGORIES] + [format_prompt(t) for t in ODD] + ODD

# Ids the official SegVol pipeline feeds its text encoder (HF fast tokenizer).
KNOWN = {
    "A computerized tomography of a liver.": [49406, 320, 11639, 704, 7690, 999, 22399, 539, 320, 12639, 269, 49407],
    "A computerized tomography of a left kidney.": [
        49406, 320, 11639, 704, 7690, 999, 22399, 539, 320, 1823, 14610, 269, 49407,
    ],
}


def _write_merges(tokenizer_json: Path, out: Path) -> None:
    """merges.txt of the original CLIP layout, derived from tokenizer.json's model."""
    merges = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["merges"]
    lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
    out.write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> Path:
    """The CLIP files without tokenizer.json: vocab.json + merges.txt (+ side configs)."""
    src = shared_path("clip")
    out = tmp_path_factory.mktemp("clip_merges")
    for name in ("vocab.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    _write_merges(src / "tokenizer.json", out / "merges.txt")
    return out


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer.from_dir(shared_path("clip"))


@pytest.fixture(scope="module")
def hf_fast():
    """The tokenizer official SegVol loads (AutoTokenizer -> CLIPTokenizerFast)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(shared_path("clip")))


def test_format_prompt_uses_official_template():
    assert PROMPT_TEMPLATE == "A computerized tomography of a {}."
    assert format_prompt("liver") == "A computerized tomography of a liver."
    assert format_prompt("x", template="{} only") == "x only"


def test_known_ids(ours):
    for text, ids in KNOWN.items():
        assert ours.ids(text) == ids


def test_matches_hf_fast_tokenizer(ours, hf_fast):
    hf = hf_fast
    assert len(PHRASES) >= 50
    for text in PHRASES + ["中文 肝脏"]:
        assert ours.ids(text) == hf(text)["input_ids"], text


@pytest.mark.parametrize("route", ["tokenizer.json", "vocab+merges"])
def test_matches_hf_slow_clip_tokenizer(route, clip_dir, clip_files):
    transformers = pytest.importorskip("transformers")
    slow = transformers.CLIPTokenizer.from_pretrained(str(clip_files))  # python BPE
    tok = ClipTokenizer.from_dir(clip_dir if route == "tokenizer.json" else clip_files)
    for text in PHRASES:
        assert tok.ids(text) == slow(text)["input_ids"], text


def test_routes_agree(ours, clip_files):
    rebuilt = ClipTokenizer.from_files(clip_files / "vocab.json", clip_files / "merges.txt")
    np.testing.assert_array_equal(rebuilt.encode(PHRASES), ours.encode(PHRASES))
    assert (rebuilt.bos_id, rebuilt.eos_id, rebuilt.pad_id) == (ours.bos_id, ours.eos_id, ours.pad_id)


def test_encode_pads_to_context_length(ours):
    names = ["liver", "left kidney", "portal vein and splenic vein"]
    ids = ours.encode([format_prompt(n) for n in names])
    assert ids.shape == (3, 77) and ids.dtype == np.int64
    for row, name in zip(ids, names):
        body = ours.ids(format_prompt(name))
        assert row[: len(body)].tolist() == body
        assert (row[len(body) :] == ours.pad_id).all()
    np.testing.assert_array_equal(ours.encode_names(names), ids)
    assert ours.encode([]).shape == (0, 77)
    np.testing.assert_array_equal(ours.encode("liver"), ours.encode(["liver"]))


def test_official_batch_padding_is_a_prefix_of_ours(ours, hf_fast):
    """Official SegVol pads to the batch's longest text; ours pads on to 77 with the same id."""
    hf = hf_fast
    texts = [format_prompt(n) for n in ("liver", "portal vein and splenic vein", "right lung middle lobe")]
    official = np.asarray(hf(texts, padding=True)["input_ids"])
    ids = ours.encode(texts)
    np.testing.assert_array_equal(ids[:, : official.shape[1]], official)
    assert (ids[:, official.shape[1] :] == ours.pad_id).all()


def test_truncation_keeps_end_token(ours, hf_fast):
    long = " ".join(["very long text about the abdomen"] * 30)
    ids = ours.encode([long, "liver"])
    assert len(ours.ids(long)) > 77
    assert ids[0, 0] == ours.bos_id and ids[0, -1] == ours.eos_id
    assert ids[0, 1:-1].tolist() == ours.ids(long)[1:76]
    assert ids[0].tolist() == hf_fast(long, truncation=True, max_length=77)["input_ids"]


def test_special_ids_come_from_files(clip_files, tmp_path):
    vocab = json.loads((clip_files / "vocab.json").read_text(encoding="utf-8"))
    tok = ClipTokenizer.from_dir(clip_files)
    assert tok.bos_id == vocab["<|startoftext|>"] and tok.eos_id == vocab["<|endoftext|>"]
    assert tok.pad_id == tok.eos_id
    # A different pad token in the side config changes the pad id.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(clip_files / name, tmp_path / name)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}), encoding="utf-8")
    custom = ClipTokenizer.from_dir(tmp_path)
    assert custom.pad_id == vocab["!"] and custom.max_length == 16
    row = custom.encode(["liver"])[0]
    assert row.shape == (16,) and row[-1] == vocab["!"]
    assert ClipTokenizer.from_dir(tmp_path, max_length=77).max_length == 77


def test_bad_directories(tmp_path, clip_files):
    with pytest.raises(SegVolError, match="does not exist"):
        ClipTokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(SegVolError, match="holds no tokenizer"):
        ClipTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(SegVolError, match="cannot load tokenizer"):
        ClipTokenizer.from_dir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.json").write_text("[1, 2]", encoding="utf-8")
    (bad / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(SegVolError, match="not a JSON object"):
        ClipTokenizer.from_dir(bad)
    with pytest.raises(SegVolError, match="string"):
        ClipTokenizer.from_dir(clip_files).encode([3])


def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2/CLIP byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def test_train_bpe_round_trip(tmp_path):
    corpus = [format_prompt(n) for n in CATEGORIES] * 3
    out = tmp_path / "tok"
    trained = train_bpe(corpus, 700, out)
    assert (out / "tokenizer.json").is_file()
    loaded = ClipTokenizer.from_dir(out)
    assert loaded.vocab_size == trained.vocab_size == 700
    # As in CLIP: start and end tokens take the last ids, the end token is also the pad.
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (698, 699, 699)
    np.testing.assert_array_equal(loaded.encode(PHRASES), trained.encode(PHRASES))
    assert loaded.encode(PHRASES).max() < loaded.vocab_size
    # No input is lost: the tokens spell the normalised text (words end in </w>).
    decoder = _byte_decoder()
    for text in ["Liver tumour", "Müller 中文 zq 🫁", "a 3.5cm lesion"]:
        tokens = [loaded._tok.id_to_token(i) for i in loaded.ids(text)[1:-1]]
        words = "".join(tokens).split("</w>")
        spelled = "".join(bytes(decoder[c] for c in w).decode("utf-8") for w in words)
        assert spelled == "".join(text.lower().split())


def test_train_bpe_small_corpus_and_limits(tmp_path):
    tok = train_bpe(["liver kidney"], 600, tmp_path / "t")
    assert tok.vocab_size <= 600 and tok.eos_id == tok.vocab_size - 1
    with pytest.raises(SegVolError, match="vocab_size"):
        train_bpe(["liver"], 300, tmp_path / "u")
