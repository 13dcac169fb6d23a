"""CLIP byte-level BPE tokenizer for SegVol's text prompts, through ``tokenizers``.

Official SegVol tokenizes ``"A computerized tomography of a {name}."`` with
Hugging Face's fast CLIP tokenizer. :class:`ClipTokenizer` gives the same ids
(``<|startoftext|> tokens... <|endoftext|>``), then truncates to the text
encoder's context length ``L`` (77) keeping the end token last, and pads with
the pad id. The official code pads only to the longest text of the batch; the
extra padding changes nothing, because CLIP's causal attention never lets the
pooled end token look at later positions.

Two ways to load a tokenizer directory:

* ``tokenizer.json`` (what the official repository and Hugging Face ship);
* ``vocab.json`` + ``merges.txt`` (the original CLIP files): the pipeline is
  rebuilt here with CLIP's normalisation and pre-tokenisation.

Special-token names come from ``special_tokens_map.json`` /
``tokenizer_config.json`` when present, and their ids from the vocabulary,
never from constants. Runtime dependencies: numpy and ``tokenizers``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.io.atomic import atomic_write_text
from segvol_rt.io.config import PROMPT_TEMPLATE

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
DEFAULT_MAX_LENGTH = 77

# CLIP's word splitter: its special tokens, English contractions, runs of
# letters, single digits, and runs of other non-space symbols.
CLIP_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
END_OF_WORD = "</w>"

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def format_prompt(name: str, template: str = PROMPT_TEMPLATE) -> str:
    """The sentence SegVol's text encoder sees for a target name."""
    return template.format(name)


