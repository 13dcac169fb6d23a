"""The official-style zoom-out-zoom-in in PyTorch: the parity reference.

:func:`official_zoom_out_zoom_in` calls our PyTorch :class:`SegVol` the way the
official ``inference_demo.zoom_in_zoom_out`` calls the official model: torch
``F.interpolate`` for every resize, ``torch.sigmoid`` for every threshold, a
MONAI-style sliding window written with torch ops, one window at a time and a
full model forward (image encoder + decoder + trilinear upsampling) per window.
It shares no code with :mod:`segvol_rt.pipeline.zoom` - only its inputs - so the two
implementations check each other. The benchmarks use it as the "official
flow" baseline.

The one documented departure from the official code is randomness:
``select_points`` draws with a numpy Generator seeded by ``seed`` (first
positive at ``rng.integers(n)``, extras at ``rng.permutation(n)[:k]``), the
protocol the runtime uses, instead of torch's global RNG.

Volumes are (D, H, W); prompts are zoom-out voxel indices (D, H, W),
boxes ``(d0, h0, w0, d1, h1, w1)`` inclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

OVERLAP = 0.5


def _tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


# -- official prompt helpers (torch) -------------------------------------------


def box_of(label: torch.Tensor) -> torch.Tensor:
    """Official ``generate_box``: inclusive box of ``label > 0``, or six -1."""
    idx = (label > 0).nonzero(as_tuple=True)
    if idx[0].numel() == 0:
        return torch.tensor([-1, -1, -1, -1, -1, -1])
    lo = [int(i.min()) for i in idx]
    hi = [min(int(s), int(i.max())) for s, i in zip(label.shape, idx)]
    return torch.tensor(lo + hi)


def choose_points(preds: torch.Tensor, rng: np.random.Generator, num_positive_extra: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``select_points`` (no negative extras) with the numpy-Generator protocol."""
    positive = torch.nonzero(preds > 0.9, as_tuple=True)
    n = int(positive[0].numel())
    rows: list[list[int]] = []
    labels: list[float] = []
    if n == 0:
        num_positive_extra = 0
        rows.append([-1, -1, -1])
        labels.append(-1.0)
    else:
        first = int(rng.integers(n))
        rows.append([int(positive[a][first]) for a in range(3)])
        labels.append(1.0)
    if num_positive_extra > 0:
        for j in rng.permutation(n)[:num_positive_extra]:
            rows.append([int(positive[a][int(j)]) for a in range(3)])
            labels.append(1.0)
    while len(labels) < num_positive_extra + 1:
        rows.append([-1, -1, -1])
        labels.append(-1.0)
    return torch.tensor(rows, dtype=torch.float32), torch.tensor(labels)


