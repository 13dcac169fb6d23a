"""Test support: tiny artifacts exported once per session from a seeded model
whose coarse logits have a usable ROI, plus that model for the reference.

A random-weight SegVol predicts noise: ``sigmoid > 0.5`` voxels scattered
everywhere, so the ROI is always the whole crop. :func:`roi_friendly` edits
the mask decoder so the logits form a blob instead, while every input still
matters:

* the LayerNorm of ``output_upscaling`` (normalised over channels *and*
  space, with per-voxel affine parameters) gets a bias of +2 inside a box of
  its (2d, 2h, 2w) grid and -2 outside, and its weight scaled by 0.1, so the
  image and prompts perturb the pattern by about +-0.2;
* the second transposed convolution gets positive weights (~1 / channels)
  and bias -1, so after GELU a voxel is about +0.8 inside and -0.15 outside;
* mask token 0's hypernetwork output is dominated by a positive constant
  bias (weights x0.05), and the text projection is scaled by 0.05, so the
  logits are about the channel mean of that map: positive on the blob.

The zoom-in windows then each predict the blob at the same place of their
own window, which is all the parity tests need. The tokenizer is a small
CLIP-style BPE trained on the vocabulary prompts (no ../shared needed); the
text config takes its ids.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from segvol_rt.export.checkpoint import save_pth
from segvol_rt.export.exporter import ExportOptions, export_artifacts
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.tokenizer import format_prompt, train_bpe
from segvol_rt.io.vocabulary import CATEGORIES

SEED = 0
MAX_BATCH = 4  # small, so several windows need several encoder calls
BLOB = (slice(1, 7), slice(2, 6), slice(2, 5))  # inside the (2d, 2h, 2w) = (8, 8, 8) grid

_CACHE: dict[str, Any] = {}


def roi_friendly(model: SegVol) -> SegVol:
    """Edit ``model``'s mask decoder in place as the module docstring says."""
    from segvol_rt.export.reference.bench_model import shape_decoder_blob

    return shape_decoder_blob(model, BLOB)


def tiny_artifacts(base: Path) -> tuple[Path, Path, SegVol]:
    """(artifacts dir, checkpoint path, eval model) - exported once per session under ``base``."""
    if "result" not in _CACHE:
        base = Path(base)
        tok = train_bpe([format_prompt(c) for c in CATEGORIES], 600, base / "tokenizer")
        tiny = SegVolConfig.tiny()
        text = dataclasses.replace(
            tiny.text, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
        )
        config = dataclasses.replace(tiny, text=text)
        model = roi_friendly(SegVol.random(config, seed=SEED))
        ckpt = save_pth(model, base / "tiny.pth")
        out = base / "artifacts"
        export_artifacts(ckpt, out, tokenizer=base / "tokenizer", options=ExportOptions(verify=False, max_batch=MAX_BATCH))
        _CACHE["result"] = (out, ckpt, model.eval())
    return _CACHE["result"]
