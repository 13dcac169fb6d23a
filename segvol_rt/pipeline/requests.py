"""The checks of zoom-out-space targets (:func:`check_zoom_target`), the
expert API's requests; the scan-space :class:`~segvol_rt.types.Request` and
its prompt types live in :mod:`segvol_rt.types` (re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segvol_rt import validate as V
from segvol_rt.errors import SegVolError
from segvol_rt.ops.arrays import to_host
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline import zoom as Z


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
