"""Evaluation the way SegVol is evaluated: prompts derived from a reference
label, and Dice as the official inference demo computes it.

Official flow (``inference_demo.py`` with ``demo_data_process.process_ct_gt``):
the label goes through the image's transforms (axis swap, padding, the
image's foreground crop) into **crop** space, and through the zoom-out resize
(nearest-exact) into **zoom-out** space. The zoom-out box prompt is
``generate_box`` of that resized label and the point prompts are
``select_points(label_zoom, num_positive_extra=3, num_negative_extra=3)``;
both are *zoom-out-space* prompts, which :meth:`SegVolRuntime.segment_zoom_space`
takes as they are. (A box given by the user in scan space is instead mapped
as a binary box resized with the volume, see :func:`segvol_rt.pipeline.prompts.to_model_space`;
the two agree for convex labels but not in general.)

Dice, official: ``2 * tp / (sum(pred) + sum(gt) + 1)`` with ``pred =
sigmoid(logits) > 0.5`` on the crop-space logits (:func:`dice_official`),
after the coarse pass ("zoom-out") and after the zoom-in. Scan-space Dice
(:func:`dice`) is the textbook ``2 |A & B| / (|A| + |B|)`` of the written
mask against the label, what a user measures on the files.

Randomness: ``select_points`` draws from ``numpy.random.default_rng(seed)``
(official: torch's global RNG), so the same seed gives the same points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt import ops
from segvol_rt.errors import SegVolError
from segvol_rt.ops.boxes import InclusiveBox
from segvol_rt.pipeline import prompts as P

if TYPE_CHECKING:
    from segvol_rt.io.scan import Scan
    from segvol_rt.pipeline.geometry import Geometry
    from segvol_rt.runtime import Request, Segmentation, SegVolRuntime

# inference_demo.zoom_in_zoom_out's select_points counts
EVAL_POSITIVE_EXTRA = 3
EVAL_NEGATIVE_EXTRA = 3


@dataclass(frozen=True)
class Reference:
    """One reference label of the current volume.

    ``scan``: bool ``(I, J, K)``; ``crop``: uint8 ``(D, H, W)`` in crop space
    (0 where the crop lies outside the scan); ``zoom``: uint8 ``spatial_size``,
    the crop label resized with nearest-exact (official ``zoom_out_label``)."""

    name: str
    scan: np.ndarray
    crop: np.ndarray
    zoom: np.ndarray


def reference_from_mask(mask: Any, geometry: Geometry, name: str = "reference") -> Reference:
    """A :class:`Reference` from a scan-space mask ``(I, J, K)`` and the volume's
    :class:`segvol_rt.pipeline.geometry.Geometry`."""
    scan = np.asarray(mask).astype(bool)
    if tuple(scan.shape) != tuple(geometry.scan_shape):
        raise SegVolError(f"reference {name} has shape {scan.shape} but the scan has {tuple(geometry.scan_shape)}")
    crop = np.ascontiguousarray(geometry.volume(scan.astype(np.uint8), "scan", "crop"))
    zoom = np.asarray(geometry.zoom.forward_volume(crop), dtype=np.uint8)
    return Reference(name, scan, crop, zoom)


def load_reference(spec: str, scan: Scan, geometry: Geometry) -> Reference:
    """The label ``"LABEL.nii.gz:ID"`` of ``scan`` (:class:`segvol_rt.io.scan.Scan`, same grid)."""
    from segvol_rt.io.nifti import read_label

    labels, label_id = read_label(spec, scan)
    return reference_from_mask(labels == label_id, geometry, name=str(spec))


def official_prompts(
    reference: Reference, box: bool = True, points: bool = False, seed: int = 0
) -> tuple[InclusiveBox | None, P.Points | None]:
    """Zoom-out-space prompts from the label, as the official demo derives them:
    ``generate_box(label_zoom)`` and ``select_points(label_zoom, 3, 3)`` (seeded).

    The box is :data:`segvol_rt.pipeline.prompts.EMPTY_BOX` when the label vanishes in the
    zoom-out resize (the official demo then prompts with it too)."""
    if not (box or points):
        raise SegVolError("evaluation prompts need the box, the points or both")
    out_box = P.generate_box(reference.zoom) if box else None
    out_points = None
    if points:
        rng = np.random.default_rng(seed)
        out_points = P.select_points(reference.zoom, rng, EVAL_POSITIVE_EXTRA, EVAL_NEGATIVE_EXTRA)
    return out_box, out_points


def dice_official(crop_logits: Any, label_crop: Any) -> float:
    """``2 tp / (sum pred + sum gt + 1)``, ``pred = sigmoid(logits) > 0.5``, crop space."""
    pred = np.asarray(ops.positive_mask(np.asarray(crop_logits, dtype=np.float32)))
    gt = np.asarray(label_crop) > 0
    if pred.shape != gt.shape:
        raise SegVolError(f"logits {pred.shape} and label {gt.shape} differ in shape")
    tp = np.count_nonzero(pred & gt)
    return float(2.0 * tp / (np.count_nonzero(pred) + np.count_nonzero(gt) + 1))


def dice(mask: Any, reference: Any) -> float:
    """``2 |A & B| / (|A| + |B|)`` of two masks of one shape (1.0 when both are empty)."""
    a, b = np.asarray(mask) > 0, np.asarray(reference) > 0
    if a.shape != b.shape:
        raise SegVolError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(a & b) / total)


@dataclass
class Evaluation:
    """Dice of one target against its reference, zoom-out only and with zoom-in.

    ``final``: the result to keep (the zoom-in one unless zoom-in was off);
    ``*_zoom_in`` are None when zoom-in was not asked for. When the coarse
    pass found no foreground the zoom-in is skipped and equals zoom-out."""

    final: Any
    crop_zoom_out: float
    scan_zoom_out: float
    crop_zoom_in: float | None = None
    scan_zoom_in: float | None = None

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [
            f"Dice zoom-out only:     {self.crop_zoom_out:.4f} (official, crop space)   "
            f"{self.scan_zoom_out:.4f} (scan space)"
        ]
        if self.crop_zoom_in is not None:
            note = "  [zoom-in skipped: no foreground]" if self.final.no_foreground else ""
            out.append(
                f"Dice zoom-out-zoom-in:  {self.crop_zoom_in:.4f} (official, crop space)   "
                f"{self.scan_zoom_in:.4f} (scan space){note}"
            )
        return out

    def as_dict(self) -> dict[str, float | None]:
        return {
            "dice_official_zoom_out": self.crop_zoom_out,
            "dice_official_zoom_in": self.crop_zoom_in,
            "dice_scan_zoom_out": self.scan_zoom_out,
            "dice_scan_zoom_in": self.scan_zoom_in,
        }


Runner = Callable[[bool], Any]


def evaluate(run: Runner, reference: Reference, zoom_in: bool = True) -> Evaluation:
    """Run one target zoom-out only and (``zoom_in``) with zoom-in, and score both.

    ``run(zoom_in)`` returns a :class:`segvol_rt.runtime.Segmentation` that kept
    its crop logits (``keep_logits=True``); the runtime's caches make the
    second run cost only the zoom-in."""
    coarse = run(False)
    result = Evaluation(
        final=coarse,
        crop_zoom_out=dice_official(_logits(coarse), reference.crop),
        scan_zoom_out=dice(coarse.mask, reference.scan),
    )
    if zoom_in:
        fine = run(True)
        result.final = fine
        result.crop_zoom_in = dice_official(_logits(fine), reference.crop)
        result.scan_zoom_in = dice(fine.mask, reference.scan)
    return result


def _logits(seg: Segmentation) -> np.ndarray:
    if seg.crop_logits is None:
        raise SegVolError("evaluation needs the crop logits: segment with keep_logits=True")
    return seg.crop_logits


def zoom_space_runner(runtime: SegVolRuntime, text: str | None, box: Any, points: Any, seed: int = 0,
                      probabilities: bool = False, window_prompts: str = "official") -> Runner:
    """``run(zoom_in)`` for prompts already in zoom-out space (:func:`official_prompts`)."""
    from segvol_rt.pipeline.zoom import Target

    embedding = runtime.text_embeddings([text])[0] if text is not None else None
    target = Target(embedding, box, points, seed)

    def run(zoom_in: bool) -> Any:
        seg = runtime.segment_zoom_space([target], zoom_in=zoom_in, probabilities=probabilities, keep_logits=True,
                                         window_prompts=window_prompts)[0]
        seg.prompt = _describe(text, box, points, "zoom-out space")
        return seg

    return run


def scan_space_runner(runtime: SegVolRuntime, request: Request) -> Runner:
    """``run(zoom_in)`` for a scan-space :class:`segvol_rt.runtime.Request`."""
    from dataclasses import replace

    def run(zoom_in: bool) -> Any:
        req = replace(request, zoom_in=zoom_in, keep_logits=True)
        return runtime.segment_many([req])[0]

    return run


def _describe(text: str | None, box: Any, points: Any, space: str) -> str:
    parts = [f"text={text!r}"] if text is not None else []
    if box is not None:
        parts.append(f"box={tuple(int(v) for v in box)}")
    if points is not None:
        parts.append(f"{len(points)} points")
    return ", ".join(parts) + f" ({space})"
