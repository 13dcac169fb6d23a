"""The coordinate chain between the user's scan and the model, as data with exact inverses.

Spaces (named the same everywhere, see :data:`SPACES`):

1. ``scan``: voxel indices (i, j, k) of the input file as nibabel loads it.
2. ``model``: optionally reoriented to axis codes such as RAS (off by
   default, as in the official pipeline), then axes swapped so that
   (D, H, W) = (k, j, i).
3. ``padded``: symmetric zero padding up to at least the model's spatial size
   (MONAI SpatialPad: ``before = diff // 2``, ``after = diff - before``).
4. ``crop``: the foreground box of the padded volume (MONAI CropForeground:
   voxels > 0 of the min-max normalised image, margin 0, end exclusive).
5. ``zoom``: the crop resized to the spatial size with nearest-exact.

Each step is a small frozen record with ``forward_points``/``inverse_points``
for (n, 3) float voxel coordinates, ``forward_box``/``inverse_box`` for
inclusive integer boxes ``(a0, b0, c0, a1, b1, c1)`` and
``forward_volume``/``inverse_volume`` for arrays (numpy or cupy). Every step
but the zoom is an exact bijection on the voxels it keeps; the zoom maps
volumes the way the official pipeline does (nearest-exact forward, nearest
back), which is a resampling, not an inverse.

Point convention of the zoom: continuous voxel coordinates are centre
aligned, ``z = (c + 0.5) * out / in - 0.5``; an integer crop voxel ``c``
belongs to the zoom voxel whose extent ``[z * in / out, (z + 1) * in / out)``
holds the voxel centre ``c + 0.5``: :meth:`Zoom.crop_to_zoom_index`. Boxes
follow the official demo instead, which resizes a binary box with the volume:
:meth:`Zoom.box_crop_to_zoom` is exactly the bounding box of the
nearest-exact resized box (None when the box vanishes),
:meth:`Zoom.box_zoom_to_crop` that of the nearest-resized box going back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvol_rt import ops
from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.io.artifacts import check_orientation
from segvol_rt.ops.boxes import InclusiveBox

Shape = tuple[int, int, int]
SPACES = ("scan", "model", "padded", "crop", "zoom")


def _points(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise SegVolError(f"points must be an (n, 3) array of voxel coordinates, got shape {arr.shape}")
    return arr


def _shape(values: Sequence[int]) -> Shape:
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _corners_box(lo: np.ndarray, hi: np.ndarray) -> InclusiveBox:
    """Inclusive integer box spanning two mapped corners (rounded: the maps are exact)."""
    a = np.rint(np.minimum(lo, hi)).astype(int)
    b = np.rint(np.maximum(lo, hi)).astype(int)
    return (int(a[0]), int(a[1]), int(a[2]), int(b[0]), int(b[1]), int(b[2]))


def _clip_box(box: InclusiveBox, shape: Shape) -> InclusiveBox | None:
    """The part of an inclusive box inside ``shape``, or None if nothing is."""
    lo = [max(int(v), 0) for v in box[:3]]
    hi = [min(int(v), n - 1) for v, n in zip(box[3:], shape)]
    if any(a > b for a, b in zip(lo, hi)):
        return None
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


class _CornerBoxes:
    """Box mapping for steps that map voxel centres to voxel centres exactly."""

    in_shape: Shape

    def forward_box(self, box: InclusiveBox) -> InclusiveBox | None:
        pts = self.forward_points(np.asarray([box[:3], box[3:]], dtype=np.float64))  # type: ignore[attr-defined]
        return _clip_box(_corners_box(pts[0], pts[1]), self.out_shape)  # type: ignore[attr-defined]

    def inverse_box(self, box: InclusiveBox) -> InclusiveBox | None:
        pts = self.inverse_points(np.asarray([box[:3], box[3:]], dtype=np.float64))  # type: ignore[attr-defined]
        return _clip_box(_corners_box(pts[0], pts[1]), self.in_shape)


# The ``reorient`` value that keeps the scan's stored voxel order even when the model declares an orientation.
STORED_ORDER = "stored"


def model_orientation(requested: str | None, declared: str | None) -> str | None:
    """The axis codes to reorient a scan to before the model, or None for its stored voxel order.

    ``requested``: the caller's ``reorient`` (axis codes such as ``"RAS"``,
    :data:`STORED_ORDER`, or None for the model's own); ``declared``: the
    artifacts' ``voxel_orientation`` (None: SegVol's weights, trained on each
    data set's stored order, so the order stays as stored)."""
    if requested is None:
        return declared
    if not isinstance(requested, str) or not requested.strip():
        raise SegVolError(f"reorient must be axis codes such as RAS or {STORED_ORDER!r}, got {requested!r}")
    if requested.strip().lower() == STORED_ORDER:
        return None
    # nibabel would accept "RRS" (two codes of one axis) and build a reorientation that is no permutation
    try:
        return check_orientation(requested)
    except SegVolError as exc:
        raise SegVolError(f"reorient: {exc}") from None


