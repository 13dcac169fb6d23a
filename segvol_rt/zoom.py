"""Zoom-out-zoom-in: official SegVol inference on the three graphs, numpy only.

One target runs as in the official demo (``inference_demo.zoom_in_zoom_out``
with MONAI's ``sliding_window_inference`` as SegVol patched it):

1. **Coarse pass.** Decode the zoom-out embedding with the zoom-out prompts;
   low-res logits -> trilinear to ``spatial_size`` -> ``nearest`` (torch's
   legacy mode, *not* nearest-exact) to the crop shape: the crop logits.
2. **ROI** (:func:`find_roi`, official ``logits2roi_coor``): inclusive box of
   ``sigmoid > 0.5``, each axis widened by ``max(0, window - extent) // 2``
   on both sides, min clamped to 0 and max to the axis *size* (so max may be
   one past the last index; slicing ``[min:max + 1]`` clamps). No voxel ->
   the coarse result stands, flagged "no foreground".
3. **Window prompts.** The zoom-out box becomes a binary cube and the positive
   zoom-out points a binary point map, both nearest-resized to the crop
   shape and sliced to the ROI; ``global_preds = sigmoid(coarse[ROI]) > 0.5``.
4. **Sliding windows** over the ROI image (:func:`plan_windows`): window =
   ``spatial_size``, overlap 0.5, constant blending, MONAI semantics (ROI
   padded symmetrically with zeros up to the window, windows in meshgrid
   order, sum / count, padding cropped away). Per window: box mode uses
   ``generate_box(cube[window])`` when there is a single window, else
   ``generate_box(global_preds[window])``; point mode uses
   ``select_points(point_map[window], 4 positive extra, 0 negative)`` and
   ``generate_box(global_preds[window])``.
   QUIRK (reproduced): the official pads ``global_preds`` but not the binary
   prompt maps, yet slices both with the padded-space window slices; a map
   slice may therefore be shorter than the window and its box/points are in
   the unpadded map's indices.
   EXTENSION: official asserts box and points are not both given; with both,
   the box comes from the box rule and the points from the point rule.
   RANDOMNESS: official ``select_points`` draws from torch's global RNG; here
   each target has ``numpy.random.default_rng(seed)``, consumed window by
   window in window order (protocol in :func:`segvol_rt.prompts.select_points`).
   Each window's low-res logits are trilinearly upsampled to the window size
   before blending.
5. **Paste** the blended ROI logits into the coarse crop logits.

Across targets (:func:`zoom_in`): windows whose image content coincides
(same crop-space window box and same valid part) are encoded once through
:class:`EmbeddingCache`; encoder calls take up to the spec's max batch of
windows, decoder calls the windows of one target with the same token labels.
Batching never reorders the blend: windows are summed in window order.

Volumes are (D, H, W) numpy arrays in crop space unless stated otherwise.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import ops, ops_extra
from . import prompts as P

Vec3 = tuple[int, int, int]
OVERLAP = 0.5
POINT_EXTRA_POSITIVE = 4  # sliding_window_inference's select_points defaults
POINT_EXTRA_NEGATIVE = 0


def to_host(x: Any) -> np.ndarray:
    """A backend output as numpy: CUDA backends (``backend.xp`` = cupy) hand
    device arrays back; this CPU pipeline copies them to the host."""
    return x.get() if hasattr(x, "__cuda_array_interface__") else np.asarray(x)


# -- timings -------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds per stage, accumulated."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)


# -- ROI -----------------------------------------------------------------------


@dataclass(frozen=True)
class Roi:
    """The zoom-in region in crop space.

    ``official`` is ``logits2roi_coor``'s ``(min_d, min_h, min_w, max_d, max_h,
    max_w)`` (max may equal the axis size); ``lo``/``hi`` the half-open slice
    it denotes once ``[min:max + 1]`` is clamped to the volume."""

    official: tuple[int, int, int, int, int, int]
    lo: Vec3
    hi: Vec3

    @property
    def shape(self) -> Vec3:
        return tuple(b - a for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]


def find_roi(crop_logits: np.ndarray, window: Sequence[int]) -> Roi | None:
    """Official ``logits2roi_coor`` on crop logits (D, H, W); None without foreground."""
    box = ops.positive_box(crop_logits)
    if box is None:
        return None
    size = crop_logits.shape
    mins, maxs = [], []
    for axis in range(3):
        a, b = int(box[axis]), int(box[axis + 3])
        pad = max(0, int(window[axis]) - (b - a + 1))
        mins.append(max(0, a - pad // 2))
        maxs.append(min(size[axis], b + pad // 2))
    hi = tuple(min(m + 1, s) for m, s in zip(maxs, size))
    return Roi(tuple(mins + maxs), tuple(mins), hi)  # type: ignore[arg-type]


# -- window plan (MONAI sliding_window_inference) -------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Windows over an ROI of ``roi_shape``, MONAI style.

    The ROI is zero-padded to ``padded_shape`` (``pad_before`` =
    ``diff // 2``, the rest after); ``starts`` are window corners in padded
    space, in meshgrid ('ij') order."""

    roi_shape: Vec3
    window: Vec3
    pad_before: Vec3
    padded_shape: Vec3
    starts: tuple[Vec3, ...]

    def __len__(self) -> int:
        return len(self.starts)

    def slices(self, start: Sequence[int]) -> tuple[slice, slice, slice]:
        """Padded-space slices of the window at ``start``."""
        return tuple(slice(s, s + w) for s, w in zip(start, self.window))  # type: ignore[return-value]


