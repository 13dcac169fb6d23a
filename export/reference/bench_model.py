"""The benchmark's torch model (export time only): random-weight SegVol
checkpoints whose coarse logits form a fixed blob, so every benchmark run
has the same ROI and window count, exported into a cache once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segvol_rt._optional import require
from segvol_rt.bench.report import json_default
from segvol_rt.errors import SegVolError
from segvol_rt.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from segvol_rt.export.model.segvol import SegVol
    from segvol_rt.io.config import SegVolConfig

Log = Callable[[str], None]


# Coarse-logit blob of the benchmark model, as fractions of the decoder's
# (2d, 2h, 2w) grid along (D, H, W). On the demo-size crop it gives an ROI of
# one window in D, two in H and three in W: 6 zoom-in windows per target.
DEFAULT_BLOB = ((0.44, 0.56), (0.0625, 0.9375), (0.03125, 0.96875))


# -- the benchmark model -------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """An exported benchmark model: artifacts directory and the checkpoint it came from."""

    name: str
    artifacts: Path
    checkpoint: Path | None
    info: dict[str, Any]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segvol-rt" / "bench"


def find_clip_tokenizer() -> Path | None:
    """SegVol's CLIP tokenizer files: ``$SEGVOL_RT_CLIP``, or ``clip`` under
    ``$SEGVOL_RT_SHARED`` / the developers' ``../shared`` beside the checkout."""
    candidates = []
    if os.environ.get("SEGVOL_RT_CLIP"):
        candidates.append(Path(os.environ["SEGVOL_RT_CLIP"]))
    repo = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("SEGVOL_RT_SHARED", repo.parent / "shared"))
    candidates.append(shared / "clip")
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "vocab.json").is_file():
            return c
    return None


def _tokenizer_for(config_name: str, work: Path) -> tuple[Path, str]:
    """(tokenizer dir, description): the CLIP files for the official size when
    found, else a small CLIP-style BPE trained on the vocabulary prompts."""
    from segvol_rt.io.tokenizer import format_prompt, train_bpe
    from segvol_rt.io.vocabulary import CATEGORIES

    clip = find_clip_tokenizer() if config_name == "official" else None
    if clip is not None:
        return clip, f"CLIP ViT-B/32 tokenizer ({clip})"
    out = work / "tokenizer"
    tok = train_bpe([format_prompt(c) for c in CATEGORIES], 600, out)
    return out, f"CLIP-style BPE trained on the vocabulary prompts ({tok.vocab_size} ids)"


def _config_with_tokenizer(config: SegVolConfig, tokenizer_dir: Path) -> Any:
    """``config`` with the text ids of the tokenizer (vocabulary size, special ids)."""
    from segvol_rt.io.tokenizer import ClipTokenizer

    tok = ClipTokenizer.from_dir(tokenizer_dir)
    t = config.text
    if (tok.vocab_size, tok.eos_id) == (t.vocab_size, t.eos_token_id):
        return config
    text = dataclasses.replace(
        t, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
    )
    return dataclasses.replace(config, text=text)


def blob_model(config: SegVolConfig, seed: int = 0, blob: Sequence[tuple[float, float]] = DEFAULT_BLOB) -> Any:
    """A seeded random SegVol whose mask decoder predicts a box-shaped blob.

    Random weights predict noise (``sigmoid > 0.5`` everywhere), so the
    zoom-in ROI would be the whole crop and the window count would depend on
    the seed. LatencyStats does not depend on the weights, only on the work, so the
    decoder is edited to make the work controlled (the technique of the
    tests' tiny artifacts, on a box given as fractions of the ``(2d, 2h, 2w)``
    grid): the ``output_upscaling`` LayerNorm gets a bias of +2 inside the
    box and -2 outside (weights x0.1), the second transposed convolution
    positive weights and bias -1, mask token 0's hypernetwork a constant
    positive output (weights x0.05) and the text projection x0.05. Every input
    still reaches the output; only its size is damped."""
    from segvol_rt.export.model.segvol import SegVol

    model = SegVol.random(config, seed=seed)
    grid2 = [2 * g for g in config.grid_size]
    box = tuple(slice(*_cells(lo, hi, n)) for (lo, hi), n in zip(blob, grid2))
    shape_decoder_blob(model, box)
    return model.eval()


