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
   the unpadded map's indices. ALIGNED (``window_prompts="aligned"``, not
   official): the maps are padded like the image, so a window's box and
   points sit on the voxels they mark. The two differ only where the ROI is
   smaller than a window along an axis (scans smaller than a window).
   EXTENSION: official asserts box and points are not both given; with both,
   the box comes from the box rule and the points from the point rule.
   RANDOMNESS: official ``select_points`` draws from torch's global RNG; here
   each target has ``numpy.random.default_rng(seed)``, consumed window by
   window in window order (protocol in :func:`segvol_rt.pipeline.prompts.select_points`).
   Each window's low-res logits are trilinearly upsampled to the window size
   before blending.
5. **Paste** the blended ROI logits into the coarse crop logits.

Across targets (:func:`zoom_in`): windows whose image content coincides
(same crop-space window box and same valid part) are encoded once through
:class:`EmbeddingCache` (bounded by bytes, least recently used out);
encoder calls take up to the spec's max batch of windows, decoder calls the
windows of one target with the same token labels.
Batching never reorders the blend: windows are summed in window order.

Arrays: volumes, embeddings and logits live in the backend's array module
(``backend.xp``: numpy on CPU backends, cupy on CUDA backends) and never
leave it; every volume operation goes through :mod:`segvol_rt.ops`, whose
functions run their CUDA twins (:mod:`segvol_rt.ops.cuda`) on cupy arrays. Only
small things cross: bounding boxes come back (six ints each: the ROI and the
window prompt boxes), prompt tokens and text rows go up per decoder call.
The binary prompt maps of the window prompts depend on the prompts alone, so
they are built on the host. Volumes are (D, H, W) in crop space unless
stated otherwise.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.ops.arrays import to_host
from segvol_rt.ops.boxes import InclusiveBox
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline.caches import MIB, ByteLRU
from segvol_rt.timing import StageClock
from segvol_rt.types import WINDOW_PROMPTS, Roi, check_window_prompts  # noqa: F401  (Z.* names of the zoom's types)

Vec3 = tuple[int, int, int]
OVERLAP = 0.5
POINT_EXTRA_POSITIVE = 4  # sliding_window_inference's select_points defaults
POINT_EXTRA_NEGATIVE = 0
# windows blended per kernel launch on the device (on the host one at a time:
# stacking would only add a copy); the sums are the same either way
DEVICE_BLEND_CHUNK = 8


# -- the graphs and the settings -----------------------------------------------------


class Graphs(Protocol):
    """What the pipeline needs of a backend (:class:`segvol_rt.backends.base.Backend`
    has it): the array module of its inputs and outputs, and two graphs.
    Shapes as in :mod:`segvol_rt.io.spec`."""

    @property
    def xp(self) -> Any:
        """numpy or cupy."""

    def encode_image(self, image: Any) -> Any:
        """(B, 1, D, H, W) float32 -> image embedding (B, C, d, h, w)."""

    def decode(self, image_embedding: Any, coords: Any, labels: Any, text_embedding: Any) -> Any:
        """Prompt tokens -> low-res logits (B, 1, 4d, 4h, 4w)."""

    def rest(self) -> None:
        """Give back the last runs' intermediate memory (called before array work follows them)."""


@dataclass(frozen=True)
class ZoomSettings:
    """How the zoom-in runs: the window ``(D, H, W)`` (the model's spatial
    size), the sliding-window ``overlap``, the rows per graph call
    (``encoder_batch`` windows per image-encoder call, ``decoder_batch`` rows
    per decoder call) and the window-prompt placement (``"official"`` or
    ``"aligned"``, see the module doc)."""

    window: Vec3
    overlap: float = OVERLAP
    encoder_batch: int = 1
    decoder_batch: int = 1
    window_prompts: str = "official"

    def __post_init__(self) -> None:
        check_window_prompts(self.window_prompts)
        if not 0 <= self.overlap < 1:
            raise SegVolError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.encoder_batch < 1 or self.decoder_batch < 1:
            raise SegVolError(f"batch limits must be positive, got {self.encoder_batch}, {self.decoder_batch}")


# -- ROI -----------------------------------------------------------------------


def find_roi(crop_logits: Any, window: Sequence[int]) -> Roi | None:
    """Official ``logits2roi_coor`` on crop logits (D, H, W); None without foreground."""
    box = ops.positive_box(crop_logits)
    return None if box is None else roi_from_box(box, crop_logits.shape, window)