# -- the CLIP pipeline, built from parts ---------------------------------------
def _clip_pipeline(tok: Tokenizer, bos_id: int, eos_id: int) -> None:
    """Install CLIP's normaliser, pre-tokeniser, post-processor and decoder on ``tok``."""
    tk = require("tokenizers")
    n, pt = tk.normalizers, tk.pre_tokenizers
    tok.normalizer = n.Sequence([n.NFC(), n.Replace(tk.Regex(r"\s+"), " "), n.Lowercase()])
    tok.pre_tokenizer = pt.Sequence(
        [
            pt.Split(tk.Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pt.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.post_processor = tk.processors.RobertaProcessing(
        sep=(EOS_TOKEN, eos_id), cls=(BOS_TOKEN, bos_id), trim_offsets=False, add_prefix_space=False
    )
    tok.decoder = tk.decoders.ByteLevel()


def _read_merges(path: Path, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merge rules of a ``merges.txt``: skip the ``#version`` header and blank lines.

    The original CLIP file lists more merges than its vocabulary uses; only
    merges whose result is in the vocabulary are kept (as CLIP itself does).
    """
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SegVolError(f"{path}: malformed merge line {line!r} (expected two tokens)")
        if parts[0] + parts[1] in vocab:
            merges.append((parts[0], parts[1]))
    return merges


def build_clip_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A ``tokenizers.Tokenizer`` equal to CLIP's from its vocabulary and merges."""
    tk = require("tokenizers")
    for name in (BOS_TOKEN, EOS_TOKEN):
        if name not in vocab:
            raise SegVolError(f"the vocabulary has no {name} token; not a CLIP vocabulary")
    model = tk.models.BPE(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        continuing_subword_prefix="",
        end_of_word_suffix=END_OF_WORD,
        fuse_unk=False,
    )
    tok = tk.Tokenizer(model)
    _clip_pipeline(tok, vocab[BOS_TOKEN], vocab[EOS_TOKEN])
    tok.add_special_tokens(
        [tk.AddedToken(BOS_TOKEN, normalized=True), tk.AddedToken(EOS_TOKEN, normalized=False)]
    )
    return tok


# -- special-token names from the Hugging Face side files ---------------------
def _token_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegVolError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SegVolError(f"{path} is not a JSON object")
    return data


def _side_config(directory: Path) -> dict[str, Any]:
    """Merged ``tokenizer_config.json`` and ``special_tokens_map.json`` (the latter wins)."""
    merged: dict[str, Any] = {}
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        if (directory / name).is_file():
            merged.update(_read_json(directory / name))
    return merged


class ClipTokenizer:
    """Text -> CLIP token ids ``(B, L)`` int64, padded to the encoder's context length.

    ``bos_id``/``eos_id``/``pad_id`` are looked up in the tokenizer's vocabulary
    by name; ``max_length`` is ``L``.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str | None = None,
    ) -> None:
        if int(max_length) < 2:
            raise SegVolError(f"max_length must be at least 2 (start and end tokens), got {max_length}")
        self._tok = tokenizer
        # Truncation and padding are ours (numpy); the library must not do either.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_length = int(max_length)
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.bos_id = self._id_of(self.bos_token)
        self.eos_id = self._id_of(self.eos_token)
        self.pad_id = self._id_of(self.pad_token)

    def _id_of(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise SegVolError(f"tokenizer has no token {token!r}")
        return int(idx)

    # -- loading --------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], max_length: int | None = None) -> ClipTokenizer:
        """Load ``tokenizer.json``, or else ``vocab.json`` + ``merges.txt``, from ``path``.

        ``max_length`` defaults to ``model_max_length`` of ``tokenizer_config.json``
        when it is a sensible number, else 77.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise SegVolError(f"tokenizer directory {directory} does not exist")
        if (directory / TOKENIZER_JSON).is_file():
            side = _side_config(directory)
            tok = _load_tokenizer_json(directory / TOKENIZER_JSON)
            if max_length is None:
                max_length = _config_max_length(side)
            return cls(tok, max_length=max_length, **_names(side))
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return cls.from_files(directory / "vocab.json", directory / "merges.txt", max_length=max_length)
        raise SegVolError(f"{directory} holds no tokenizer: expected {TOKENIZER_JSON}, or vocab.json and merges.txt")

    @classmethod
    def from_files(
        cls,
        vocab_file: str | os.PathLike[str],
        merges_file: str | os.PathLike[str],
        *,
        max_length: int | None = None,
        **names: str,
    ) -> ClipTokenizer:
        """Rebuild CLIP's tokenizer from ``vocab.json`` and ``merges.txt``."""
        vocab_path, merges_path = Path(vocab_file), Path(merges_file)
        for p in (vocab_path, merges_path):
            if not p.is_file():
                raise SegVolError(f"tokenizer file {p} does not exist")
        vocab = _read_json(vocab_path)
        if not all(isinstance(v, int) for v in vocab.values()):
            raise SegVolError(f"{vocab_path} is not a token -> id mapping")
        tok = build_clip_bpe(vocab, _read_merges(merges_path, vocab))
        side = _side_config(vocab_path.parent)
        if max_length is None:
            max_length = _config_max_length(side)
        return cls(tok, max_length=max_length, **{**_names(side), **names})

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` so ``from_dir`` reloads this tokenizer."""
        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / TOKENIZER_JSON, self._tok.to_str())
        config = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.eos_token,
            "model_max_length": self.max_length,
        }
        atomic_write_text(directory / TOKENIZER_CONFIG, json.dumps(config, indent=2))
        return directory

    # -- encoding -------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (rows the embedding table needs)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def ids(self, text: str) -> list[int]:
        """Unpadded, untruncated ids: ``[bos, tokens..., eos]``."""
        if not isinstance(text, str):
            raise SegVolError(f"text prompt must be a string, got {type(text).__name__}")
        body = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *body, self.eos_id]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids ``(B, L)`` int64: start, tokens, end, then pad; cut to ``L`` with the end token kept last."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise SegVolError(f"text prompt must be a string, got {type(t).__name__}")
        out = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        bodies = self._tok.encode_batch(texts, add_special_tokens=False) if texts else []
        keep = self.max_length - 2
        for row, enc in zip(out, bodies):
            body = enc.ids[:keep]
            row[0] = self.bos_id
            row[1 : 1 + len(body)] = body
            row[1 + len(body)] = self.eos_id
        return out

    def encode_names(self, names: Iterable[str], template: str = PROMPT_TEMPLATE) -> np.ndarray:
        """``encode`` of each target name put through the prompt template."""
        return self.encode([format_prompt(n, template) for n in names])


def _load_tokenizer_json(path: Path) -> Any:
    tk = require("tokenizers")
    try:
        return tk.Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exception for bad files
        raise SegVolError(f"cannot load tokenizer {path}: {exc}") from exc


def _names(side: dict[str, Any]) -> dict[str, str]:
    names = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        name = _token_name(side.get(key))
        if name is not None:
            names[key] = name
    return names


def _config_max_length(side: dict[str, Any]) -> int:
    value = side.get("model_max_length")
    # Hugging Face writes a huge sentinel (1e30) when the length is unset.
    if isinstance(value, int) and 2 <= value <= 100_000:
        return value
    return DEFAULT_MAX_LENGTH


# -- training a small CLIP-style tokenizer (demo model) -----------------------
def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike[str],
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> ClipTokenizer:
    """Train a CLIP-style byte-level BPE on ``texts`` and save it to ``out_dir``.

    Same normalisation, splitting, ``</w>`` suffix and special tokens as CLIP.
    As in CLIP, every byte has a symbol alone and at the end of a word (512
    symbols), so no input is ever dropped, and ``<|startoftext|>`` and
    ``<|endoftext|>`` take the last two ids: the end token has the largest id,
    which CLIP poolers that take the argmax id rely on. ``vocab_size`` counts
    everything; the result has at most that many ids (fewer when the corpus
    runs out of merges).
    """
    tk = require("tokenizers")
    alphabet = tk.pre_tokenizers.ByteLevel.alphabet()
    minimum = 2 * len(alphabet) + 2
    if vocab_size < minimum:
        raise SegVolError(f"vocab_size {vocab_size} is below {minimum} (byte symbols and special tokens)")
    corpus = list(texts)
    target = vocab_size - 2
    tok, missing = _train_once(corpus, target, alphabet)
    if missing:
        # Merges are learned in the same order for any target, so a smaller
        # target leaves room for the end-of-word byte symbols the corpus lacked.
        tok, missing = _train_once(corpus, target - len(missing), alphabet)
    tok.model = _bpe_with_symbols(tok, missing)
    tok.add_special_tokens(
        [tk.AddedToken(BOS_TOKEN, normalized=True), tk.AddedToken(EOS_TOKEN, normalized=False)]
    )
    _clip_pipeline(tok, tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN))
    clip = ClipTokenizer(tok, max_length=max_length)
    clip.save(out_dir)
    return clip


def _train_once(corpus: list[str], target: int, alphabet: list[str]) -> tuple[Any, list[str]]:
    """One BPE training run; also returns the end-of-word byte symbols it lacks."""
    tk = require("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE(continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, fuse_unk=False))
    _clip_pipeline(tok, 0, 0)  # post-processor ids are set once the special tokens exist
    trainer = tk.trainers.BpeTrainer(
        vocab_size=target,
        initial_alphabet=alphabet,
        end_of_word_suffix=END_OF_WORD,
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    vocab = tok.get_vocab()
    wanted = sorted(alphabet) + sorted(c + END_OF_WORD for c in alphabet)
    return tok, [s for s in wanted if s not in vocab]


def _bpe_with_symbols(tok: Tokenizer, extra: list[str]) -> Any:
    """The trained BPE model with ``extra`` symbols appended to its vocabulary."""
    tk = require("tokenizers")
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for symbol in extra:
        if symbol not in vocab:
            vocab[symbol] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return tk.models.BPE(
        vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, fuse_unk=False
    )
