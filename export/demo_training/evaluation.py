"""Evaluation of the demo SegVol (:mod:`segvol_rt.export.demo_training.training`):
per-organ Dice on held-out phantoms through the runtime's own
zoom-out-zoom-in code (:mod:`segvol_rt.pipeline.zoom`, prompts mapped by
:func:`segvol_rt.pipeline.prompts.to_model_space`) on the torch model, whose
calls :class:`_TorchGraphs` adapts to the runtime's backend interface.
Masks and Dice are in scan space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segvol_rt.demo.phantom import PHANTOM_LABELS, Phantom
from segvol_rt.evaluation import dice
from segvol_rt.export.model.segvol import SegVol
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.tokenizer import ClipTokenizer
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z
from segvol_rt.pipeline.preprocess import preprocess

# -- evaluation through the runtime's zoom-out-zoom-in -----------------------------------


class _TorchGraphs:
    """The runtime's backend calls (:mod:`segvol_rt.pipeline.zoom`) on a torch :class:`SegVol`."""

    xp = np  # host arrays in and out

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

    def rest(self) -> None:
        """Nothing to give back: torch frees a call's intermediates as it returns."""


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
    settings = Z.ZoomSettings(config.spatial_size, encoder_batch=8, decoder_batch=8, window_prompts=window_prompts)
    fine[plan.roi.slices] = Z.zoom_in(graphs, scan.crop, [plan], [target], scan.windows, settings, config.embed_dim)[0]
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