def shape_decoder_blob(model: SegVol, box: Sequence[slice]) -> Any:
    """Edit ``model``'s mask decoder in place so it predicts a blob over ``box``
    (slices of the ``(2d, 2h, 2w)`` grid), as :func:`blob_model` describes."""
    torch = require("torch")
    md = model.mask_decoder
    channels = model.config.embed_dim
    with torch.no_grad():
        norm = md.output_upscaling[1]
        pattern = torch.full_like(norm.bias, -2.0)
        pattern[(slice(None), *box)] = 2.0
        norm.weight.mul_(0.1)
        norm.bias.copy_(pattern)
        conv = md.output_upscaling[3]
        conv.weight.mul_(0.1).add_(1.0 / (channels // 4))
        conv.bias.fill_(-1.0)
        last = md.output_hypernetworks_mlps[0].layers[-1]
        last.weight.mul_(0.05)
        last.bias.fill_(1.0 / (channels // 8))
        text = md.txt_align_upscaled_embedding
        text.weight.mul_(0.05)
        text.bias.zero_()
    return model


def _cells(lo: float, hi: float, n: int) -> tuple[int, int]:
    start = min(n - 1, math.floor(lo * n + 0.5))
    return start, max(start + 1, min(n, math.floor(hi * n + 0.5)))


def _named_config(name: str) -> Any:
    from segvol_rt.io.config import SegVolConfig

    if name == "official":
        return SegVolConfig.official()
    if name == "tiny":
        return SegVolConfig.tiny()
    raise SegVolError(f"no random benchmark model for config {name!r}; choose official or tiny")


def prepare_bench_model(
    config_name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    rebuild: bool = False,
    log: Log | None = None,
) -> BenchModel:
    """The benchmark model of ``config_name``, exported once and reused.

    ``official`` / ``tiny``: :func:`blob_model` at that size with random
    weights, exported into ``cache_dir`` (needs the ``export`` extra the
    first time); ``demo``: the shipped demo model (trained on phantoms, so
    its ROI follows the phantom organs) through :func:`segvol_rt.demo.model.cached_demo_artifacts`."""
    say = log or (lambda _m: None)
    if config_name == "demo":
        from segvol_rt.demo.model import (
            cached_demo_artifacts,
            demo_cache_dir,
            demo_checkpoint_dir,
        )
        from segvol_rt.export.exporter import export_demo_model

        ckpt = demo_checkpoint_dir()
        artifacts = cached_demo_artifacts() or export_demo_model(ckpt, demo_cache_dir(), say)
        return BenchModel("demo", artifacts, ckpt, {"config": "demo", "weights": "the shipped demo model"})
    config = _named_config(config_name)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    work = cache / f"{config_name}-seed{seed}"
    marker = work / "bench_model.json"
    if marker.is_file() and not rebuild:
        info = json.loads(marker.read_text())
        return BenchModel(config_name, work / "artifacts", work / info["checkpoint"], info)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    require("torch")
    from segvol_rt.export.checkpoint import save_pth
    from segvol_rt.export.exporter import ExportOptions, export_artifacts

    t0 = time.perf_counter()
    tok_dir, tok_text = _tokenizer_for(config_name, work)
    config = _config_with_tokenizer(config, tok_dir)
    say(f"building the {config_name} benchmark model (random weights, seed {seed})")
    ckpt = save_pth(blob_model(config, seed), work / "model.pth")
    say(f"exporting it into {work / 'artifacts'} (parity checks skipped; done once)")
    # fp16 variants too, so `bench --precision fp16` and benchmarks/precision.py run on it
    export_artifacts(ckpt, work / "artifacts", tokenizer=tok_dir, options=ExportOptions(verify=False, precision="fp16"))
    info = {
        "config": config_name,
        "weights": f"random (seed {seed}), decoder edited to predict a fixed box",
        "blob": DEFAULT_BLOB,
        "seed": seed,
        "tokenizer": tok_text,
        "checkpoint": Path(ckpt).name,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(marker, json.dumps(info, indent=2, default=json_default))
    return BenchModel(config_name, work / "artifacts", Path(ckpt), info)


