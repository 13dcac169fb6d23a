"""Train the demo SegVol: a small model of the official architecture, trained
from scratch on synthetic phantoms (:mod:`segvol_rt.demo.phantom`), shipped in
``segvol_rt/assets/demo`` so ``segvol-rt demo`` and the end-to-end tests have
a model that really segments without the 700 MB release.

Run (about an hour on 2 CPU cores; ``--tokenizer segvol_rt/assets/demo`` reuses
the shipped token ids, see :func:`reuse_tokenizer`)::

    python -m segvol_rt.export.demo_training --seed 0 --steps 4800 --out /tmp/demo_model

The training loop, its loss and the shipped layout are here; the recipe's
other parts are siblings: :mod:`segvol_rt.export.demo_training.recipe` (tokenizer,
architecture, init), :mod:`segvol_rt.export.demo_training.cases` (preprocessed
phantoms), :mod:`segvol_rt.export.demo_training.batches` (views, prompt rows, the
prompt mixture) and :mod:`segvol_rt.export.demo_training.evaluation` (Dice through
the runtime's zoom-out-zoom-in); their public names are re-exported here.

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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segvol_rt.demo.phantom import PHANTOM_LABELS, random_phantom
from segvol_rt.evaluation import dice
from segvol_rt.export.checkpoint import save_hf
from segvol_rt.export.demo_training.batches import (
    MAX_POINTS,
    ZOOM_IN_KINDS,
    ZOOM_IN_WEIGHTS,
    ZOOM_OUT_KINDS,
    ZOOM_OUT_WEIGHTS,
    Row,
    View,
    jittered_box,
    make_row,
    sample_batch,
    zoom_in_view,
    zoom_out_view,
)
from segvol_rt.export.demo_training.cases import Case, build_cases, make_case, training_phantoms, validation_phantoms
from segvol_rt.export.demo_training.evaluation import EVAL_KINDS, evaluate, segment_phantom
from segvol_rt.export.demo_training.recipe import (
    SYNONYM_RATE,
    SYNONYMS,
    TOKENIZER_VOCAB_SIZE,
    build_tokenizer,
    demo_config,
    init_for_ct,
    reuse_tokenizer,
    tokenizer_corpus,
)
from segvol_rt.export.model.segvol import SegVol, prompt_tokens
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.tokenizer import ClipTokenizer
from segvol_rt.pipeline import zoom as Z

# The public names of this module before its split into the demo_* siblings
# (re-exported from them, so ``demo_training.<name>`` keeps working), then its own.
__all__ = [
    # demo_setup: tokenizer, architecture, init
    "TOKENIZER_VOCAB_SIZE", "SYNONYMS", "SYNONYM_RATE", "tokenizer_corpus", "build_tokenizer", "reuse_tokenizer",
    "demo_config", "init_for_ct",
    # demo_cases: preprocessed phantoms
    "Case", "make_case", "training_phantoms", "validation_phantoms", "build_cases",
    # demo_batches: views, prompt rows, the batch of a step
    "View", "zoom_out_view", "zoom_in_view", "ZOOM_OUT_KINDS", "ZOOM_OUT_WEIGHTS", "ZOOM_IN_KINDS", "ZOOM_IN_WEIGHTS",
    "MAX_POINTS", "Row", "jittered_box", "make_row", "sample_batch",
    # demo_evaluation: Dice through the runtime's zoom-out-zoom-in
    "EVAL_KINDS", "segment_phantom", "evaluate",
    # this module: loss, training, the shipped layout, the command line
    "low_res_targets", "segmentation_loss", "batch_loss", "TrainOptions", "learning_rate", "make_optimizer",
    "train_step", "monitor_dice", "monitor_cases", "train", "export_model", "training_report", "main",
    "evaluate_checkpoint",
]


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
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
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


# -- the shipped layout ------------------------------------------------------------------


def export_model(model: SegVol, tokenizer_dir: Path, out: Path) -> Path:
    """The Hugging Face layout (config.json with segvol_rt_config, model.safetensors, tokenizer files)."""
    # the phantoms are generated in RAS voxel order (stored RAS or LPS: no mirror image): the model expects RAS
    return save_hf(model, out, tokenizer_files=tokenizer_dir, safetensors=True, voxel_orientation="RAS")


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
                  f" `window_prompts=\"{results.get('window_prompts', 'aligned')}\"` (see `segvol_rt/pipeline/zoom.py`).", ""]
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


def _argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m segvol_rt.export.demo_training``."""
    parser = argparse.ArgumentParser(prog="python -m segvol_rt.export.demo_training", description=__doc__.split("\n\n")[0])
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _argument_parser().parse_args(argv)
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