# -- steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reorient(_CornerBoxes):
    """Voxel axes of the scan -> axis codes such as ``RAS``: flips, then a
    permutation, as nibabel's ``apply_orientation(arr, ornt)``.

    ``ornt[i] = (output axis, +1 or -1)`` for input axis i (nibabel's ornt)."""

    in_shape: Shape
    ornt: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    codes: str = "RAS"

    @classmethod
    def from_affine(cls, affine: Any, in_shape: Sequence[int], codes: str = "RAS") -> Reorient:
        """The reorientation of a scan with voxel-to-world ``affine`` to ``codes``
        (nibabel io_orientation / ornt_transform; oblique affines take the
        closest axes)."""
        orientations = require("nibabel.orientations")
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise SegVolError(f"reorientation needs a finite 4x4 affine, got shape {aff.shape}")
        codes = str(codes).upper()
        try:
            target = orientations.axcodes2ornt(tuple(codes))
            ornt = orientations.ornt_transform(orientations.io_orientation(aff), target)
        except ValueError as exc:
            raise SegVolError(f"cannot reorient to {codes!r}: {exc}") from exc
        if len(codes) != 3 or np.isnan(ornt).any():
            raise SegVolError(f"cannot reorient to {codes!r} with affine {aff.tolist()}")
        pairs = tuple((int(a), int(f)) for a, f in ornt)
        return cls(_shape(in_shape), pairs, codes)  # type: ignore[arg-type]

    @property
    def out_shape(self) -> Shape:
        out = [0, 0, 0]
        for n, (axis, _) in zip(self.in_shape, self.ornt):
            out[axis] = n
        return tuple(out)  # type: ignore[return-value]

    def forward_points(self, p: Any) -> np.ndarray:
        p = _points(p)
        out = np.empty_like(p)
        for i, (axis, flip) in enumerate(self.ornt):
            out[:, axis] = (self.in_shape[i] - 1) - p[:, i] if flip < 0 else p[:, i]
        return out

    def inverse_points(self, p: Any) -> np.ndarray:
        p = _points(p)
        out = np.empty_like(p)
        for i, (axis, flip) in enumerate(self.ornt):
            out[:, i] = (self.in_shape[i] - 1) - p[:, axis] if flip < 0 else p[:, axis]
        return out

    def forward_volume(self, v: Any) -> Any:
        """A view of ``v`` (scan axes) in the target axes."""
        xp = ops.array_namespace(v)
        for i, (_, flip) in enumerate(self.ornt):
            if flip < 0:
                v = xp.flip(v, axis=i)
        return xp.transpose(v, tuple(int(a) for a in np.argsort([a for a, _ in self.ornt])))

    def inverse_volume(self, v: Any, fill: float = 0) -> Any:
        """A view of ``v`` (target axes) in the scan's axes."""
        xp = ops.array_namespace(v)
        v = xp.transpose(v, tuple(a for a, _ in self.ornt))
        for i, (_, flip) in enumerate(self.ornt):
            if flip < 0:
                v = xp.flip(v, axis=i)
        return v


