"""The types the runtime's users share, numpy only: what is asked
(:class:`Request`, with its prompt types :class:`Points`, :data:`BoxPrompt`,
:data:`PointsPrompt`) and what comes back (:class:`Segmentation`, with its
zoom-in :class:`Roi`). The runtime, the client, the server and the app all
take them from here (``segvol_rt.Request`` and ``segvol_rt.Segmentation``
are the public names); nothing here imports a backend, the pipeline or the
runtime.

Every field is checked when a request is made, with real types (see
:mod:`segvol_rt.validate`): a user mistake is a :class:`SegVolError`
naming the field, never a coercion (bytes read as text, floats truncated to
voxel indices, 0/1 taken for flags). Prompts are in **scan** voxel indices
``(i, j, k)``; :class:`segvol_rt.pipeline.zoom.Target` holds them in zoom-out
space ``(D, H, W)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segvol_rt import validate as V
from segvol_rt.errors import SegVolError
from segvol_rt.ops.boxes import InclusiveBox

Vec3 = tuple[int, int, int]

# -- prompts -------------------------------------------------------------------


@dataclass(frozen=True)
class Points:
    """``coords (N, 3)`` int64 voxel indices and ``labels (N,)`` int64 in {1, 0, -1}."""

    coords: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        # integer arrays only: a float voxel index would be truncated, a bool taken for 0/1
        coords = _integer_array(self.coords, "point coordinates")
        if coords.size % 3:
            raise SegVolError(f"point coordinates need 3 per point (i, j, k), got shape {coords.shape}")
        object.__setattr__(self, "coords", coords.reshape(-1, 3))
        object.__setattr__(self, "labels", _integer_array(self.labels, "point labels").reshape(-1))
        if len(self.coords) != len(self.labels):
            raise SegVolError(f"{len(self.coords)} point coordinates but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def positive(self) -> np.ndarray:
        """Coordinates ``(P, 3)`` of the positive points."""
        return self.coords[self.labels == 1]


def _integer_array(value: Any, what: str) -> np.ndarray:
    """``value`` as an int64 array if its elements are integers (an empty one may
    be of any dtype); floats, bools and other dtypes are refused."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise SegVolError(f"{what} are not an integer array ({exc})") from None
    if arr.size and arr.dtype.kind not in "iu":
        raise SegVolError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


# -- parsing of user prompts (scan space) ----------------------------------


def _ints(text: str, what: str) -> list[int]:
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise SegVolError(f"{what} {text!r}: expected integers separated by commas") from None


def parse_box(value: str | Sequence[int]) -> InclusiveBox:
    """``"i0,j0,k0,i1,j1,k1"`` (or six ints: Python or NumPy integers, or an
    integer array) -> inclusive scan-space box. Floats and bools are refused."""
    vals = _ints(value, "box") if isinstance(value, str) else V.int_vector(value, "box")
    if len(vals) != 6:
        raise SegVolError(f"box needs 6 integers i0,j0,k0,i1,j1,k1; got {len(vals)}")
    lo, hi = vals[:3], vals[3:]
    if any(a > b for a, b in zip(lo, hi)):
        raise SegVolError(f"box {tuple(vals)} is empty: need i0<=i1, j0<=j1, k0<=k1")
    return tuple(vals)  # type: ignore[return-value]


def parse_points(value: str | Sequence[Any] | Points) -> Points:
    """Points in scan space from ``"i,j,k[,label];i,j,k[,label]"``, a sequence of
    such strings, a sequence of ``(i, j, k[, label])`` integers (or an integer
    array of shape (N, 3) or (N, 4)), or :class:`Points`; the label defaults to
    1. Floats and bools are refused, not truncated."""
    if isinstance(value, Points):
        if not np.isin(value.labels, (0, 1)).all():
            raise SegVolError(f"points: labels must be 1 (positive) or 0 (negative), got {sorted(set(value.labels.tolist()))}")
        return value
    if isinstance(value, str):
        items: Sequence[Any] | np.ndarray = [p for p in value.split(";") if p.strip()]
    else:
        items = V.sequence(value, "points", "points (i, j, k[, label])")
    if len(items) == 0:
        raise SegVolError("points: no point given")
    coords, labels = [], []
    for item in items:
        vals = _ints(item, "point") if isinstance(item, str) else V.int_vector(item, "point")
        if len(vals) not in (3, 4):
            raise SegVolError(f"point {item!r}: expected i,j,k or i,j,k,label")
        label = vals[3] if len(vals) == 4 else 1
        if label not in (0, 1):
            raise SegVolError(f"point {item!r}: label must be 1 (positive) or 0 (negative)")
        coords.append(vals[:3])
        labels.append(label)
    return Points(np.array(coords), np.array(labels))


# -- zoom-in window prompts ----------------------------------------------------


WINDOW_PROMPTS = ("official", "aligned")