def plan_windows(roi_shape: Sequence[int], window: Sequence[int], overlap: float = OVERLAP) -> WindowPlan:
    """Window plan for an ROI; see :class:`WindowPlan`."""
    pads = ops.pad_for_windows(roi_shape, window)
    padded = tuple(int(s) + a + b for s, (a, b) in zip(roi_shape, pads))
    starts = tuple(tuple(int(v) for v in s) for s in ops.window_starts(roi_shape, window, overlap))
    return WindowPlan(
        tuple(int(s) for s in roi_shape),  # type: ignore[arg-type]
        tuple(int(w) for w in window),  # type: ignore[arg-type]
        tuple(a for a, _ in pads),  # type: ignore[arg-type]
        padded,  # type: ignore[arg-type]
        starts,  # type: ignore[arg-type]
    )


def window_key(roi: Roi, plan: WindowPlan, start: Sequence[int]) -> tuple[int, ...]:
    """Cache key of a window's image: its crop-space box and the part of it inside the ROI
    (outside that the window image is zero padding)."""
    lo = [r + s - b for r, s, b in zip(roi.lo, start, plan.pad_before)]
    hi = [a + w for a, w in zip(lo, plan.window)]
    vlo = [max(a, r) for a, r in zip(lo, roi.lo)]
    vhi = [min(b, r) for b, r in zip(hi, roi.hi)]
    return (*lo, *hi, *vlo, *vhi)


def window_image(crop_image: np.ndarray, key: Sequence[int]) -> np.ndarray:
    """The window's image (D, H, W) float32 from its :func:`window_key`: the ROI image's
    padded window, i.e. crop voxels inside the ROI and zeros elsewhere."""
    lo, hi, vlo, vhi = key[0:3], key[3:6], key[6:9], key[9:12]
    out = np.zeros([b - a for a, b in zip(lo, hi)], dtype=np.float32)
    dst = tuple(slice(v0 - a, v1 - a) for v0, v1, a in zip(vlo, vhi, lo))
    out[dst] = crop_image[tuple(slice(v0, v1) for v0, v1 in zip(vlo, vhi))]
    return out


# -- prompts of a target ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One segmentation request in model space.

    ``text_embedding`` (C,) float32 or None; ``box_zoom`` / ``points_zoom`` in
    zoom-out voxel indices (D, H, W); ``seed`` drives ``select_points``."""

    text_embedding: np.ndarray | None = None
    box_zoom: P.Box | None = None
    points_zoom: P.Points | None = None
    seed: int = 0

    @property
    def has_text(self) -> bool:
        return self.text_embedding is not None

    def coarse_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        return P.decoder_tokens(self.points_zoom, self.box_zoom, self.has_text)


@dataclass
class WindowWork:
    """One zoom-in window of one target: cache key and decoder tokens."""

    key: tuple[int, ...]
    coords: np.ndarray
    labels: np.ndarray


@dataclass
class ZoomInPlan:
    """A target's zoom-in: ROI, window plan and per-window work, in window order."""

    roi: Roi
    plan: WindowPlan
    windows: list[WindowWork]