@dataclass(frozen=True)
class SwapAxes(_CornerBoxes):
    """(a, b, c) -> (c, b, a): the official DimTranspose, scan (i, j, k) -> model (k, j, i)."""

    in_shape: Shape

    @property
    def out_shape(self) -> Shape:
        return self.in_shape[::-1]

    def forward_points(self, p: Any) -> np.ndarray:
        return _points(p)[:, ::-1].copy()

    inverse_points = forward_points

    def forward_volume(self, v: Any) -> Any:
        """A view with the first and last axes swapped."""
        return ops.array_namespace(v).swapaxes(v, 0, 2)

    def inverse_volume(self, v: Any, fill: float = 0) -> Any:
        return self.forward_volume(v)


@dataclass(frozen=True)
class Window(_CornerBoxes):
    """A shifted window: ``out[o] = in[o + start]``, ``fill`` where that lies outside ``in``.

    Padding is a window with a negative start, cropping one inside the input."""

    in_shape: Shape
    start: tuple[int, int, int]
    out_shape: Shape
    kind: str = "window"

    @classmethod
    def pad(cls, in_shape: Sequence[int], spatial_size: Sequence[int]) -> Window:
        """Symmetric zero padding up to at least ``spatial_size`` (MONAI SpatialPad)."""
        before = [max(int(s) - int(n), 0) // 2 for n, s in zip(in_shape, spatial_size)]
        out = [max(int(n), int(s)) for n, s in zip(in_shape, spatial_size)]
        return cls(_shape(in_shape), tuple(-b for b in before), _shape(out), "pad")  # type: ignore[arg-type]

    @classmethod
    def crop(cls, in_shape: Sequence[int], box: InclusiveBox) -> Window:
        """The inclusive ``box`` of a volume of ``in_shape``."""
        if _clip_box(box, _shape(in_shape)) != tuple(int(v) for v in box):
            raise SegVolError(f"crop box {tuple(box)} is empty or outside a volume of shape {tuple(in_shape)}")
        start = tuple(int(v) for v in box[:3])
        out = tuple(int(b) - int(a) + 1 for a, b in zip(box[:3], box[3:]))
        return cls(_shape(in_shape), start, _shape(out), "crop")  # type: ignore[arg-type]

    def then(self, other: Window) -> Window:
        """This window followed by ``other`` as one window (fill between them is lost)."""
        start = tuple(a + b for a, b in zip(self.start, other.start))
        return Window(self.in_shape, start, other.out_shape, f"{self.kind}+{other.kind}")  # type: ignore[arg-type]

    @property
    def pad_width(self) -> tuple[tuple[int, int], ...]:
        """Per-axis (before, after) padding a negative start and larger output imply."""
        return tuple(
            (max(-s, 0), max(s + o - n, 0)) for s, o, n in zip(self.start, self.out_shape, self.in_shape)
        )

    def forward_points(self, p: Any) -> np.ndarray:
        return _points(p) - np.asarray(self.start, dtype=np.float64)

    def inverse_points(self, p: Any) -> np.ndarray:
        return _points(p) + np.asarray(self.start, dtype=np.float64)

    def _overlap(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(input slices, output slices) of the voxels both share."""
        src, dst = [], []
        for s, o, n in zip(self.start, self.out_shape, self.in_shape):
            lo, hi = max(s, 0), min(s + o, n)
            src.append(slice(lo, max(hi, lo)))
            dst.append(slice(lo - s, max(hi, lo) - s))
        return tuple(src), tuple(dst)

    def forward_volume(self, v: Any, fill: float = 0) -> Any:
        """The window of ``v``: a view when it lies inside ``v``, else a new array."""
        src, dst = self._overlap()
        if all(d.start == 0 and d.stop == o for d, o in zip(dst, self.out_shape)):
            return v[src]
        xp = ops.array_namespace(v)
        out = xp.full(self.out_shape, fill, dtype=v.dtype)
        out[dst] = v[src]
        return out

    def inverse_volume(self, v: Any, fill: float = 0) -> Any:
        """A new input-shaped array holding ``v`` where the window lies, ``fill`` elsewhere."""
        src, dst = self._overlap()
        if all(s.start == 0 and s.stop == n for s, n in zip(src, self.in_shape)):
            return v[dst].copy()
        xp = ops.array_namespace(v)
        out = xp.full(self.in_shape, fill, dtype=v.dtype)
        out[src] = v[dst]
        return out


@dataclass(frozen=True)
class Zoom:
    """Crop space -> zoom-out space: a resize of ``in_shape`` to ``out_shape``.

    Volumes go forward with nearest-exact (the official zoom-out transform)
    and back with nearest (the official ``F.interpolate`` of the coarse
    logits); neither undoes the other."""

    in_shape: Shape
    out_shape: Shape
    forward_mode: str = "nearest-exact"
    inverse_mode: str = "nearest"

    def forward_points(self, p: Any) -> np.ndarray:
        scale = np.asarray(self.out_shape, dtype=np.float64) / np.asarray(self.in_shape, dtype=np.float64)
        return (_points(p) + 0.5) * scale - 0.5

    def inverse_points(self, p: Any) -> np.ndarray:
        scale = np.asarray(self.in_shape, dtype=np.float64) / np.asarray(self.out_shape, dtype=np.float64)
        return (_points(p) + 0.5) * scale - 0.5

    def crop_to_zoom_index(self, c: Any) -> np.ndarray:
        """Zoom voxel holding the centre of each integer crop voxel, (n, 3) int:
        ``floor((c + 0.5) * out / in)``, in exact integer arithmetic. Crop
        voxels inside ``[0, in)`` land inside ``[0, out)``; others outside it."""
        c = np.asarray(c, dtype=np.int64).reshape(-1, 3)
        out, inn = np.asarray(self.out_shape), np.asarray(self.in_shape)
        return ((2 * c + 1) * out) // (2 * inn)

    def zoom_to_crop_index(self, z: Any) -> np.ndarray:
        """Crop voxel each integer zoom voxel samples (the nearest-exact source), (n, 3) int."""
        z = np.asarray(z, dtype=np.int64).reshape(-1, 3)
        tables = [ops.nearest_source_index(n, o, self.forward_mode) for n, o in zip(self.in_shape, self.out_shape)]
        return np.stack([tables[a][z[:, a]] for a in range(3)], axis=1)

    def box_crop_to_zoom(self, box: InclusiveBox) -> InclusiveBox | None:
        """Bounding box of the nearest-exact resize of the binary crop-space ``box``
        (how the official demo derives zoom-out box prompts); None if it vanishes."""
        return _resized_box(box, self.in_shape, self.out_shape, self.forward_mode)

    def box_zoom_to_crop(self, box: InclusiveBox) -> InclusiveBox | None:
        """Bounding box of the nearest resize of the binary zoom-space ``box`` back to crop space."""
        return _resized_box(box, self.out_shape, self.in_shape, self.inverse_mode)

    forward_box = box_crop_to_zoom
    inverse_box = box_zoom_to_crop

    def forward_volume(self, v: Any) -> Any:
        return ops.resize(v, self.out_shape, self.forward_mode)

    def inverse_volume(self, v: Any, fill: float = 0) -> Any:
        return ops.resize(v, self.in_shape, self.inverse_mode)


def _resized_box(box: InclusiveBox, in_shape: Shape, out_shape: Shape, mode: str) -> InclusiveBox | None:
    """Bounding box of ``resize(binary box, out_shape, mode)``, from the index tables alone."""
    lo, hi = [], []
    for axis, (n, o) in enumerate(zip(in_shape, out_shape)):
        src = ops.nearest_source_index(n, o, mode)
        hits = np.flatnonzero((src >= box[axis]) & (src <= box[axis + 3]))
        if hits.size == 0:
            return None
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]))
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


Step = Reorient | SwapAxes | Window | Zoom


# -- the chain ------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """scan -> model -> padded -> crop -> zoom, with the way back.

    ``points``/``box``/``volume`` map between any two of :data:`SPACES`;
    the named shortcuts cover the pipeline's uses."""

    scan_shape: Shape
    reorient: Reorient | None
    swap: SwapAxes
    pad: Window
    crop: Window
    zoom: Zoom

    @classmethod
    def build(
        cls,
        scan_shape: Sequence[int],
        crop_box: InclusiveBox,
        spatial_size: Sequence[int],
        reorient: Reorient | None = None,
    ) -> Geometry:
        """The chain for a scan whose foreground box in *model* space is ``crop_box`` (inclusive)."""
        scan_shape = _shape(scan_shape)
        oriented = reorient.out_shape if reorient else scan_shape
        swap = SwapAxes(oriented)
        pad = Window.pad(swap.out_shape, spatial_size)
        padded_box = tuple(int(v) - s for v, s in zip(crop_box, pad.start * 2))
        crop = Window.crop(pad.out_shape, padded_box)  # type: ignore[arg-type]
        return cls(scan_shape, reorient, swap, pad, crop, Zoom(crop.out_shape, _shape(spatial_size)))

    # -- structure ------------------------------------------------------------------
    def _segments(self) -> list[tuple[str, Step, str]]:
        """(space before, step, space after) in forward order; the optional
        reorientation and the swap together lead from scan to model."""
        first: list[tuple[str, Step, str]] = []
        if self.reorient is not None:
            first.append(("scan", self.reorient, "oriented"))
            first.append(("oriented", self.swap, "model"))
        else:
            first.append(("scan", self.swap, "model"))
        return first + [("model", self.pad, "padded"), ("padded", self.crop, "crop"), ("crop", self.zoom, "zoom")]

    def _path(self, src: str, dst: str) -> tuple[list[Step], bool]:
        """The steps from ``src`` to ``dst`` and whether they run forward."""
        for name in (src, dst):
            if name not in SPACES:
                raise SegVolError(f"unknown coordinate space {name!r}; expected one of {SPACES}")
        segs = self._segments()
        chain = [segs[0][0]] + [after for _, _, after in segs]
        a, b = chain.index(src), chain.index(dst)
        steps = [step for _, step, _ in segs[min(a, b) : max(a, b)]]
        return (steps, True) if a <= b else (steps[::-1], False)

    # -- generic maps -----------------------------------------------------------------
    def points(self, p: Any, src: str, dst: str) -> np.ndarray:
        """(n, 3) float voxel coordinates of ``src`` in ``dst`` (axis order of each space)."""
        steps, fwd = self._path(src, dst)
        out = _points(p)
        for step in steps:
            out = step.forward_points(out) if fwd else step.inverse_points(out)
        return out

    def box(self, box: Sequence[int], src: str, dst: str) -> InclusiveBox | None:
        """Inclusive integer box of ``src`` in ``dst``; clipped to each space, None if it leaves it."""
        steps, fwd = self._path(src, dst)
        out: InclusiveBox | None = tuple(int(v) for v in box)  # type: ignore[assignment]
        if len(out) != 6:  # type: ignore[arg-type]
            raise SegVolError(f"a box has 6 entries (min corner, max corner), got {tuple(box)}")
        for step in steps:
            if out is None:
                return None
            out = step.forward_box(out) if fwd else step.inverse_box(out)
        return out

    def volume(self, v: Any, src: str, dst: str, fill: float = 0) -> Any:
        """``v`` (shape of ``src``) in ``dst``. Adjacent pad and crop steps run as
        one window; results may be views of ``v`` (axis swaps, flips, inner crops)."""
        steps, fwd = self._path(src, dst)
        merged: list[Step] = []
        for step in steps if fwd else steps[::-1]:
            if merged and isinstance(step, Window) and isinstance(merged[-1], Window):
                merged[-1] = merged[-1].then(step)
            else:
                merged.append(step)
        if not fwd:
            merged.reverse()
        for step in merged:
            if fwd:
                v = step.forward_volume(v, fill) if isinstance(step, Window) else step.forward_volume(v)
            else:
                v = step.inverse_volume(v, fill)
        return v

    # -- shortcuts --------------------------------------------------------------------
    @property
    def model_shape(self) -> Shape:
        return self.swap.out_shape

    @property
    def crop_box(self) -> InclusiveBox:
        """Inclusive crop box in model space (what the crop keeps of the unpadded volume)."""
        start = [c + p for c, p in zip(self.crop.start, self.pad.start)]
        return tuple(start + [s + n - 1 for s, n in zip(start, self.crop.out_shape)])  # type: ignore[return-value]

    def scan_mapping(self) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[int, int, int]]:
        """``(perm, flips, origin)`` of :func:`segvol_rt.ops.scan_mask`: the optional
        reorientation (nibabel ornt: scan axis i -> oriented axis ``ornt[i][0]``,
        reversed when ``ornt[i][1] < 0``), the swap (model axis a = oriented
        axis 2 - a) and the crop start in model space (padding folded in)."""
        ornt = self.reorient.ornt if self.reorient is not None else ((0, 1), (1, 1), (2, 1))
        scan_axis = {int(axis): i for i, (axis, _) in enumerate(ornt)}
        p0, p1, p2 = (scan_axis[2 - a] for a in range(3))
        f0, f1, f2 = (bool(ornt[i][1] < 0) for i in (p0, p1, p2))
        o0, o1, o2 = (int(v) for v in self.crop_box[:3])
        return (p0, p1, p2), (f0, f1, f2), (o0, o1, o2)

    def scan_to_model_box(self, box: Sequence[int]) -> InclusiveBox | None:
        return self.box(box, "scan", "model")

    def scan_to_crop_box(self, box: Sequence[int]) -> InclusiveBox | None:
        return self.box(box, "scan", "crop")

    def scan_to_zoom_box(self, box: Sequence[int]) -> InclusiveBox | None:
        return self.box(box, "scan", "zoom")

    def scan_to_crop_points(self, p: Any) -> np.ndarray:
        return self.points(p, "scan", "crop")

    def scan_to_zoom_index(self, p: Any) -> np.ndarray:
        """Integer zoom-out voxel of each integer scan voxel (see :meth:`Zoom.crop_to_zoom_index`)."""
        crop = np.rint(self.points(p, "scan", "crop")).astype(np.int64)
        return self.zoom.crop_to_zoom_index(crop)

    def model_to_scan(self, volume: Any) -> Any:
        """A model-space (D, H, W) volume in scan axes (a view)."""
        return self.volume(volume, "model", "scan")

    def scan_to_model(self, volume: Any) -> Any:
        """A scan-space volume in model axes (a view)."""
        return self.volume(volume, "scan", "model")

    def crop_to_model(self, volume: Any, fill: float = 0) -> Any:
        """Paste a crop-space volume into a new model-space volume filled with ``fill``."""
        return self.volume(volume, "crop", "model", fill)

    def crop_to_scan(self, volume: Any, fill: float = 0) -> Any:
        """A crop-space volume (e.g. the final mask) in scan space, ``fill`` outside the crop."""
        return self.volume(volume, "crop", "scan", fill)
