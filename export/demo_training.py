"""Train the demo SegVol: a small model of the official architecture, trained
from scratch on synthetic phantoms (:mod:`segvol_rt.demo.phantom`), shipped in
``segvol_rt/assets/demo`` so ``segvol-rt demo`` and the end-to-end tests have
a model that really segments without the 700 MB release.

Run (about an hour on 2 CPU cores; ``--tokenizer segvol_rt/assets/demo`` reuses
the shipped token ids, see :func:`reuse_tokenizer`)::

    python -m segvol_rt.export.demo_training --seed 0 --steps 4800 --out /tmp/demo_model

The recipe follows SegVol's supervised training, made small:

* **Model**: :class:`segvol_rt.export.model.segvol.SegVol` with
  :func:`demo_config` (window 32x128x128, 4x16x16 patches, width 96), and a
  CLIP-style BPE tokenizer trained here on the prompt template filled with
  SegVol's category names and the phantom organs' synonyms.
* **Data**: phantoms of :func:`segvol_rt.demo.phantom.random_phantom` (random size,
  spacing, RAS/LPS storage), run through the runtime's own
  :func:`segvol_rt.pipeline.preprocess.preprocess`; labels follow the same geometry
  (swap, pad, crop, nearest-exact zoom-out). Cached once (``--cache``).
* **Views**: *zoom-out* (the whole crop resized to the window, as the coarse
  pass sees it) and *zoom-in* (a window of the runtime's sliding-window plan
  over an ROI around the organ, at crop resolution, the image zero outside the
  ROI, as :mod:`segvol_rt.pipeline.zoom` cuts it).
* **Steps**: 2 zoom-out views with all 10 organs prompted (one prompt kind
  each: many targets per image push the decoder to use its prompts) and 4
  zoom-in windows with 3 prompt kinds for their organ (the zoom-in pass sees
  organs at crop resolution, cut by window borders: it needs the practice).
* **Init**: MONAI's, except the patch embedding (:func:`init_for_ct`): the
  organ contrasts are about 1% of the normalised range, and the default init
  leaves the encoder blind to them for thousands of steps.
* **Prompts**: SegVol's mixture: text, box, points, text+box, text+points,
  box+points on zoom-out views; on zoom-in views the prompts the runtime
  gives windows (text, text+box, box, points+box, text+points+box), the box
  from the organ's box in the window with corners jittered by about one
  zoom-out voxel (the coarse prediction the runtime derives it from is that
  coarse); a window without the organ gets the official empty box (-1s).
* **Loss**: BCE + soft Dice (official ``BCELoss`` / ``BinaryDiceLoss``) on the
  decoder's low-res logits against the label's area fraction per low-res
  voxel (average-pooled), not on logits upsampled to the window: the same
  optimum for the upsampled-then-thresholded mask, at a fraction of the cost.
* AdamW, linear warm-up then cosine decay; everything random derives from
  ``--seed`` (data from ``[seed, 1]``, step ``s`` from ``[seed, 2, s]``).

:func:`evaluate` measures per-organ Dice on held-out phantoms with the
runtime's own zoom-out-zoom-in code (:mod:`segvol_rt.pipeline.zoom`, prompts mapped by
:func:`segvol_rt.pipeline.prompts.to_model_space`) on the torch model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segvol_rt.export.checkpoint import save_hf
from segvol_rt.export.model.segvol import SegVol, prompt_tokens

from segvol_rt.demo.phantom import PHANTOM_LABELS, Phantom, make_phantom, random_phantom
from segvol_rt.io.config import SegVolConfig, TextConfig
from segvol_rt.io.tokenizer import ClipTokenizer, format_prompt, train_bpe
from segvol_rt.io.vocabulary import CATEGORIES
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.evaluation import dice
from segvol_rt.pipeline.preprocess import preprocess

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
        spatial_size=tuple(int(s) for s in spatial_size),
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


# -- preprocessed phantoms -------------------------------------------------------


@dataclass
class Case:
    """One preprocessed phantom, as the runtime sees it.

    ``crop`` (D, H, W) float16 crop-space image in [0, 1]; ``labels`` (D, H, W)
    uint8 in crop space; ``zoom`` / ``zoom_labels``: the same at
    ``spatial_size`` (nearest-exact); ``boxes``: organ id -> inclusive
    crop-space box (d0, h0, w0, d1, h1, w1)."""

    crop: np.ndarray
    labels: np.ndarray
    zoom: np.ndarray
    zoom_labels: np.ndarray
    boxes: dict[int, tuple[int, ...]]


def make_case(phantom: Phantom, spatial_size: Sequence[int]) -> Case:
    """Preprocess a phantom with the runtime's code; labels through the same geometry."""
    pre = preprocess(phantom.image, spatial_size)
    labels = np.ascontiguousarray(pre.geometry.volume(phantom.labels, "scan", "crop"), dtype=np.uint8)
    zoom_labels = np.ascontiguousarray(pre.geometry.zoom.forward_volume(labels), dtype=np.uint8)
    boxes = {}
    for organ in np.unique(labels)[1:]:
        boxes[int(organ)] = P.generate_box(labels == organ)
    return Case(
        np.ascontiguousarray(pre.image, dtype=np.float16),
        labels,
        np.ascontiguousarray(pre.zoom_image, dtype=np.float16),
        zoom_labels,
        boxes,
    )


