"""Array operations of the pipeline: NumPy reference implementations, written
against the array API so the same code runs on numpy and cupy arrays; on
cupy inputs the hot ones dispatch to the CUDA kernels of :mod:`segvol_rt.kernels`.

Volumes are 3D arrays in model space, axis order (D, H, W). Boxes are
``(d0, h0, w0, d1, h1, w1)``; whether the max corner is inclusive or
half-open is stated per function. Every resize matches
``torch.nn.functional.interpolate`` on a (1, 1, D, H, W) tensor with an
explicit ``size`` (never ``scale_factor``), ``align_corners=False``.

STATUS: interface stub; bodies are filled in by the ops work item.
"""

from __future__ import annotations

from typing import Any, Sequence

Box = tuple[int, int, int, int, int, int]
MODES = ("nearest", "nearest-exact", "trilinear")


def array_namespace(x: Any) -> Any:
    """numpy for numpy arrays, cupy for cupy arrays."""
    raise NotImplementedError


def resize(x: Any, size: Sequence[int], mode: str, box: Box | None = None) -> Any:
    """Crop ``x`` (D, H, W) to the half-open ``box`` (whole volume if None), then
    resize to ``size`` with ``mode`` exactly as torch's ``F.interpolate``.

    Returns float32 for ``trilinear``; ``x.dtype`` for the nearest modes."""
    raise NotImplementedError


def upsample_then_nearest(low_res: Any, mid_size: Sequence[int], out_size: Sequence[int]) -> Any:
    """``resize(resize(low_res, mid_size, "trilinear"), out_size, "nearest")`` fused:
    the coarse pass's logits (4d, 4h, 4w) -> window size -> crop-space size."""
    raise NotImplementedError


def sigmoid(x: Any) -> Any:
    """float32 logistic function."""
    raise NotImplementedError


def bounding_box(mask: Any) -> Box | None:
    """Inclusive bounding box ``(d0, h0, w0, d1, h1, w1)`` of nonzero voxels, or None."""
    raise NotImplementedError


def positive_box(logits: Any) -> Box | None:
    """Inclusive bounding box of ``sigmoid(logits) > 0.5`` (official ROI source), or None."""
    raise NotImplementedError


def foreground_stats(volume: Any) -> tuple[float, float, float, float]:
    """Official ForegroundNormalization statistics of voxels above the volume mean:
    (0.05th percentile, 99.95th percentile, mean, std)."""
    raise NotImplementedError


def normalize(volume: Any, stats: tuple[float, float, float, float]) -> Any:
    """Clip to the percentiles and z-score with mean/std; float32."""
    raise NotImplementedError


def min_max(volume: Any) -> Any:
    """Official MinMaxNormalization to [0, 1]; float32."""
    raise NotImplementedError


def blend_windows(windows: Any, starts: Sequence[tuple[int, int, int]], out_shape: Sequence[int]) -> Any:
    """Constant-weight average of window logits ``(n, wd, wh, ww)`` placed at ``starts``
    in a zero volume of ``out_shape``; voxels no window covers are NaN-free zeros
    divided by... (see implementation) — matches MONAI sliding_window_inference."""
    raise NotImplementedError
