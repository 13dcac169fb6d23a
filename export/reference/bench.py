"""The official-style torch flow of the benchmarks: our torch SegVol called as
the official ``SegVol.forward`` is, and its stage timings beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt._optional import require
from segvol_rt.bench.report import Report, Row
from segvol_rt.bench.stages import Settings, Trial, bench_box, run_trials
from segvol_rt.bench.timing import LatencyStats, time_calls

if TYPE_CHECKING:
    from segvol_rt.export.model.segvol import SegVol
    from segvol_rt.io.config import SegVolConfig
    from segvol_rt.io.tokenizer import ClipTokenizer
    from segvol_rt.runtime import SegVolRuntime

# -- the official-style torch reference ------------------------------------------------


class OfficialStyleModel:
    """Our torch SegVol called the way the official ``SegVol.forward`` is:
    the text prompt tokenised and re-encoded by the CLIP text encoder on every
    call (the official model takes the text string), inputs moved to the
    model's device and the logits brought back to the host (the official demo
    resizes and blends logits on the CPU). fp32, eager, no_grad."""

    def __init__(self, model: SegVol, tokenizer: ClipTokenizer, template: str, device: str):
        self.torch = require("torch")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.device = device
        self.phrase: str | None = None
        self.calls = 0

    def __call__(self, image: Any, text_embedding: Any = None, boxes: Any = None, points: Any = None) -> Any:
        torch = self.torch
        dev = self.device
        self.calls += 1
        with torch.no_grad():
            text = None
            if text_embedding is not None and self.phrase is not None:
                ids = torch.from_numpy(self.tokenizer.encode_names([self.phrase], self.template)).to(dev)
                text = self.model.encode_text(ids)
            elif text_embedding is not None:
                text = text_embedding.to(dev)
            boxes = None if boxes is None else boxes.to(dev)
            points = None if points is None else tuple(p.to(dev) for p in points)
            return self.model(image.to(dev), text, boxes, points).cpu()


def official_targets(runtime: SegVolRuntime, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Zoom-out-space prompts of ``targets`` for :func:`run_official` (mapped
    through the runtime's geometry, as the official demo derives them)."""
    from segvol_rt.pipeline import prompts as P

    out = []
    for t in targets:
        box = P.parse_box(t["box"]) if t.get("box") is not None else None
        points = P.parse_points(t["points"]) if t.get("points") is not None else None
        mp = P.to_model_space(runtime.geometry, box, points)
        text = runtime.text_embeddings([t["text"]])[0] if t.get("text") else None
        pts = None if mp.points_zoom is None else (mp.points_zoom.coords, mp.points_zoom.labels)
        out.append({"phrase": t.get("text"), "text": text, "box_zoom": mp.box_zoom, "points_zoom": pts})
    return out


def run_official(wrapper: OfficialStyleModel, crop_image: Any, zoom_image: Any, targets: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The official demo's loop: one full zoom-out-zoom-in per target."""
    from segvol_rt.export.reference.official import official_zoom_out_zoom_in

    out = []
    for t in targets:
        wrapper.phrase = t["phrase"]
        out.append(official_zoom_out_zoom_in(wrapper, crop_image, zoom_image, t["text"], t["box_zoom"], t["points_zoom"]))
    return out


def official_trial(case: str, wrapper: OfficialStyleModel, runtime: SegVolRuntime, targets: Sequence[Mapping[str, Any]]) -> Trial:
    """The official-style flow on the runtime's crop and zoom-out images
    (preprocessing excluded, as in the reference figures)."""
    torch = wrapper.torch
    crop = torch.from_numpy(np.ascontiguousarray(runtime.crop_image))
    zoom = torch.from_numpy(np.ascontiguousarray(runtime.zoom_image))
    prompts = official_targets(runtime, targets)
    calls: list[int] = []
    label = f"torch official-style ({wrapper.device})"

    def run() -> None:
        wrapper.calls = 0
        run_official(wrapper, crop, zoom, prompts)
        calls.append(wrapper.calls)

    def record(report: Report, t: LatencyStats) -> Row:
        n = len(targets)
        return report.add(case, label, f"zoom-out-zoom-in, {n} target{'s' * (n > 1)}", t,
                          windows=calls[-1] - n, note=f"{calls[-1]} full model calls")

    return Trial(f"{case}: {label}", run, record)


def bench_official(report: Report, case: str, wrapper: OfficialStyleModel, runtime: SegVolRuntime,
                   targets: Sequence[Mapping[str, Any]], settings: Settings) -> Row | None:
    """:func:`official_trial` timed on its own."""
    return run_trials(report, [official_trial(case, wrapper, runtime, targets)], settings)[0]


def bench_official_graphs(report: Report, case: str, wrapper: OfficialStyleModel, config: SegVolConfig, settings: Settings) -> None:
    """The official model's per-window pieces: image encoder (batch 1, the
    official code never batches), text encoder, decoder with the upsample to
    the window (official ``forward_decoder``), one whole window."""
    torch = wrapper.torch
    dev = wrapper.device
    model = wrapper.model
    label = f"torch official-style ({dev})"
    x = torch.rand((1, 1, *config.spatial_size), generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        t = time_calls(lambda: model.encode_image(x), settings.repeat, settings.warmup)
        report.add(case, label, "image encoder, batch 1", t, batch=1)
        emb = model.encode_image(x)
        ids = lambda: torch.from_numpy(wrapper.tokenizer.encode_names(["liver"], wrapper.template)).to(dev)  # noqa: E731
        t = time_calls(lambda: model.encode_text(ids()), settings.repeat, settings.warmup)
        report.add(case, label, "text: tokenize + text encoder", t)
        text = model.encode_text(ids())
        boxes = torch.tensor([bench_box(config)], dtype=torch.float32).to(dev)
        t = time_calls(lambda: model.forward_decoder(emb, text, boxes), settings.repeat, settings.warmup)
        report.add(case, label, "decoder (text + box) + upsample, batch 1", t)
        wrapper.phrase = "liver"
        t = time_calls(lambda: wrapper(x.cpu(), text, boxes.cpu()), settings.repeat, settings.warmup)
        report.add(case, label, "one full window (model call)", t)


