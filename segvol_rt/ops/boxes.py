"""Box types and the shape checks that every array operation shares.

Two box types, both six ints ``(d0, h0, w0, d1, h1, w1)`` (or ``(i0, j0, k0,
i1, j1, k1)`` in scan space):

* :data:`InclusiveBox`: the max corner is the last voxel inside (prompts,
  bounding boxes of masks, what users type);
* :data:`HalfOpenBox`: the max corner is one past the last voxel (crops,
  slices, window regions).

:func:`to_half_open` and :func:`to_inclusive` convert between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

InclusiveBox = tuple[int, int, int, int, int, int]
HalfOpenBox = tuple[int, int, int, int, int, int]
Corner = tuple[int, int, int]


def int_box(values: Iterable[Any]) -> tuple[int, int, int, int, int, int]:
    """Six ints (a box of either kind) from any six integer-valued numbers."""
    a, b, c, d, e, f = (int(v) for v in values)
    return a, b, c, d, e, f


def int3(values: Iterable[Any]) -> Corner:
    """Three ints (a shape, a corner) from any three integer-valued numbers."""
    a, b, c = (int(v) for v in values)
    return a, b, c


def to_half_open(box: InclusiveBox) -> HalfOpenBox:
    """``(lo, hi)`` inclusive -> ``(lo, hi + 1)``."""
    return (box[0], box[1], box[2], box[3] + 1, box[4] + 1, box[5] + 1)


def to_inclusive(box: HalfOpenBox) -> InclusiveBox:
    """``(lo, hi)`` half-open -> ``(lo, hi - 1)``."""
    return (box[0], box[1], box[2], box[3] - 1, box[4] - 1, box[5] - 1)


def check_volume(x: Any) -> None:
    """ValueError unless ``x`` is a 3D array."""
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"expected a 3D (D, H, W) array, got shape {getattr(x, 'shape', None)}")


def box_bounds(shape: Sequence[int], box: HalfOpenBox | None) -> tuple[Corner, Corner]:
    """(start, stop) of a half-open box (the whole ``shape`` for None), checked
    to be non-empty and inside ``shape``."""
    if box is None:
        return (0, 0, 0), (int(shape[0]), int(shape[1]), int(shape[2]))
    start = (int(box[0]), int(box[1]), int(box[2]))
    stop = (int(box[3]), int(box[4]), int(box[5]))
    for a, b, n in zip(start, stop, shape):
        if not 0 <= a < b <= n:
            raise ValueError(f"box {tuple(box)} is empty or outside a volume of shape {tuple(shape)}")
    return start, stop


def placed_box(start: Sequence[int], shape: Sequence[int]) -> HalfOpenBox:
    """The half-open box of an array of ``shape`` placed at ``start``."""
    lo = [int(a) for a in start]
    hi = [a + int(n) for a, n in zip(lo, shape)]
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def slices(start: Sequence[int], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """Index of the region of ``shape`` at ``start``."""
    a, b, c = (slice(int(s), int(s) + int(n)) for s, n in zip(start, shape))
    return a, b, c