def roi_from_box(box: Sequence[int], size: Sequence[int], window: Sequence[int]) -> Roi:
    """:func:`find_roi` of a coarse prediction whose inclusive positive box is ``box``
    ``(d0, h0, w0, d1, h1, w1)`` in a crop of ``size``."""
    mins, maxs = [], []
    for axis in range(3):
        a, b = int(box[axis]), int(box[axis + 3])
        pad = max(0, int(window[axis]) - (b - a + 1))
        mins.append(max(0, a - pad // 2))
        maxs.append(min(int(size[axis]), b + pad // 2))
    hi = tuple(min(m + 1, int(s)) for m, s in zip(maxs, size))
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


def _valid_slices(key: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(window-local slices, crop-space slices) of the part of a window inside the ROI."""
    lo, vlo, vhi = key[0:3], key[6:9], key[9:12]
    local = tuple(slice(v0 - a, v1 - a) for v0, v1, a in zip(vlo, vhi, lo))
    return local, tuple(slice(v0, v1) for v0, v1 in zip(vlo, vhi))


def window_image(crop_image: Any, key: Sequence[int]) -> Any:
    """The window's image (D, H, W) float32 from its :func:`window_key`: the ROI image's
    padded window, i.e. crop voxels inside the ROI and zeros elsewhere."""
    return window_batch(crop_image, [key])[0, 0]


def window_batch(crop_image: Any, keys: Sequence[Sequence[int]]) -> Any:
    """The images of windows of one size as an encoder batch ``(n, 1, D, H, W)``
    float32, cut from ``crop_image`` in its own array module (on the device
    for cupy: one zero fill and one copy per window)."""
    xp = ops.array_namespace(crop_image)
    size = [b - a for a, b in zip(keys[0][0:3], keys[0][3:6])]
    out = xp.zeros((len(keys), 1, *size), dtype=xp.float32)
    for i, key in enumerate(keys):
        local, src = _valid_slices(key)
        out[i, 0][local] = crop_image[src]
    return out


# -- prompts of a target ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One segmentation request in model space.

    ``text_embedding`` (C,) float32 or None; ``box_zoom`` / ``points_zoom`` in
    zoom-out voxel indices (D, H, W); ``seed`` drives ``select_points``."""

    text_embedding: np.ndarray | None = None
    box_zoom: InclusiveBox | None = None
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


def prompt_maps(
    target: Target, zoom_shape: Sequence[int], crop_shape: Sequence[int], roi: Roi, with_cube: bool = True
) -> tuple[Any, Any]:
    """The binary cube (unless ``with_cube`` is false) and positive-point map (or
    None) on the ROI, host uint8: built in zoom-out space, resized with
    ``nearest`` to the crop shape and sliced to the ROI, as official (only the
    ROI part is computed)."""
    cube = points = None
    if target.box_zoom is not None and with_cube:
        cube = _nearest_to_roi(P.binary_cube(target.box_zoom, zoom_shape), crop_shape, roi)
    if target.points_zoom is not None:
        points = _nearest_to_roi(P.binary_points(target.points_zoom, zoom_shape), crop_shape, roi)
    return cube, points


def pad_like_roi(roi_map: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """An ROI-shaped host map zero-padded as the ROI image is (``plan.pad_before``
    first, the rest after), so window slices cut it where they cut the image."""
    pads = [(b, p - s - b) for b, p, s in zip(plan.pad_before, plan.padded_shape, roi_map.shape)]
    return np.pad(roi_map, pads)


def global_preds_box(crop_logits: Any, key: Sequence[int]) -> InclusiveBox:
    """Official ``generate_box(global_preds[window])`` for the window of ``key``:
    ``global_preds`` is ``sigmoid(coarse[ROI]) > 0.5`` zero-padded like the ROI
    image, so its window holds the positive voxels of the window's part inside
    the ROI. Computed as the positive box of that part (on the device for cupy
    logits; six ints come back) shifted to window indices; :data:`P.EMPTY_BOX`
    when there is none."""
    lo, vlo, vhi = key[0:3], key[6:9], key[9:12]
    if any(b <= a for a, b in zip(vlo, vhi)):
        return P.EMPTY_BOX
    box = ops.positive_box(crop_logits[_valid_slices(key)[1]])
    if box is None:
        return P.EMPTY_BOX
    shift = [v - a for v, a in zip(vlo, lo)] * 2
    return tuple(int(b) + s for b, s in zip(box, shift))  # type: ignore[return-value]


def plan_zoom_in(
    target: Target,
    crop_logits: Any,
    window: Sequence[int],
    zoom_shape: Sequence[int],
    window_prompts: str = "official",
    overlap: float = OVERLAP,
) -> ZoomInPlan | None:
    """ROI, windows and each window's prompts for one target; None without foreground.

    ``crop_logits`` (D, H, W) may be numpy or cupy; only boxes are read back.
    ``window_prompts``: ``"official"`` slices the unpadded prompt maps with
    padded window slices, as the official code does; ``"aligned"`` pads them
    like the image first (see the module doc)."""
    check_window_prompts(window_prompts)
    roi = find_roi(crop_logits, window)
    if roi is None:
        return None
    plan = plan_windows(roi.shape, window, overlap)
    # The cube is read only with a single window.
    cube, point_map = prompt_maps(target, zoom_shape, crop_logits.shape, roi, with_cube=len(plan) == 1)
    if window_prompts == "aligned":
        cube, point_map = (None if m is None else pad_like_roi(m, plan) for m in (cube, point_map))
    rng = np.random.default_rng(target.seed)
    works = []
    for start in plan.starts:
        sl = plan.slices(start)
        key = window_key(roi, plan, start)
        box = points = None
        if target.box_zoom is not None:
            box = P.generate_box(cube[sl]) if len(plan) == 1 else global_preds_box(crop_logits, key)
        if point_map is not None:
            points = P.select_points(point_map[sl], rng, POINT_EXTRA_POSITIVE, POINT_EXTRA_NEGATIVE)
            if box is None:
                box = global_preds_box(crop_logits, key)
        coords, labels = P.decoder_tokens(points, box, target.has_text)
        works.append(WindowWork(key, coords, labels))
    return ZoomInPlan(roi, plan, works)


# -- running the graphs ----------------------------------------------------------


# Default bound of the window-embedding cache. A full-size SegVol window
# embedding is 768 x 8 x 16 x 16 float32 = 6.3 MB, so 512 MiB holds about 80
# windows: the shared windows of several targets on a large abdominal scan
# (a big organ's ROI spans tens of windows), reused by later targets on the
# same volume, while a long session of distinct boxes stays within half a GiB
# (host or GPU) instead of growing without bound. (The demo model's windows
# are 192 KB.)
DEFAULT_CACHE_BYTES = 512 * MIB


class EmbeddingCache:
    """Window image embeddings keyed by :func:`window_key`, in the backend's
    array module (device arrays on CUDA backends), least recently used first
    out beyond ``max_bytes`` (:class:`segvol_rt.pipeline.caches.ByteLRU`);
    counts encoder work. :func:`zoom_in` pins the windows of its call, so a
    call whose windows alone exceed the bound still decodes them all, and the
    cache shrinks back to the bound after it."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.store: ByteLRU[tuple[int, ...]] = ByteLRU(max_bytes)
        self.windows_encoded = 0
        self.encoder_calls = 0

    @property
    def embeddings(self) -> Mapping[tuple[int, ...], Any]:
        """The cached embeddings (read-only view; reading does not count as use)."""
        return self.store.view()

    def ensure(self, backend: Graphs, crop_image: Any, keys: Sequence[tuple[int, ...]], max_batch: int) -> None:
        """Encode every key not cached yet, ``max_batch`` windows per encoder call
        (the batches are cut from ``crop_image`` where it lives); the keys are
        pinned meanwhile and marked as used. A caller that reads the embeddings
        afterwards pins the keys around both (as :func:`zoom_in` does): when
        they exceed the bound, some are evicted as soon as this returns."""
        with self.store.pinned(keys):
            todo = [k for k in dict.fromkeys(keys) if self.store.get(k) is None]
            for i in range(0, len(todo), max_batch):
                chunk = todo[i : i + max_batch]
                emb = backend.encode_image(window_batch(crop_image, chunk))
                self.encoder_calls += 1
                self.windows_encoded += len(chunk)
                for j, k in enumerate(chunk):
                    # a row of a batch is a view that would keep the whole batch
                    # alive after its siblings are evicted: copy it to own its bytes
                    self.store.put(k, emb[j] if len(chunk) == 1 else emb[j].copy())

    def clear(self) -> None:
        self.store.clear()


def _text_rows(text_embeddings: Sequence[Any], dim: int) -> np.ndarray:
    """(B, C) float32 host rows; zeros for targets without text (ignored by the graph)."""
    zero = np.zeros(dim, np.float32)
    return np.stack([zero if t is None else np.asarray(to_host(t), np.float32).reshape(dim) for t in text_embeddings])


def decode_batched(
    backend: Graphs,
    embeddings: Sequence[Any],
    tokens: Sequence[tuple[np.ndarray, np.ndarray]],
    text_embeddings: Sequence[np.ndarray | None],
    max_batch: int,
    dim: int,
) -> list[Any]:
    """Low-res logits (4d, 4h, 4w) per row, in the backend's array module; rows
    with the same token labels share decoder calls of up to ``max_batch`` rows.
    The embeddings stay where they are; tokens and text rows (host, small) are
    uploaded per call."""
    xp = backend.xp
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (_, labels) in enumerate(tokens):
        groups[tuple(int(v) for v in labels)].append(i)
    out: list[Any] = [None] * len(tokens)
    for rows in groups.values():
        for j in range(0, len(rows), max_batch):
            idx = rows[j : j + max_batch]
            emb = xp.stack([embeddings[i] for i in idx])
            logits = backend.decode(
                emb if emb.dtype == xp.float32 else emb.astype(xp.float32),
                xp.asarray(np.stack([tokens[i][0] for i in idx]).astype(np.float32)),
                xp.asarray(np.stack([tokens[i][1] for i in idx]).astype(np.int32)),
                xp.asarray(_text_rows([text_embeddings[i] for i in idx], dim)),
            )
            for row, i in enumerate(idx):
                out[i] = logits[row, 0]
    return out


def coarse_crop_logits(low_res: Any, spatial_size: Sequence[int], crop_shape: Sequence[int]) -> Any:
    """Coarse low-res logits -> trilinear to ``spatial_size`` -> ``nearest`` to the
    crop shape, float32 (one fused kernel on the device)."""
    out = ops.upsample_then_nearest(low_res, tuple(spatial_size), tuple(crop_shape))
    xp = ops.array_namespace(out)
    return out if out.dtype == xp.float32 else out.astype(xp.float32)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of up to ``size`` items (the last may be shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def blend(plan: WindowPlan, window_logits: Iterable[Any]) -> Any:
    """Constant-weight MONAI blend: windows added in window order into float32
    sum and count volumes in padded space, divided, the padding cropped away;
    returns ROI logits of ``plan.roi_shape`` in the windows' array module.

    ``window_logits`` is consumed lazily. On the device the windows go
    :data:`DEVICE_BLEND_CHUNK` per kernel launch (each voxel still adds its
    windows in window order: the same sums as one at a time)."""
    items = iter(zip(plan.starts, window_logits))
    first = next(items, None)
    if first is None:
        raise ValueError("blend needs at least one window")
    xp = ops.array_namespace(first[1])
    total = xp.zeros(plan.padded_shape, dtype=xp.float32)
    count = xp.zeros(plan.padded_shape, dtype=xp.float32)
    size = 1 if xp is np else DEVICE_BLEND_CHUNK
    for batch in _batches(itertools.chain([first], items), size):
        windows = batch[0][1][None] if len(batch) == 1 else xp.stack([w for _, w in batch])
        ops.blend_accumulate(total, count, windows, [s for s, _ in batch])
    pads = [(b, p - s - b) for b, p, s in zip(plan.pad_before, plan.padded_shape, plan.roi_shape)]
    return xp.ascontiguousarray(ops.unpad(ops.blend_divide(total, count), pads))


def zoom_in(
    backend: Graphs,
    crop_image: Any,
    plans: Sequence[ZoomInPlan],
    targets: Sequence[Target],
    cache: EmbeddingCache,
    settings: ZoomSettings,
    dim: int,
    timings: StageClock | None = None,
) -> list[Any]:
    """ROI logits per plan, in the backend's array module. Windows of all plans
    go through the encoder once per distinct key (``settings.encoder_batch``
    per call); each target's windows through the decoder
    (``settings.decoder_batch`` per call), all targets' before any blending
    (the decoder's calls in a row keep its run memory, given back once, and
    low-res logits are small); then upsample to the window and blend."""
    timings = timings or StageClock()
    keys = [w.key for p in plans for w in p.windows]
    results = []
    lows = []
    # this call's windows stay cached until all are decoded; the cache's bound
    # is restored (least recently used out) when the block ends
    with cache.store.pinned(keys):
        with timings.stage("encode_windows"):
            cache.ensure(backend, crop_image, keys, settings.encoder_batch)
        for plan, target in zip(plans, targets):
            with timings.stage("decode_windows"):
                lows.append(decode_batched(
                    backend,
                    [cache.embeddings[w.key] for w in plan.windows],
                    [(w.coords, w.labels) for w in plan.windows],
                    [target.text_embedding] * len(plan.windows),
                    settings.decoder_batch,
                    dim,
                ))
        with timings.stage("decode_windows"):
            backend.rest()  # the decoder's run memory, before the blending allocates
        for plan, low in zip(plans, lows):
            with timings.stage("blend"):
                # upsampled lazily, in window order (MONAI's sum order), so at most a
                # blend chunk of full-size windows exists at a time
                full = (ops.resize(lg, settings.window, "trilinear") for lg in low)
                results.append(blend(plan.plan, full))
    return results