def training_phantoms(seed: int, count: int) -> Iterable[Phantom]:
    """The training phantoms of ``seed``: random ones, plus the default shape every 8th."""
    rng = np.random.default_rng([seed, 1])
    for i in range(count):
        if i % 8 == 7:
            yield make_phantom(int(rng.integers(2**31)))
        else:
            yield random_phantom(rng)


def validation_phantoms(count: int) -> list[Phantom]:
    """Held-out phantoms: a stream no training seed draws from (fixed, seed-independent)."""
    rng = np.random.default_rng([2**20, 7])
    out = [make_phantom(10_000_019)]  # the demo's default shape
    while len(out) < count:
        out.append(random_phantom(rng))
    return out


def _save_case(case: Case, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npz")
    boxes = np.array([[k, *v] for k, v in sorted(case.boxes.items())], dtype=np.int64).reshape(-1, 7)
    np.savez(tmp, crop=case.crop, labels=case.labels, zoom=case.zoom, zoom_labels=case.zoom_labels, boxes=boxes)
    os.replace(tmp, path)


def _load_case(path: Path) -> Case:
    with np.load(path) as z:
        boxes = {int(r[0]): tuple(int(v) for v in r[1:]) for r in z["boxes"]}
        return Case(z["crop"], z["labels"], z["zoom"], z["zoom_labels"], boxes)


def build_cases(seed: int, count: int, spatial_size: Sequence[int], cache: str | os.PathLike[str] | None,
                log=print) -> list[Case]:
    """``count`` preprocessed training phantoms; cached as npz under ``cache`` (keyed by seed and size)."""
    folder = None
    if cache is not None:
        folder = Path(cache) / f"seed{seed}_{'x'.join(map(str, spatial_size))}"
        folder.mkdir(parents=True, exist_ok=True)
    cases = []
    t0 = time.perf_counter()
    for i, phantom in enumerate(training_phantoms(seed, count)):
        path = None if folder is None else folder / f"{i:04d}.npz"
        if path is not None and path.is_file():
            cases.append(_load_case(path))
            continue
        case = make_case(phantom, spatial_size)
        if path is not None:
            _save_case(case, path)
        cases.append(case)
        if (i + 1) % 16 == 0:
            log(f"phantoms {i + 1}/{count} ({time.perf_counter() - t0:.0f}s)")
    return cases


# -- views: what one image-encoder input and its labels look like ------------------


@dataclass
class View:
    """One encoder input: ``image`` (D, H, W) float32 of the window size,
    ``labels`` (D, H, W) uint8 in the same voxels, ``zoom_in`` whether it is a
    crop-resolution window, ``focus`` the organ a zoom-in window was cut for,
    ``jitter`` the box-corner jitter in voxels per axis (D, H, W)."""

    image: np.ndarray
    labels: np.ndarray
    zoom_in: bool
    focus: int
    jitter: tuple[int, int, int]


def zoom_out_view(case: Case) -> View:
    return View(case.zoom.astype(np.float32), case.zoom_labels, False, 0, (1, 1, 1))


def zoom_in_view(case: Case, organ: int, window: Sequence[int], rng: np.random.Generator) -> View:
    """A window of the runtime's zoom-in plan for ``organ``: the ROI comes from
    the organ's crop box with corners moved by up to one zoom-out voxel (the
    coarse pass's resolution), then one window of its plan at random."""
    shape = case.crop.shape
    scale = [max(1, math.ceil(c / w)) for c, w in zip(shape, window)]
    box = np.array(case.boxes[organ]) + rng.integers(-1, 2, 6) * np.array(scale * 2)
    box = np.clip(box, 0, np.array(shape * 2) - 1)
    box[3:] = np.maximum(box[3:], box[:3])
    roi = Z.roi_from_box(box, shape, window)
    plan = Z.plan_windows(roi.shape, window)
    start = plan.starts[int(rng.integers(len(plan)))]
    key = Z.window_key(roi, plan, start)
    image = Z.window_image(case.crop, key)
    labels = Z.window_image(case.labels, key).astype(np.uint8)
    return View(image, labels, True, organ, tuple(scale))  # type: ignore[arg-type]


# -- prompt rows -------------------------------------------------------------------

ZOOM_OUT_KINDS = ("text", "text+box", "box", "points", "text+points", "box+points")
ZOOM_OUT_WEIGHTS = (0.25, 0.25, 0.15, 0.1, 0.1, 0.15)
ZOOM_IN_KINDS = ("text", "text+box", "box", "points+box", "text+points+box")
ZOOM_IN_WEIGHTS = (0.3, 0.3, 0.15, 0.1, 0.15)
MAX_POINTS = 8  # point prompts per row in training (1 positive + extras), padded with -1


@dataclass
class Row:
    """One decoder query: ``view`` index, target mask (D, H, W) bool in the
    view, and the prompts in the view's voxel indices."""

    view: int
    mask: np.ndarray
    text: str | None
    box: tuple[int, ...] | None
    points: P.Points | None

    @property
    def kind(self) -> tuple[bool, bool, bool]:
        return (self.points is not None, self.box is not None, self.text is not None)


def _organ_text(organ: int, rng: np.random.Generator) -> str:
    if rng.random() < SYNONYM_RATE:
        options = SYNONYMS[organ]
        return options[int(rng.integers(len(options)))]
    return PHANTOM_LABELS[organ]


def jittered_box(mask: np.ndarray, jitter: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    """``generate_box`` of ``mask``, each corner moved by up to ``jitter`` voxels
    (per axis), clipped to the view; the empty box when the mask is empty."""
    box = P.generate_box(mask)
    if box == P.EMPTY_BOX:
        return box
    j = np.array(list(jitter) * 2)
    out = np.array(box) + np.round(rng.uniform(-1, 1, 6) * j).astype(np.int64)
    out = np.clip(out, 0, np.array(mask.shape * 2) - 1)
    out[3:] = np.maximum(out[3:], out[:3])
    return tuple(int(v) for v in out)


def _points(mask: np.ndarray, rng: np.random.Generator, negatives: bool) -> P.Points:
    """Official ``select_points`` with random extras, padded to :data:`MAX_POINTS`."""
    extra_pos = int(rng.integers(0, 4))
    extra_neg = int(rng.integers(0, 4)) if negatives else 0
    pts = P.select_points(mask, rng, extra_pos, extra_neg)
    pad = MAX_POINTS - len(pts)
    coords = np.concatenate([pts.coords, np.full((pad, 3), -1)])
    labels = np.concatenate([pts.labels, np.full(pad, -1)])
    return P.Points(coords, labels)


def make_row(view_index: int, view: View, organ: int, kind: str, rng: np.random.Generator) -> Row:
    """The prompts of ``kind`` (e.g. ``"text+box"``) for ``organ`` in ``view``."""
    mask = view.labels == organ
    parts = set(kind.split("+"))
    text = _organ_text(organ, rng) if "text" in parts else None
    box = jittered_box(mask, view.jitter, rng) if "box" in parts else None
    points = _points(mask, rng, negatives=not view.zoom_in) if "points" in parts else None
    return Row(view_index, mask, text, box, points)


def _choose(kinds: Sequence[str], weights: Sequence[float], rng: np.random.Generator, n: int) -> list[str]:
    idx = rng.choice(len(kinds), size=n, replace=False, p=np.asarray(weights) / np.sum(weights))
    return [kinds[i] for i in idx]


def sample_batch(cases: Sequence[Case], window: Sequence[int], rng: np.random.Generator,
                 zoom_out_views: int = 2, zoom_in_views: int = 2, zoom_out_organs: int = 3,
                 kinds_per_organ: int = 2, zoom_in_kinds: int = 3) -> tuple[list[View], list[Row]]:
    """Views and their prompt rows for one step: each zoom-out view gets
    ``zoom_out_organs`` organs with ``kinds_per_organ`` prompt kinds each, each
    zoom-in view ``zoom_in_kinds`` kinds for the organ it was cut for (point
    kinds only when the organ is in the window)."""
    views: list[View] = []
    rows: list[Row] = []
    organs = sorted(PHANTOM_LABELS)
    for _ in range(zoom_out_views):
        case = cases[int(rng.integers(len(cases)))]
        views.append(zoom_out_view(case))
        present = [o for o in organs if o in case.boxes]
        for organ in rng.choice(present, size=min(zoom_out_organs, len(present)), replace=False):
            for kind in _choose(ZOOM_OUT_KINDS, ZOOM_OUT_WEIGHTS, rng, kinds_per_organ):
                rows.append(make_row(len(views) - 1, views[-1], int(organ), kind, rng))
    for _ in range(zoom_in_views):
        case = cases[int(rng.integers(len(cases)))]
        present = [o for o in organs if o in case.boxes]
        organ = int(present[int(rng.integers(len(present)))])
        views.append(zoom_in_view(case, organ, window, rng))
        found = bool((views[-1].labels == organ).any())
        kinds = [k for k in ZOOM_IN_KINDS if found or "points" not in k]
        weights = [w for k, w in zip(ZOOM_IN_KINDS, ZOOM_IN_WEIGHTS) if found or "points" not in k]
        for kind in _choose(kinds, weights, rng, min(zoom_in_kinds, len(kinds))):
            rows.append(make_row(len(views) - 1, views[-1], organ, kind, rng))
    return views, rows


# -- loss ------------------------------------------------------------------------------


def low_res_targets(masks: torch.Tensor, low_res_size: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W) bool -> (B, 1, d4, h4, w4) float: the area fraction per low-res voxel."""
    kernel = [s // l for s, l in zip(masks.shape[1:], low_res_size)]
    return F.avg_pool3d(masks[:, None].float(), kernel_size=kernel, stride=kernel)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official BCE + Dice (smooth 1, sums of sigmoid and target), averaged over rows.

    ``logits``, ``target``: (B, 1, ...) with target in [0, 1]."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = 2 * (prob * flat).sum(1) / (prob.sum(1) + flat.sum(1) + 1.0)
    return bce + (1 - dice).mean()


def _group_tokens(rows: Sequence[Row], text_dim: int, text_emb: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of one prompt kind -> decoder tokens (coords, labels) and text rows (B, C)."""
    has_points, has_box, has_text = rows[0].kind
    n = len(rows)
    points = boxes = text = None
    if has_points:
        coords = torch.tensor(np.stack([r.points.coords for r in rows]), dtype=torch.float32)  # type: ignore[union-attr]
        labels = torch.tensor(np.stack([r.points.labels for r in rows]), dtype=torch.int64)  # type: ignore[union-attr]
        points = (coords, labels)
    if has_box:
        boxes = torch.tensor([r.box for r in rows], dtype=torch.float32)
    if has_text:
        text = torch.stack([text_emb[r.text] for r in rows])  # type: ignore[index]
    coords, labels = prompt_tokens(n, text, boxes, points)
    if text is None:
        text = torch.zeros(n, text_dim)
    return coords, labels, text


def batch_loss(model: SegVol, tokenizer: ClipTokenizer, views: Sequence[View], rows: Sequence[Row]) -> torch.Tensor:
    """Encode the views once, decode every row (grouped by prompt kind), mean loss over rows."""
    cfg = model.config
    images = torch.from_numpy(np.stack([v.image for v in views]))[:, None]
    embedding = model.encode_image(images)
    names = sorted({r.text for r in rows if r.text is not None})
    text_emb: dict[str, torch.Tensor] = {}
    if names:
        ids = torch.from_numpy(tokenizer.encode_names(names, cfg.prompt_template))
        text_emb = dict(zip(names, model.encode_text(ids)))
    groups: dict[tuple[bool, bool, bool], list[Row]] = {}
    for r in rows:
        groups.setdefault(r.kind, []).append(r)
    losses = []
    for group in groups.values():
        coords, labels, text = _group_tokens(group, cfg.embed_dim, text_emb)
        emb = embedding[torch.tensor([r.view for r in group])]
        logits = model.decode_tokens(emb, coords, labels, text)
        masks = torch.from_numpy(np.stack([r.mask for r in group]))
        losses.append(segmentation_loss(logits, low_res_targets(masks, cfg.low_res_size)) * len(group))
    return torch.stack(losses).sum() / len(rows)


# -- training ------------------------------------------------------------------------


@dataclass
class TrainOptions:
    steps: int = 4800
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    zoom_out_views: int = 2
    zoom_in_views: int = 4
    zoom_out_organs: int = 10
    kinds_per_organ: int = 1
    zoom_in_kinds: int = 3


def learning_rate(step: int, opts: TrainOptions) -> float:
    """Linear warm-up to ``lr``, then cosine down to ``lr * min_lr_ratio``."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    t = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(model: SegVol, opts: TrainOptions) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and tokens."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name and "token" not in name else plain).append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.999))


def train_step(model: SegVol, optimizer: torch.optim.Optimizer, tokenizer: ClipTokenizer,
               views: Sequence[View], rows: Sequence[Row], lr: float, clip: float) -> float:
    """One optimisation step; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    loss = batch_loss(model, tokenizer, views, rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return float(loss.detach())


def _save_state(path: Path, model: SegVol, optimizer: torch.optim.Optimizer, step: int, history: list) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "history": history}, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def monitor_dice(model: SegVol, tokenizer: ClipTokenizer, cases: Sequence[Case],
                 kinds: Sequence[str] = ("text", "text+box")) -> dict[str, float]:
    """Mean zoom-out Dice (logits upsampled to the window, threshold 0) of every
    organ of ``cases`` per prompt kind, canonical names: a cheap progress signal."""
    model.eval()
    rng = np.random.default_rng(0)
    out = {}
    for kind in kinds:
        scores = []
        for case in cases:
            view = zoom_out_view(case)
            emb = model.encode_image(torch.from_numpy(view.image)[None, None])
            rows = [make_row(0, view, o, kind, rng) for o in sorted(case.boxes)]
            for r, o in zip(rows, sorted(case.boxes)):
                r.text = PHANTOM_LABELS[o] if r.text is not None else None
            names = sorted({r.text for r in rows if r.text})
            text_emb = dict(zip(names, model.encode_text(torch.from_numpy(tokenizer.encode_names(names))))) if names else {}
            coords, labels, text = _group_tokens(rows, model.config.embed_dim, text_emb)
            pred = model.upsample(model.decode_tokens(emb.expand(len(rows), -1, -1, -1, -1), coords, labels, text))
            for r, p in zip(rows, pred[:, 0] > 0):
                scores.append(dice(p.numpy(), r.mask))
        out[kind] = float(np.mean(scores))
    return out


def monitor_cases(count: int, spatial_size: Sequence[int]) -> list[Case]:
    """Phantoms for :func:`monitor_dice`: their own stream, neither training nor evaluation."""
    rng = np.random.default_rng([2**20, 8])
    return [make_case(random_phantom(rng), spatial_size) for _ in range(count)]


def train(model: SegVol, tokenizer: ClipTokenizer, cases: Sequence[Case], opts: TrainOptions, seed: int,
          state_path: Path | None = None, every_s: float = 300.0, on_save=None, log=print,
          monitor: Sequence[Case] = (), monitor_every: int = 500) -> list[dict[str, float]]:
    """Train ``model`` in place for ``opts.steps`` steps; resumes from ``state_path``
    when it exists and saves there (and calls ``on_save``) every ``every_s`` seconds.
    Every ``monitor_every`` steps logs :func:`monitor_dice` on ``monitor``.
    Returns the history ``[{"step", "loss", "lr", "seconds"(, "monitor")}]``."""
    optimizer = make_optimizer(model, opts)
    start, history = 0, []
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        log(f"resumed at step {start}")
    window = model.config.spatial_size
    t0, last_save, recent = time.perf_counter(), time.perf_counter(), []
    elapsed0 = history[-1]["seconds"] if history else 0.0
    for step in range(start, opts.steps):
        rng = np.random.default_rng([seed, 2, step])
        views, rows = sample_batch(cases, window, rng, opts.zoom_out_views, opts.zoom_in_views,
                                   opts.zoom_out_organs, opts.kinds_per_organ, opts.zoom_in_kinds)
        lr = learning_rate(step, opts)
        loss = train_step(model, optimizer, tokenizer, views, rows, lr, opts.clip)
        recent.append(loss)
        seconds = elapsed0 + time.perf_counter() - t0
        if (step + 1) % 10 == 0 or step + 1 == opts.steps:
            history.append({"step": step + 1, "loss": float(np.mean(recent)), "lr": lr, "seconds": seconds})
            log(f"step {step + 1}/{opts.steps} loss {np.mean(recent):.4f} lr {lr:.2e} {seconds:.0f}s")
            recent = []
            if monitor and ((step + 1) % monitor_every == 0 or step + 1 == opts.steps):
                history[-1]["monitor"] = monitor_dice(model, tokenizer, monitor)
                log(f"monitor zoom-out Dice {history[-1]['monitor']}")
        done = step + 1 == opts.steps
        if state_path is not None and (done or time.perf_counter() - last_save > every_s):
            _save_state(state_path, model, optimizer, step + 1, history)
            if on_save is not None:
                on_save(step + 1)
            last_save = time.perf_counter()
    return history


# -- evaluation through the runtime's zoom-out-zoom-in -----------------------------------


class _TorchGraphs:
    """The runtime's backend calls (:mod:`segvol_rt.pipeline.zoom`) on a torch :class:`SegVol`."""

    def __init__(self, model: SegVol):
        self.model = model.eval()

    @torch.no_grad()
    def encode_image(self, batch: np.ndarray) -> np.ndarray:
        return self.model.encode_image(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    @torch.no_grad()
    def decode(self, emb, coords, labels, text) -> np.ndarray:
        t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)  # noqa: E731
        out = self.model.decode_tokens(t(emb, torch.float32), t(coords, torch.float32), t(labels, torch.int64),
                                       t(text, torch.float32))
        return out.numpy()

    @torch.no_grad()
    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        return self.model.encode_text(torch.from_numpy(ids)).numpy()


EVAL_KINDS = ("text", "text+box", "box", "points")


def _scan_points(mask: np.ndarray) -> P.Points:
    """One positive point, as a user's click near the organ's centre: the
    organ voxel closest to its centroid."""
    idx = np.argwhere(mask)
    best = idx[np.argmin(((idx - idx.mean(axis=0)) ** 2).sum(axis=1))]
    return P.Points(best[None], np.array([1]))


@dataclass
class _Scan:
    """A preprocessed evaluation phantom and its zoom-out embedding."""

    pre: Any
    crop: np.ndarray
    embedding: np.ndarray
    windows: Z.EmbeddingCache


def _prepare(graphs: _TorchGraphs, config: SegVolConfig, phantom: Phantom) -> _Scan:
    pre = preprocess(phantom.image, config.spatial_size)
    emb = graphs.encode_image(np.asarray(pre.zoom_image, np.float32)[None, None])[0]
    return _Scan(pre, np.ascontiguousarray(pre.image, np.float32), emb, Z.EmbeddingCache())


def segment_phantom(graphs: _TorchGraphs, config: SegVolConfig, tokenizer: ClipTokenizer, scan: _Scan,
                    mask: np.ndarray, name: str, kind: str, window_prompts: str = "aligned"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Scan-space masks (zoom-out only, zoom-out-zoom-in) of the organ ``mask``
    (scan space) prompted by ``kind`` (its ``name``, its box, a point),
    computed the way :class:`segvol_rt.runtime.SegVolRuntime` computes them."""
    parts = set(kind.split("+"))
    box = P.generate_box(mask) if "box" in parts else None
    points = _scan_points(mask) if "points" in parts else None
    mp = P.to_model_space(scan.pre.geometry, box, points)
    text = None
    if "text" in parts:
        text = graphs.encode_text(tokenizer.encode_names([name], config.prompt_template))[0]
    target = Z.Target(text, mp.box_zoom, mp.points_zoom, 0)
    low = Z.decode_batched(graphs, [scan.embedding], [target.coarse_tokens()], [text], 8, config.embed_dim)[0]
    coarse = Z.coarse_crop_logits(low, config.spatial_size, scan.crop.shape)
    to_scan = lambda logits: np.asarray(scan.pre.geometry.crop_to_scan((logits > 0).astype(np.uint8)))  # noqa: E731
    plan = Z.plan_zoom_in(target, coarse, config.spatial_size, config.spatial_size, window_prompts)
    if plan is None:
        return to_scan(coarse), to_scan(coarse)
    fine = coarse.copy()
    fine[plan.roi.slices] = Z.zoom_in(graphs, scan.crop, [plan], [target], scan.windows, config.spatial_size,
                                      (8, 8), config.embed_dim)[0]
    return to_scan(coarse), to_scan(fine)


def evaluate(model: SegVol, tokenizer: ClipTokenizer, phantoms: Sequence[Phantom],
             kinds: Sequence[str] = EVAL_KINDS, log=print, window_prompts: str = "aligned") -> dict[str, Any]:
    """Per-organ Dice, zoom-out only and zoom-out-zoom-in, per prompt kind:
    ``{kind: {"organs": {name: {"zoom_out": mean, "zoom_in": mean}}, "mean": {...}}}``.
    ``window_prompts``: the zoom-in window prompt placement (:mod:`segvol_rt.pipeline.zoom`)."""
    graphs = _TorchGraphs(model)
    scores: dict[str, dict[str, dict[str, list[float]]]] = {k: {} for k in kinds}
    for i, ph in enumerate(phantoms):
        scan = _prepare(graphs, model.config, ph)
        for organ in sorted(ph.label_names):
            truth = ph.labels == organ
            name = PHANTOM_LABELS[organ]
            for kind in kinds:
                zo, zi = segment_phantom(graphs, model.config, tokenizer, scan, truth, name, kind, window_prompts)
                rec = scores[kind].setdefault(name, {"zoom_out": [], "zoom_in": []})
                rec["zoom_out"].append(dice(zo, truth))
                rec["zoom_in"].append(dice(zi, truth))
        log(f"evaluated phantom {i + 1}/{len(phantoms)}")
    out: dict[str, Any] = {}
    for kind in kinds:
        table = {name: {k: float(np.mean(v)) for k, v in rec.items()} for name, rec in scores[kind].items()}
        mean = {k: float(np.mean([t[k] for t in table.values()])) for k in ("zoom_out", "zoom_in")}
        out[kind] = {"organs": table, "mean": mean}
        log(f"eval {kind}: zoom-out {mean['zoom_out']:.3f} zoom-in {mean['zoom_in']:.3f}")
    return out


# -- the shipped layout ------------------------------------------------------------------


def export_model(model: SegVol, tokenizer_dir: Path, out: Path) -> Path:
    """The Hugging Face layout (config.json with segvol_rt_config, model.safetensors, tokenizer files)."""
    return save_hf(model, out, tokenizer_files=tokenizer_dir, safetensors=True)


def training_report(config: SegVolConfig, params: int, args: dict[str, Any], history: list[dict[str, Any]],
                    results: dict[str, Any] | None, files: dict[str, int], opts: TrainOptions = TrainOptions()) -> str:
    """TRAINING.md: recipe, seed, time, loss curve summary and Dice table."""
    lines = [
        "# Demo SegVol model",
        "",
        "A small SegVol (official architecture, demo sizes) trained from scratch on",
        "synthetic phantoms by `python -m segvol_rt.export.demo_training`. It segments",
        "the phantom organs only; it is NOT a medical model and knows nothing of real CT.",
        "",
        "## Recipe",
        "",
        f"- command: `python -m segvol_rt.export.demo_training {' '.join(args['argv'])}`",
        f"- seed {args['seed']}, {args['phantoms']} training phantoms, {args['steps']} steps,"
        f" lr {args['lr']} (warm-up {args['warmup']}, cosine), AdamW wd {args['weight_decay']}",
        f"- window {list(config.spatial_size)}, patch {list(config.patch_size)}, width {config.embed_dim},"
        f" encoder {config.encoder_depth} layers, decoder {config.decoder_depth} layers,"
        f" text {config.text.hidden_size} x {config.text.num_layers} layers, vocab {config.text.vocab_size}",
        f"- parameters: {params:,}; files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in files.items()),
        f"- per step: {opts.zoom_out_views} zoom-out views ({opts.zoom_out_organs} organs x {opts.kinds_per_organ}"
        f" prompt kind) + {opts.zoom_in_views} zoom-in windows ({opts.zoom_in_kinds} prompt kinds); patch embedding"
        " initialised for CT contrast (`init_for_ct`)",
        "- loss: BCE + Dice on the low-res logits against area-fraction targets (see the module docstring)",
        f"- training time: {history[-1]['seconds'] / 60:.1f} min on {os.cpu_count()} shared CPU cores" if history else "",
        "",
        "## Loss (mean of 10 steps) and zoom-out Dice on 4 monitor phantoms (text / text+box)",
        "",
        "| step | loss | monitor Dice |",
        "|---:|---:|---:|",
    ]
    marks = {h["step"] for h in history[:: max(1, len(history) // 10)]} | {h["step"] for h in history if "monitor" in h}
    for h in history:
        if h["step"] in marks or h is history[-1]:
            mon = h.get("monitor")
            cell = f"{mon['text']:.3f} / {mon['text+box']:.3f}" if mon else ""
            lines.append(f"| {h['step']} | {h['loss']:.4f} | {cell} |")
    if results:
        n = results.get("phantoms", 0)
        lines += ["", f"## Dice on {n} held-out phantoms (zoom-out only / zoom-out-zoom-in)", "",
                  "Scan space, through the runtime's zoom-out-zoom-in code on the torch model, with"
                  f" `window_prompts=\"{results.get('window_prompts', 'aligned')}\"` (see `segvol_rt/zoom.py`).", ""]
        kinds = [k for k in results if k not in ("phantoms", "window_prompts")]
        lines += ["| organ | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        organs = list(results[kinds[0]]["organs"])
        for organ in organs:
            cells = [f"{results[k]['organs'][organ]['zoom_out']:.3f} / {results[k]['organs'][organ]['zoom_in']:.3f}" for k in kinds]
            lines.append(f"| {organ} | " + " | ".join(cells) + " |")
        cells = [f"**{results[k]['mean']['zoom_out']:.3f} / {results[k]['mean']['zoom_in']:.3f}**" for k in kinds]
        lines.append("| mean | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory (Hugging Face layout + TRAINING.md)")
    parser.add_argument("--work", default=None, help="resumable training state (default OUT/../<out>.work)")
    parser.add_argument("--cache", default="/tmp/segvol_rt_demo_cache", help="preprocessed phantom cache ('' = none)")
    parser.add_argument("--phantoms", type=int, default=128)
    parser.add_argument("--steps", type=int, default=TrainOptions.steps)
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument("--warmup", type=int, default=TrainOptions.warmup)
    parser.add_argument("--weight-decay", type=float, default=TrainOptions.weight_decay)
    parser.add_argument("--spatial-size", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--width", type=int, default=96, help="image encoder / decoder channels")
    parser.add_argument("--zoom-in-views", type=int, default=TrainOptions.zoom_in_views,
                        help="crop-resolution windows per step (3 prompt kinds each)")
    parser.add_argument("--eval-phantoms", type=int, default=6)
    parser.add_argument("--save-every", type=float, default=300.0, help="seconds between checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="reuse this tokenizer (e.g. segvol_rt/assets/demo) instead of training one: the "
                             "tokenizers trainer numbers tokens in a run-dependent order")
    parser.add_argument("--window-prompts", choices=Z.WINDOW_PROMPTS, default="aligned",
                        help="zoom-in window prompt placement of the evaluation")
    parser.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                        help="only evaluate a saved checkpoint directory; write OUT as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate_checkpoint(args.evaluate, args.eval_phantoms, Path(args.out), args.window_prompts)
        return
    torch.manual_seed(args.seed)
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    log = _logger()

    tok_dir = work / "tokenizer"
    tokenizer = reuse_tokenizer(args.tokenizer, tok_dir) if args.tokenizer else build_tokenizer(tok_dir)
    config = demo_config(tokenizer, args.spatial_size, args.width)
    model = SegVol(config)
    init_for_ct(model, args.seed)
    params = sum(p.numel() for p in model.parameters())
    log(f"config {json.dumps(config.to_dict())}")
    log(f"parameters {params:,}; tokenizer {tokenizer.vocab_size} ids")
    cases = build_cases(args.seed, args.phantoms, config.spatial_size, args.cache or None, log)
    opts = replace(TrainOptions(), steps=args.steps, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
                   zoom_in_views=args.zoom_in_views)

    def snapshot(step: int) -> None:
        export_model(model, tok_dir, work / "latest")
        log(f"checkpoint at step {step}: {work / 'latest'}")

    monitor = monitor_cases(4, config.spatial_size)
    history = train(model, tokenizer, cases, opts, args.seed, work / "state.pt", args.save_every, snapshot, log,
                    monitor=monitor)
    del cases
    staging = work / "final"
    if staging.exists():
        shutil.rmtree(staging)
    export_model(model, tok_dir, staging)
    results = None
    if args.eval_phantoms > 0:
        results = evaluate(model, tokenizer, validation_phantoms(args.eval_phantoms), log=log,
                           window_prompts=args.window_prompts)
        results["phantoms"] = args.eval_phantoms
        results["window_prompts"] = args.window_prompts
        (work / "eval.json").write_text(json.dumps(results, indent=2))
    report = {"argv": list(argv) if argv is not None else __import__("sys").argv[1:], **vars(args)}
    (staging / "TRAINING.md").write_text(
        training_report(config, params, report, history, results, _file_sizes(staging), opts), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    log(f"wrote {out}")


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], phantoms: int, out: Path,
                        window_prompts: str = "aligned") -> dict[str, Any]:
    """:func:`evaluate` a saved checkpoint directory (with its tokenizer); results as JSON at ``out``."""
    from segvol_rt.export.checkpoint import build_model

    model, ckpt = build_model(checkpoint)
    tokenizer = ClipTokenizer.from_dir(ckpt.tokenizer_dir or checkpoint)
    results = evaluate(model, tokenizer, validation_phantoms(phantoms), log=_logger(), window_prompts=window_prompts)
    results["phantoms"] = phantoms
    results["window_prompts"] = window_prompts
    out.write_text(json.dumps(results, indent=2))
    return results


def _logger():
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    return log


if __name__ == "__main__":
    main()