def _nearest_to_roi(zoom_map: np.ndarray, crop_shape: Sequence[int], roi: Roi) -> np.ndarray:
    """``resize(zoom_map, crop_shape, "nearest")[roi.slices]`` without the crop-size volume."""
    index = [
        ops.nearest_source_index(int(n), int(c), "nearest")[lo:hi]
        for n, c, lo, hi in zip(zoom_map.shape, crop_shape, roi.lo, roi.hi)
    ]
    return zoom_map[np.ix_(*index)]


def prompt_maps(target: Target, zoom_shape: Sequence[int], crop_shape: Sequence[int], roi: Roi) -> tuple[Any, Any]:
    """The binary cube and positive-point map (or None) on the ROI: built in
    zoom-out space, resized with ``nearest`` to the crop shape and sliced to
    the ROI, as official (only the ROI part is computed)."""
    cube = points = None
    if target.box_zoom is not None:
        cube = _nearest_to_roi(P.binary_cube(target.box_zoom, zoom_shape), crop_shape, roi)
    if target.points_zoom is not None:
        points = _nearest_to_roi(P.binary_points(target.points_zoom, zoom_shape), crop_shape, roi)
    return cube, points


def plan_zoom_in(
    target: Target,
    crop_logits: np.ndarray,
    window: Sequence[int],
    zoom_shape: Sequence[int],
) -> ZoomInPlan | None:
    """ROI, windows and each window's prompts for one target; None without foreground."""
    roi = find_roi(crop_logits, window)
    if roi is None:
        return None
    plan = plan_windows(roi.shape, window)
    # Official: prompt maps sliced to the ROI but never padded (see module doc).
    cube, point_map = prompt_maps(target, zoom_shape, crop_logits.shape, roi)
    global_preds = np.zeros(plan.padded_shape, dtype=np.uint8)
    inner = tuple(slice(b, b + s) for b, s in zip(plan.pad_before, roi.shape))
    global_preds[inner] = ops.positive_mask(crop_logits[roi.slices])
    rng = np.random.default_rng(target.seed)
    works = []
    for start in plan.starts:
        sl = plan.slices(start)
        box = points = None
        if cube is not None:
            box = P.generate_box(cube[sl] if len(plan) == 1 else global_preds[sl])
        if point_map is not None:
            points = P.select_points(point_map[sl], rng, POINT_EXTRA_POSITIVE, POINT_EXTRA_NEGATIVE)
            if box is None:
                box = P.generate_box(global_preds[sl])
        coords, labels = P.decoder_tokens(points, box, target.has_text)
        works.append(WindowWork(window_key(roi, plan, start), coords, labels))
    return ZoomInPlan(roi, plan, works)


# -- running the graphs ----------------------------------------------------------


class EmbeddingCache:
    """Window image embeddings keyed by :func:`window_key`; counts encoder work."""

    def __init__(self) -> None:
        self.embeddings: dict[tuple[int, ...], np.ndarray] = {}
        self.windows_encoded = 0
        self.encoder_calls = 0

    def ensure(self, backend: Any, crop_image: np.ndarray, keys: Sequence[tuple[int, ...]], max_batch: int) -> None:
        """Encode every key not cached yet, ``max_batch`` windows per encoder call."""
        todo = list(dict.fromkeys(k for k in keys if k not in self.embeddings))
        for i in range(0, len(todo), max_batch):
            chunk = todo[i : i + max_batch]
            batch = np.stack([window_image(crop_image, k) for k in chunk])[:, None]
            emb = to_host(backend.encode_image(batch))
            self.encoder_calls += 1
            self.windows_encoded += len(chunk)
            for k, e in zip(chunk, emb):
                self.embeddings[k] = e

    def clear(self) -> None:
        self.embeddings.clear()