def cube_of(box: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Official ``build_binary_cube``."""
    cube = torch.zeros(tuple(shape))
    b = [int(v) for v in box]
    cube[b[0] : b[3] + 1, b[1] : b[4] + 1, b[2] : b[5] + 1] = 1
    return cube


def point_map_of(coords: torch.Tensor, labels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Official ``build_binary_points``: positive points set to 1."""
    out = torch.zeros(tuple(shape), dtype=torch.int16)
    pos = coords[labels == 1].long()
    out[pos[:, 0], pos[:, 1], pos[:, 2]] = 1
    return out


def roi_of(spatial_size: Sequence[int], logits: torch.Tensor) -> tuple[int, ...] | None:
    """Official ``logits2roi_coor``: (min_d, min_h, min_w, max_d, max_h, max_w) or None."""
    nz = torch.nonzero(torch.sigmoid(logits) > 0.5)
    if nz.shape[0] == 0:
        return None
    mins, maxs = [], []
    for axis in range(3):
        lo, hi = int(nz[:, axis].min()), int(nz[:, axis].max())
        pad = max(0, int(spatial_size[axis]) - (hi - lo + 1))
        mins.append(max(0, lo - pad // 2))
        maxs.append(min(int(logits.shape[axis]), hi + pad // 2))
    return (*mins, *maxs)


# -- MONAI-style sliding window (torch) -----------------------------------------


def _scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> list[int]:
    return [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(image_size, roi)]


def _window_slices(image_size: Sequence[int], roi: Sequence[int], interval: Sequence[int]) -> list[tuple[slice, ...]]:
    """MONAI ``dense_patch_slices`` in meshgrid order."""
    per_axis = []
    for size, r, step in zip(image_size, roi, interval):
        num = math.ceil(size / step)
        last = next((d for d in range(num) if d * step + r >= size), None)
        count = 1 if last is None else last + 1
        per_axis.append([i * step - max(i * step + r - size, 0) for i in range(count)])
    grid = torch.meshgrid(*[torch.tensor(a) for a in per_axis], indexing="ij")
    starts = torch.stack([g.flatten() for g in grid], dim=1).tolist()
    return [tuple(slice(int(s), int(s) + r) for s, r in zip(start, roi)) for start in starts]


def sliding_window(
    model: Any,
    image: torch.Tensor,
    roi_size: Sequence[int],
    text_embedding: torch.Tensor | None,
    binary_cube: torch.Tensor | None,
    binary_points: torch.Tensor | None,
    global_preds: torch.Tensor,
    rng: np.random.Generator,
    overlap: float = OVERLAP,
) -> torch.Tensor:
    """SegVol's patched MONAI ``sliding_window_inference`` (constant blend, batch 1).

    ``image`` (1, 1, d, h, w); maps and ``global_preds`` (d, h, w). Only
    ``global_preds`` is padded; the prompt maps are sliced unpadded (official)."""
    size = list(image.shape[2:])
    pad: list[int] = []
    for k in range(len(size) - 1, -1, -1):  # F.pad order: last axis first
        diff = max(int(roi_size[k]) - size[k], 0)
        pad.extend([diff // 2, diff - diff // 2])
    image = F.pad(image, pad, mode="constant", value=0.0)
    preds = F.pad(global_preds[None, None], pad, mode="constant", value=0)[0, 0]
    padded = list(image.shape[2:])
    slices = _window_slices(padded, roi_size, _scan_interval(padded, roi_size, overlap))
    out = torch.zeros([1, 1] + padded, dtype=image.dtype)
    count = torch.zeros([1, 1] + padded, dtype=image.dtype)
    for sl in slices:
        boxes = points = None
        if binary_points is not None:
            coords, labels = choose_points(binary_points[sl], rng)
            points = (coords[None], labels[None])
        if binary_cube is not None:
            boxes = box_of(binary_cube[sl] if len(slices) == 1 else preds[sl])[None].float()
        elif binary_points is not None:
            boxes = box_of(preds[sl])[None].float()
        with torch.no_grad():
            logits = model(image[(slice(None), slice(None), *sl)], text_embedding, boxes, points)
        out[(slice(None), slice(None), *sl)] += 1.0 * logits
        count[(slice(None), slice(None), *sl)] += 1.0
    out = out / count
    keep = [slice(pad[2 * (2 - a)], pad[2 * (2 - a)] + size[a]) for a in range(3)]
    return out[(0, 0, *keep)]


# -- the pipeline ------------------------------------------------------------------


def _zoom_out_prompts(
    box_zoom: Sequence[int] | None, points_zoom: tuple[Any, Any] | None, spatial: Sequence[int]
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None, torch.Tensor | None]:
    """The zoom-out pass's prompts, as the official model takes them, and their maps.

    Returns ``(boxes, points, cube_zoom, points_map_zoom)``: ``boxes`` (1, 6),
    ``points`` ``(coords (1, N, 3), labels (1, N))``, and the binary box cube
    and positive-point map of ``spatial`` (D', H', W'); each None without its prompt.
    """
    boxes = points = cube_zoom = points_map_zoom = None
    if points_zoom is not None:
        coords, labels = _tensor(points_zoom[0]).reshape(-1, 3), _tensor(points_zoom[1]).reshape(-1)
        points = (coords[None], labels[None])
        points_map_zoom = point_map_of(coords, labels, spatial)
    if box_zoom is not None:
        boxes = torch.tensor([float(v) for v in box_zoom])[None]
        cube_zoom = cube_of(box_zoom, spatial)
    return boxes, points, cube_zoom, points_map_zoom


def _to_crop(map_zoom: torch.Tensor | None, shape: Sequence[int]) -> torch.Tensor | None:
    """A zoom-out (D', H', W') prompt map resized to the crop's (D, H, W), nearest; None stays None."""
    if map_zoom is None:
        return None
    return F.interpolate(map_zoom[None, None].float(), size=shape, mode="nearest")[0, 0]


def _zoom_in_stage(
    model: Any,
    crop: torch.Tensor,
    coarse: torch.Tensor,
    spatial: Sequence[int],
    text: torch.Tensor | None,
    binary_cube: torch.Tensor | None,
    binary_points: torch.Tensor | None,
    seed: int,
) -> torch.Tensor:
    """The official zoom-in: the ROI of the coarse logits, a sliding window of
    ``spatial`` windows over it, its logits written into ``coarse`` (in place).

    ``crop``, ``coarse`` and the crop-space prompt maps are (D, H, W); returns
    ``coarse``, unchanged when no voxel of it is foreground."""
    roi = roi_of(spatial, coarse)
    if roi is None:
        return coarse
    d0, h0, w0, d1, h1, w1 = roi
    sl = (slice(d0, d1 + 1), slice(h0, h1 + 1), slice(w0, w1 + 1))
    global_preds = (torch.sigmoid(coarse[sl]) > 0.5).long()
    fine = sliding_window(
        model,
        crop[sl][None, None],
        spatial,
        text,
        None if binary_cube is None else binary_cube[sl],
        None if binary_points is None else binary_points[sl],
        global_preds,
        np.random.default_rng(seed),
    )
    coarse[sl] = fine
    return coarse


def official_zoom_out_zoom_in(
    model: Any,
    crop_image: Any,
    zoom_image: Any,
    text_embedding: Any = None,
    box_zoom: Sequence[int] | None = None,
    points_zoom: tuple[Any, Any] | None = None,
    zoom_in: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """Crop-space logits (D, H, W) float32 of one target, official flow.

    Args:
        model: our :class:`segvol_rt.export.model.segvol.SegVol` (eval mode).
        crop_image: (D, H, W) normalised crop-space image.
        zoom_image: (D', H', W') = ``spatial_size`` zoom-out image.
        text_embedding: (C,) or (1, C), or None.
        box_zoom: inclusive zoom-out box, or None.
        points_zoom: ``(coords (N, 3), labels (N,))`` zoom-out points (labels 1/0), or None.
        zoom_in: run the zoom-in stage (else return the coarse logits).
        seed: seed of ``select_points``' numpy Generator.
    """
    crop = _tensor(crop_image)
    zoom = _tensor(zoom_image)
    spatial = tuple(int(s) for s in zoom.shape)
    shape = tuple(int(s) for s in crop.shape)
    text = None if text_embedding is None else _tensor(text_embedding).reshape(1, -1)
    boxes, points, cube_zoom, points_map_zoom = _zoom_out_prompts(box_zoom, points_zoom, spatial)

    with torch.no_grad():
        global_logits = model(zoom[None, None], text, boxes, points)
    coarse = F.interpolate(global_logits, size=shape, mode="nearest")[0, 0]
    if not zoom_in:
        return coarse
    binary_points = _to_crop(points_map_zoom, shape)
    binary_cube = _to_crop(cube_zoom, shape)
    return _zoom_in_stage(model, crop, coarse, spatial, text, binary_cube, binary_points, seed)
