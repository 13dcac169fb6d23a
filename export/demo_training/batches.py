"""One step's training batch of the demo SegVol (:mod:`segvol_rt.export.demo_training.training`).

:class:`View`: one image-encoder input (a *zoom-out* view of the whole crop, or
a *zoom-in* window of the runtime's plan, at crop resolution) with its labels;
:class:`Row`: one decoder query (target mask and prompts in the view's voxel
indices, (D, H, W)); the prompt-kind mixtures of SegVol's training (zoom-out
and zoom-in kinds and weights, jittered boxes, padded point prompts); and
:func:`sample_batch`, the views and rows of one step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segvol_rt.demo.phantom import PHANTOM_LABELS
from segvol_rt.export.demo_training.cases import Case
from segvol_rt.export.demo_training.recipe import SYNONYM_RATE, SYNONYMS
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z

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
    return View(image, labels, True, organ, tuple(scale))


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