def check_window_prompts(value: str) -> str:
    """``value`` if it names a zoom-in window-prompt placement, else a :class:`SegVolError`."""
    if value not in WINDOW_PROMPTS:
        raise SegVolError(f"window prompts {value!r}: choose {' or '.join(WINDOW_PROMPTS)}")
    return value


# -- requests ------------------------------------------------------------------


# A box prompt: "i0,j0,k0,i1,j1,k1" or six ints, inclusive, scan voxel indices.
BoxPrompt = str | Sequence[int]
# Point prompts: "i,j,k[,label];..." or [(i, j, k[, label]), ...] (label 1 positive, 0 negative).
PointsPrompt = str | Sequence[Sequence[int]] | Points

FLAGS = ("zoom_in", "probabilities", "keep_logits", "on_device")


@dataclass(frozen=True)
class Request:
    """One target of :meth:`segvol_rt.runtime.SegVolRuntime.segment_many` (scan-space prompts).

    Every field is checked when the request is made (a :class:`SegVolError`
    naming the field): ``text`` a ``str`` (bytes are refused), ``box`` and
    ``points`` integers (floats and bools are refused, not truncated), the
    flags ``bool``, ``seed`` an integer >= 0, ``window_prompts`` a name. The
    box's and points' bounds are checked against the volume when it runs."""

    text: str | None = None
    box: BoxPrompt | None = None  # "i0,j0,k0,i1,j1,k1" or 6 ints, inclusive
    points: PointsPrompt | None = None  # "i,j,k[,label];..." or [(i, j, k[, label]), ...]
    zoom_in: bool = True
    probabilities: bool = False
    seed: int = 0
    keep_logits: bool = False
    on_device: bool = False  # keep the outputs on the GPU (cupy) instead of downloading them
    window_prompts: str = "official"  # or "aligned": see segvol_rt.pipeline.zoom (scans smaller than a window)

    def __post_init__(self) -> None:
        V.optional_text(self.text, "text")
        if self.box is not None:
            parse_box(self.box)  # types, count and order; bounds need the volume
        if self.points is not None:
            parse_points(self.points)
        for name in FLAGS:  # numpy.bool_ becomes bool
            object.__setattr__(self, name, V.boolean(getattr(self, name), name))
        object.__setattr__(self, "seed", V.integer(self.seed, "seed", minimum=0))
        if not isinstance(self.window_prompts, str):
            raise SegVolError(f"window_prompts must be a str ({' or '.join(WINDOW_PROMPTS)}), not {V.type_name(self.window_prompts)}")
        check_window_prompts(self.window_prompts)

    @classmethod
    def of(cls, item: Request | Mapping[str, Any] | str) -> Request:
        """A request from a Request, a target name or a mapping of :class:`Request` fields."""
        if isinstance(item, Request):
            return item
        if isinstance(item, str):
            return cls(text=item)
        if isinstance(item, Mapping):
            fields = cls.__dataclass_fields__
            unknown = [k for k in item if not (isinstance(k, str) and k in fields)]
            if unknown:
                raise SegVolError(f"unknown target fields {', '.join(sorted(map(repr, unknown)))}; fields: {', '.join(fields)}")
            return cls(**item)
        raise SegVolError(f"a target is a name, a mapping or a Request, not {V.type_name(item)}")

    def describe(self) -> str:
        parts = [f"text={self.text!r}"] if self.text is not None else []
        if self.box is not None:
            parts.append(f"box={self.box}")
        if self.points is not None:
            parts.append(f"points={self.points}")
        return ", ".join(parts)


def request_at(item: Any, index: int) -> Request:
    """``Request.of(item)``, its error prefixed with the target's place."""
    try:
        return Request.of(item)
    except SegVolError as exc:
        raise SegVolError(f"targets[{index}]: {exc}") from None


# -- results -------------------------------------------------------------------


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


@dataclass
class Segmentation:
    """One target's result.

    Arrays are numpy, or cupy arrays on a CUDA backend when the request
    asked for ``on_device``; their memory layout is unspecified (e.g. a
    transposed view on the host).

    Attributes:
        mask: uint8 ``(I, J, K)`` in scan space, 1 = target.
        probabilities: float32 ``(I, J, K)`` sigmoid of the logits in scan
            space (0 outside the crop), when asked for. (On the GPU the
            sigmoid's ``exp`` may differ from numpy's by an ulp or two.)
        roi: the zoom-in ROI in crop space (:class:`Roi`), or None.
        n_windows: zoom-in windows run for this target (0 without zoom-in).
        zoom_in_applied: the zoom-in stage ran and its logits were pasted.
        no_foreground: the coarse pass found no voxel with sigmoid > 0.5, so
            the (empty) coarse result stands.
        timings: seconds per stage of the call that produced this result
            (stages shared by several targets are reported to each).
        crop_logits: float32 crop-space logits ``(D, H, W)``, when kept.
        prompt: what was asked, for display.
    """

    mask: Any
    probabilities: Any = None
    roi: Roi | None = None
    n_windows: int = 0
    zoom_in_applied: bool = False
    no_foreground: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    crop_logits: Any = None
    prompt: str = ""
