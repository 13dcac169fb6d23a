"""What the runtime is asked: :class:`Request` (one target's scan-space
prompts and options), and the checks of zoom-out-space targets
(:func:`check_zoom_target`).

Every field is checked when a request is made, with real types (see
:mod:`segvol_rt.pipeline.validate`): a user mistake is a :class:`SegVolError`
naming the field, never a coercion (bytes read as text, floats truncated to
voxel indices, 0/1 taken for flags). Prompts are in **scan** voxel indices
``(i, j, k)``; :class:`segvol_rt.pipeline.zoom.Target` holds them in zoom-out
space ``(D, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvol_rt.errors import SegVolError
from segvol_rt.ops.arrays import to_host
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import validate as V
from segvol_rt.pipeline import zoom as Z

# A box prompt: "i0,j0,k0,i1,j1,k1" or six ints, inclusive, scan voxel indices.
BoxPrompt = str | Sequence[int]
# Point prompts: "i,j,k[,label];..." or [(i, j, k[, label]), ...] (label 1 positive, 0 negative).
PointsPrompt = str | Sequence[Sequence[int]] | P.Points

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
            P.parse_box(self.box)  # types, count and order; bounds need the volume
        if self.points is not None:
            P.parse_points(self.points)
        for name in FLAGS:  # numpy.bool_ becomes bool
            object.__setattr__(self, name, V.boolean(getattr(self, name), name))
        object.__setattr__(self, "seed", V.integer(self.seed, "seed", minimum=0))
        if not isinstance(self.window_prompts, str):
            raise SegVolError(f"window_prompts must be a str ({' or '.join(Z.WINDOW_PROMPTS)}), not {V.type_name(self.window_prompts)}")
        Z.check_window_prompts(self.window_prompts)

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


def check_zoom_target(target: Any, name: str, zoom_shape: Sequence[int], max_points: int, dim: int) -> None:
    """A :class:`segvol_rt.pipeline.zoom.Target` given by a user (zoom-out space
    prompts, as official ``generate_box`` / ``select_points`` make them), or a
    :class:`SegVolError` naming ``name``: a box of six integers inside ``zoom_shape`` or
    :data:`P.EMPTY_BOX`; points with labels 1, 0 or -1 ("not a point"), the
    others inside ``zoom_shape``, at most ``max_points``; a finite (``dim``,)
    text embedding or None; a seed >= 0."""
    if not isinstance(target, Z.Target):
        raise SegVolError(f"{name} must be a segvol_rt.pipeline.zoom.Target, not {V.type_name(target)}")
    size = np.asarray([int(n) for n in zoom_shape])
    V.integer(target.seed, f"{name}.seed", minimum=0)
    if target.box_zoom is not None:
        box = V.int_vector(target.box_zoom, f"{name}.box_zoom")
        if len(box) != 6:
            raise SegVolError(f"{name}.box_zoom needs 6 integers (d0, h0, w0, d1, h1, w1), got {len(box)}")
        lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
        if tuple(box) != P.EMPTY_BOX and ((lo < 0).any() or (hi >= size).any() or (lo > hi).any()):
            raise SegVolError(f"{name}: zoom-out box {tuple(box)} is empty or outside {tuple(size.tolist())}")
    pts = target.points_zoom
    if pts is not None:
        if not isinstance(pts, P.Points):
            raise SegVolError(f"{name}.points_zoom must be segvol_rt.pipeline.prompts.Points, not {V.type_name(pts)}")
        if not 0 < len(pts) <= max_points:
            raise SegVolError(f"{name}: {len(pts)} points given; the artifacts take 1 to {max_points}")
        if not np.isin(pts.labels, (-1, 0, 1)).all():
            raise SegVolError(f"{name}: point labels must be 1, 0 or -1, got {sorted(set(pts.labels.tolist()))}")
        real = pts.coords[pts.labels != -1]
        if ((real < 0) | (real >= size)).any():
            raise SegVolError(f"{name}: a zoom-out point lies outside {tuple(size.tolist())}")
    emb = target.text_embedding
    if emb is not None:
        arr = np.asarray(to_host(emb)) if hasattr(emb, "dtype") else None
        if arr is None or arr.dtype.kind != "f" or arr.size != dim or not np.isfinite(arr).all():
            raise SegVolError(f"{name}.text_embedding must be a finite float array of {dim} values")
