"""The demo SegVol's setup (:mod:`segvol_rt.export.demo_training.training`): its
CLIP-style BPE tokenizer (corpus of the prompt template filled with SegVol's
category names, the phantom organs and their synonyms; or a reused saved one),
its architecture (:func:`demo_config`: official layout, small sizes) and the
CT-aware initialisation of its patch embedding (:func:`init_for_ct`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from segvol_rt.demo.phantom import PHANTOM_LABELS
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io.config import SegVolConfig, TextConfig
from segvol_rt.io.tokenizer import ClipTokenizer, format_prompt, train_bpe
from segvol_rt.io.vocabulary import CATEGORIES
from segvol_rt.ops.boxes import int3

# -- model and tokenizer -------------------------------------------------------

TOKENIZER_VOCAB_SIZE = 768
# Extra names per phantom label the text encoder learns besides its own name.
SYNONYMS: dict[int, tuple[str, ...]] = {
    1: ("hepatic parenchyma",),
    2: ("splenic parenchyma",),
    3: ("kidney left",),
    4: ("kidney right",),
    5: ("abdominal aorta",),
    6: ("ivc", "postcava"),
    7: ("gastric",),
    8: ("pancreatic gland",),
    9: ("gall bladder",),
    10: ("urinary bladder",),
}
SYNONYM_RATE = 0.2  # share of text prompts that use a synonym


def tokenizer_corpus() -> list[str]:
    """Sentences the demo tokenizer is trained on: the prompt template filled
    with every SegVol category, phantom organ and synonym (organs weighted up,
    so their words become single tokens)."""
    names = list(CATEGORIES) + [s for syn in SYNONYMS.values() for s in syn]
    organs = list(PHANTOM_LABELS.values())
    return [format_prompt(n) for n in names] + [format_prompt(n) for n in organs] * 4


def build_tokenizer(out_dir: str | os.PathLike[str], vocab_size: int = TOKENIZER_VOCAB_SIZE) -> ClipTokenizer:
    """Train the demo's CLIP-style BPE and save ``tokenizer.json`` (+ config) to ``out_dir``."""
    return train_bpe(tokenizer_corpus(), vocab_size, out_dir)


def reuse_tokenizer(source: str | os.PathLike[str], out_dir: Path) -> ClipTokenizer:
    """Copy a saved tokenizer's files to ``out_dir`` and load it.

    ``tokenizers``' BPE trainer breaks ties between equally frequent pairs by
    symbol ids it assigns in hash-map order, so two trainings on the same corpus
    can number (and rarely choose) tokens differently; reusing the shipped
    tokenizer makes a rerun see the token ids the shipped model was trained with."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, out_dir / name)
    return ClipTokenizer.from_dir(out_dir)


def demo_config(tokenizer: ClipTokenizer, spatial_size: Sequence[int] = (32, 128, 128), width: int = 96
                ) -> SegVolConfig:
    """The demo architecture: official layout, small sizes (``width`` channels in
    the image encoder and decoder, 4 heads); text ids from ``tokenizer``."""
    text = TextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=256,
        max_length=tokenizer.max_length,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    return SegVolConfig(
        spatial_size=int3(spatial_size),
        patch_size=(4, 16, 16),
        embed_dim=width,
        encoder_depth=4,
        encoder_heads=4,
        encoder_mlp_dim=4 * width,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=2 * width,
        iou_head_hidden_dim=32,
        text=text,
    )


def init_for_ct(model: SegVol, seed: int, level: float = 0.45, gain: float = 20.0, structure: float = 5.0) -> None:
    """Re-initialise the patch embedding so tokens see CT contrast from step 0.

    After SegVol's min-max normalisation the phantom organs differ by about
    0.003-0.03 on a [0, 1] scale (soft tissue near ``level``). With MONAI's
    init (std 0.02) a token is dominated by its patch's mean intensity, which
    the blocks' LayerNorm then divides away, so the encoder starts nearly
    blind to organ contrast and spends its first thousands of steps growing
    these weights. Here each output channel is a zero-mean random filter
    (the default draw, mean removed, times ``structure``) plus ``g_c`` times
    the patch mean minus ``level``, with ``g_c ~ N(0, gain^2)``."""
    linear = model.image_encoder.patch_embedding.patch_embeddings[1]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = linear.weight
        w.sub_(w.mean(dim=1, keepdim=True)).mul_(structure)
        g = torch.randn(w.shape[0], generator=gen) * gain
        w.add_(g[:, None] / w.shape[1])
        linear.bias.copy_(-g * level)