def _text_rows(text_embeddings: Sequence[np.ndarray | None], dim: int) -> np.ndarray:
    rows = [np.zeros(dim, np.float32) if t is None else np.asarray(t, np.float32).reshape(dim) for t in text_embeddings]
    return np.stack(rows)


def decode_batched(
    backend: Any,
    embeddings: Sequence[np.ndarray],
    tokens: Sequence[tuple[np.ndarray, np.ndarray]],
    text_embeddings: Sequence[np.ndarray | None],
    max_batch: int,
    dim: int,
) -> list[np.ndarray]:
    """Low-res logits (4d, 4h, 4w) per row; rows with the same token labels share
    decoder calls of up to ``max_batch`` rows."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (_, labels) in enumerate(tokens):
        groups[tuple(int(v) for v in labels)].append(i)
    out: list[np.ndarray | None] = [None] * len(tokens)
    for rows in groups.values():
        for j in range(0, len(rows), max_batch):
            idx = rows[j : j + max_batch]
            logits = backend.decode(
                np.ascontiguousarray(np.stack([embeddings[i] for i in idx]), dtype=np.float32),
                np.stack([tokens[i][0] for i in idx]).astype(np.float32),
                np.stack([tokens[i][1] for i in idx]).astype(np.int32),
                _text_rows([text_embeddings[i] for i in idx], dim),
            )
            for i, lg in zip(idx, to_host(logits)):
                out[i] = lg[0]
    return out  # type: ignore[return-value]


def coarse_crop_logits(low_res: np.ndarray, spatial_size: Sequence[int], crop_shape: Sequence[int]) -> np.ndarray:
    """Coarse low-res logits -> trilinear to ``spatial_size`` -> ``nearest`` to the crop shape."""
    return np.asarray(ops.upsample_then_nearest(low_res, tuple(spatial_size), tuple(crop_shape)), dtype=np.float32)


def blend(plan: WindowPlan, window_logits: Iterable[np.ndarray]) -> np.ndarray:
    """Constant-weight MONAI blend: windows added in window order into float32
    sum and count volumes in padded space, divided, the padding cropped away;
    returns ROI logits of ``plan.roi_shape``."""
    total = np.zeros(plan.padded_shape, dtype=np.float32)
    count = np.zeros(plan.padded_shape, dtype=np.float32)
    for start, logits in zip(plan.starts, window_logits):
        ops_extra.blend_accumulate(total, count, logits[None], [start])
    pads = [(b, p - s - b) for b, p, s in zip(plan.pad_before, plan.padded_shape, plan.roi_shape)]
    return np.ascontiguousarray(ops.unpad(ops_extra.blend_divide(total, count), pads))


def zoom_in(
    backend: Any,
    crop_image: np.ndarray,
    plans: Sequence[ZoomInPlan],
    targets: Sequence[Target],
    cache: EmbeddingCache,
    window: Sequence[int],
    max_batch: tuple[int, int],
    dim: int,
    timings: Timings | None = None,
) -> list[np.ndarray]:
    """ROI logits per plan. Windows of all plans go through the encoder once per
    distinct key (``max_batch[0]`` per call); each target's windows through the
    decoder (``max_batch[1]`` per call); then upsample and blend."""
    timings = timings or Timings()
    with timings.stage("encode_windows"):
        cache.ensure(backend, crop_image, [w.key for p in plans for w in p.windows], max_batch[0])
    results = []
    for plan, target in zip(plans, targets):
        with timings.stage("decode_windows"):
            low = decode_batched(
                backend,
                [cache.embeddings[w.key] for w in plan.windows],
                [(w.coords, w.labels) for w in plan.windows],
                [target.text_embedding] * len(plan.windows),
                max_batch[1],
                dim,
            )
        with timings.stage("blend"):
            # upsampled one window at a time, in window order (MONAI's sum order)
            full = (ops.resize(lg, tuple(window), "trilinear") for lg in low)
            results.append(blend(plan.plan, full))
    return results
