"""``segvol-rt demo``: the whole pipeline on a synthetic phantom, on a fresh CPU machine.

1. make a phantom (:mod:`segvol_rt.demo.phantom`) and write it with its labels;
2. open the model (by default the shipped demo model, exported on first use,
   :mod:`segvol_rt.demo.model`);
3. segment every organ twice, by its name (text) and by name plus the box of
   its label in scan space (text+box, what a user draws), each zoom-out only and
   zoom-out-zoom-in (:func:`segvol_rt.evaluation.evaluate`), with *aligned*
   zoom-in window prompts by default: phantoms are often narrower than the
   demo's 128-voxel window, where the official placement misplaces the window
   boxes by the padding (:mod:`segvol_rt.pipeline.zoom`; ``window_prompts="official"``
   reproduces it);
4. tabulate Dice per organ (scan space, ``2|A&B|/(|A|+|B|)``), timings and the backend;
5. write the masks (multi-label files whose labels are the phantom's ids), a
   JSON of the results (with the sha256 of every other file and the run's
   provenance) and a PNG preview (:func:`render_preview`).

Everything the demo writes - phantom, labels, masks, preview, results - is
one output set (:mod:`segvol_rt.io.outputs`): staged from the start (the
scan is read back from its staged file), committed together at the end, so
a failed or interrupted demo leaves ``--out`` as it was.

The phantom is a demonstration, not anatomy, and so is the demo model: the
Dice values say the pipeline works, not that a model is good.

Dependencies: numpy; pillow (the ``demo`` extra) for the preview, imported lazily.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segvol_rt import evaluation as E
from segvol_rt.app.console import provenance
from segvol_rt.errors import SegVolError
from segvol_rt.ops.boxes import int3
from segvol_rt.pipeline import prompts as P

if TYPE_CHECKING:
    from segvol_rt.demo.phantom import Phantom
    from segvol_rt.io.scan import Scan
    from segvol_rt.runtime import SegVolRuntime

PROMPT_KINDS = ("text", "text+box")
PHANTOM_FILE = "phantom.nii.gz"
LABELS_SUFFIX = "_labels"
RESULTS_FILE = "results.json"
PREVIEW_FILE = "preview.png"

# preview layout, pixels
CELL = 256  # each of the three panels fits a CELL x CELL square
PAD = 8
TITLE_H = 20
LEGEND_ROW_H = 18
LEGEND_COLS = 4
HU_WINDOW = (-160.0, 240.0)  # abdomen, W400 L40
COLOURS = (  # one per organ, in label order (matplotlib's tab10)
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


# -- the phantom -------------------------------------------------------------------------


def labels_path_for(image_path: str | os.PathLike[str]) -> Path:
    """``x.nii.gz`` -> ``x_labels.nii.gz`` (the phantom's label file beside it)."""
    p = Path(image_path)
    for suffix in (".nii.gz", ".nii"):
        if p.name.lower().endswith(suffix):
            return p.with_name(p.name[: -len(suffix)] + LABELS_SUFFIX + p.name[-len(suffix) :])
    raise SegVolError(f"{p}: a phantom is written as .nii or .nii.gz")


def write_phantom(path: str | os.PathLike[str], seed: int = 0) -> tuple[Path, Path, Any]:
    """Write a seeded phantom and its labels (``<stem>_labels.nii.gz``), both or neither;
    returns (image path, labels path, :class:`segvol_rt.demo.phantom.Phantom`)."""
    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.io.outputs import OutputSet, check_outputs

    path = Path(path)
    labels = labels_path_for(path)
    if not path.parent.is_dir():
        raise SegVolError(f"{path.parent}: no such directory")
    check_outputs([path, labels], hint="choose another --make-phantom path")
    phantom = make_phantom(seed)
    with OutputSet([path, labels]) as out:
        _stage_phantom(out, phantom, path, labels)
        out.commit()
    return path, labels, phantom


def _stage_phantom(out: Any, phantom: Phantom, image_path: Path, labels_path: Path) -> None:
    """Stage the phantom's image (int16) and labels (uint8) as NIfTI in ``out``
    (an :class:`segvol_rt.io.outputs.OutputSet`), headers as :meth:`Phantom.save` writes them."""
    for path, array in ((image_path, phantom.image), (labels_path, phantom.labels)):
        out.stage(path, _nifti_bytes(array, phantom.affine, path.name.lower().endswith(".gz")))


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, gz: bool) -> bytes:
    from segvol_rt.demo.phantom import nifti_image
    from segvol_rt.io.nifti import gzip_bytes

    data = nifti_image(array, affine).to_bytes()
    return gzip_bytes(data) if gz else data


# -- running ----------------------------------------------------------------------------


def demo_steps() -> int:
    """Segmentations :func:`run_demo` makes (for a progress bar): organs x prompt kinds."""
    from segvol_rt.demo.phantom import PHANTOM_LABELS

    return len(PHANTOM_LABELS) * len(PROMPT_KINDS)


@dataclass
class DemoRow:
    """One organ and prompt kind: scan-space Dice zoom-out only and zoom-out-zoom-in."""

    organ: str
    kind: str
    dice_zoom_out: float
    dice_zoom_in: float
    official: dict[str, float | None]
    windows: int
    seconds: float


@dataclass
class DemoResult:
    rows: list[DemoRow]
    backend: str
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    window_prompts: str = "aligned"
    provenance: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[str]:
        """The Dice table, one line per organ, both prompt kinds side by side."""
        head = f"{'organ':<20}" + "".join(f"{k + ' zoom-out':>18}{k + ' zoom-in':>18}" for k in PROMPT_KINDS)
        lines = [head + f"{'windows':>9}{'time':>8}", "-" * (len(head) + 17)]
        by_organ: dict[str, dict[str, DemoRow]] = {}
        for r in self.rows:
            by_organ.setdefault(r.organ, {})[r.kind] = r
        for organ, rows in by_organ.items():
            cells = "".join(f"{rows[k].dice_zoom_out:>18.3f}{rows[k].dice_zoom_in:>18.3f}" for k in PROMPT_KINDS)
            windows = max(r.windows for r in rows.values())
            seconds = sum(r.seconds for r in rows.values())
            lines.append(f"{organ:<20}{cells}{windows:>9}{seconds:>7.2f}s")
        means = "".join(
            f"{np.mean([r.dice_zoom_out for r in self.rows if r.kind == k]):>18.3f}"
            f"{np.mean([r.dice_zoom_in for r in self.rows if r.kind == k]):>18.3f}"
            for k in PROMPT_KINDS
        )
        lines.append(f"{'mean':<20}{means}")
        return lines


Say = Callable[[str], None]


def run_demo(out_dir: str | os.PathLike[str], open_runtime: Callable[[], Any], seed: int = 0,
             say: Say | None = None, advance: Callable[[str], None] | None = None,
             window_prompts: str = "aligned") -> DemoResult:
    """The demo flow of the module docstring, writing into ``out_dir`` (all files or none)."""
    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.io.nifti import json_bytes, read_scan
    from segvol_rt.io.outputs import OutputSet, check_outputs
    from segvol_rt.pipeline.zoom import check_window_prompts

    check_window_prompts(window_prompts)
    say = say or (lambda _m: None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SegVolError(f"--out {out} exists and is not a directory")
    files = demo_files(out)
    check_outputs(list(files.values()), hint="choose another --out")
    start = time.perf_counter()
    with OutputSet(list(files.values())) as staged:
        phantom = make_phantom(seed)
        _stage_phantom(staged, phantom, files["image"], files["labels"])
        say(f"phantom: {files['image']} ({'x'.join(map(str, phantom.image.shape))}, seed {seed}), labels {files['labels']}")
        t0 = time.perf_counter()
        rt = open_runtime()
        timings = {"phantom": t0 - start, "load": time.perf_counter() - t0}
        scan = read_scan(staged.staged_path(files["image"]))  # the staged file, as it will be committed
        rt.set_volume(scan.data, scan.affine)
        rows, masks = segment_organs(rt, phantom, advance, window_prompts)
        timings["segment"] = sum(r.seconds for r in rows)
        result = DemoResult(rows, rt.backend_reason, [], timings, window_prompts, provenance(rt, window_prompts))
        t0 = time.perf_counter()
        _stage_masks(staged, files, masks, scan)
        preview_masks = {phantom.label_names[i]: m for i, m in masks["text+box"].items()}
        staged.stage(files["preview"], preview_png(scan.data, scan.affine, preview_masks,
                                                   title=f"segvol-rt demo, text+box prompts, {rt.backend_reason.split(':')[0]}"))
        timings["write"] = time.perf_counter() - t0
        digests = {p.name: d for p, d in staged.digests().items()}
        staged.stage(files["results"], json_bytes(_results_json(result, phantom, seed, digests), files["results"]))
        result.files = staged.commit()
    return result


def demo_files(out: Path) -> dict[str, Path]:
    """What :func:`run_demo` writes into ``out``, in commit order (results last)."""
    image = out / PHANTOM_FILE
    files = {"image": image, "labels": labels_path_for(image)}
    files.update({f"masks {kind}": out / _masks_name(kind) for kind in PROMPT_KINDS})
    files.update({"preview": out / PREVIEW_FILE, "results": out / RESULTS_FILE})
    return files


def _masks_name(kind: str) -> str:
    return f"masks_{kind.replace('+', '_')}.nii.gz"


def segment_organs(rt: SegVolRuntime, phantom: Phantom, advance: Callable[[str], None] | None = None,
                   window_prompts: str = "aligned") -> tuple[list[DemoRow], dict[str, dict[int, np.ndarray]]]:
    """Every organ of ``phantom`` (the runtime's current volume) by each of
    :data:`PROMPT_KINDS`, zoom-out only and zoom-out-zoom-in: a row per organ
    and kind (scan-space Dice, timing) and the final masks per kind and label."""
    from segvol_rt.types import Request

    advance = advance or (lambda _m: None)
    rows: list[DemoRow] = []
    masks: dict[str, dict[int, np.ndarray]] = {k: {} for k in PROMPT_KINDS}
    for label, name in sorted(phantom.label_names.items()):
        truth = phantom.labels == label
        if not truth.any():
            continue  # an organ squeezed out of a thin slab
        reference = E.reference_from_mask(truth, rt.geometry, name)
        for kind in PROMPT_KINDS:
            box = P.generate_box(truth) if "box" in kind else None
            t0 = time.perf_counter()
            request = Request(text=name, box=box, window_prompts=window_prompts)
            ev = E.evaluate(E.scan_space_runner(rt, request), reference, zoom_in=True)
            seconds = time.perf_counter() - t0
            zoomed = ev.scan_zoom_in if ev.scan_zoom_in is not None else float("nan")
            rows.append(DemoRow(name, kind, ev.scan_zoom_out, zoomed, ev.as_dict(),
                                ev.final.n_windows, seconds))
            masks[kind][label] = np.asarray(ev.final.mask)
            advance(f"{name} ({kind}): Dice {ev.scan_zoom_in:.3f}")
    return rows, masks


def _stage_masks(staged: Any, files: dict[str, Path], masks: dict[str, dict[int, np.ndarray]], scan: Scan) -> None:
    """One multi-label file per prompt kind, labels = phantom ids (later ids win overlaps)."""
    from segvol_rt.io.nifti import mask_bytes

    for kind, by_label in masks.items():
        volume = np.zeros(scan.shape, dtype=np.uint8, order="F")
        for label, mask in sorted(by_label.items()):
            volume[mask > 0] = label
        staged.stage(files[f"masks {kind}"], mask_bytes(volume, scan, gz=True))


def _results_json(result: DemoResult, phantom: Phantom, seed: int, digests: dict[str, str]) -> dict[str, Any]:
    return {
        "backend": result.backend,
        "provenance": result.provenance,
        "window_prompts": result.window_prompts,
        "phantom": {"seed": seed, "shape": list(phantom.image.shape), "labels": phantom.label_names},
        "dice": "scan space, 2|A&B|/(|A|+|B|); official_* fields: the demo's formula in crop space",
        "rows": [
            {"organ": r.organ, "prompt": r.kind, "dice_zoom_out": r.dice_zoom_out, "dice_zoom_in": r.dice_zoom_in,
             "windows": r.windows, "seconds": r.seconds, **{f"official_{k}": v for k, v in r.official.items()}}
            for r in result.rows
        ],
        "timings": result.timings,
        "files": {name: {"sha256": digest} for name, digest in digests.items()},
    }


# -- the preview ------------------------------------------------------------------------


def preview_size(n_labels: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`render_preview` with ``n_labels`` legend entries."""
    rows = max(1, math.ceil(n_labels / LEGEND_COLS))
    return 3 * CELL + 4 * PAD, TITLE_H + CELL + 2 * PAD + rows * LEGEND_ROW_H + PAD


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(view of ``volume`` in RAS voxel axes, voxel size in mm along them)."""
    from segvol_rt.pipeline.geometry import Reorient

    orient = Reorient.from_affine(affine, volume.shape, "RAS")
    spacing_in = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    spacing = np.empty(3)
    for i, (axis, _) in enumerate(orient.ornt):
        spacing[axis] = spacing_in[i]
    return orient.forward_volume(volume), spacing


def _panels(vol: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS ``(x, y, z)`` volume, radiological
    display: rows top to bottom = anterior->posterior or superior->inferior,
    columns = patient right on the viewer's left (axial, coronal), anterior on the left (sagittal)."""
    x, y, z = (int(c) for c in centre)
    return [vol[::-1, ::-1, z].T, vol[::-1, y, ::-1].T, vol[x, ::-1, ::-1].T]


_PANEL_SPACING = ((1, 0), (2, 0), (2, 1))  # (row axis, column axis) of each panel, RAS


def _fit(panel: np.ndarray, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Nearest resample to CELL x CELL at most, square pixels in mm."""
    rows, cols = panel.shape
    mm = (rows * spacing_rc[0], cols * spacing_rc[1])
    scale = CELL / max(mm)
    out_r, out_c = (max(1, min(CELL, round(m * scale))) for m in mm)
    ri = np.minimum(((np.arange(out_r) + 0.5) * rows / out_r).astype(int), rows - 1)
    ci = np.minimum(((np.arange(out_c) + 0.5) * cols / out_c).astype(int), cols - 1)
    return panel[np.ix_(ri, ci)]


def _grey(panel: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return (np.clip((panel - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask (set, with a 4-neighbour outside the mask)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _window(image: np.ndarray) -> tuple[float, float]:
    """The abdominal HU window for CT-like values, else the 1-99th percentiles."""
    if float(image.min()) <= -500:
        return HU_WINDOW
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi)


def render_preview(image: Any, affine: Any, masks: dict[str, Any], path: str | os.PathLike[str],
                   title: str = "segvol-rt") -> Path:
    """Write :func:`preview_png` to ``path``, atomically."""
    from segvol_rt.io.atomic import atomic_write_bytes

    return atomic_write_bytes(Path(path), preview_png(image, affine, masks, title))


def preview_png(image: Any, affine: Any, masks: dict[str, Any], title: str = "segvol-rt") -> bytes:
    """A PNG: axial, coronal and sagittal slices of ``image`` (scan space
    ``(I, J, K)``, shown in RAS, radiological convention, square millimetres)
    through the centroid of all masks, each mask's contour in its own colour,
    and a legend. Size: :func:`preview_size` of ``len(masks)``."""
    from segvol_rt._optional import require

    require("PIL")
    from PIL import Image, ImageDraw

    image = np.asarray(image, dtype=np.float32)
    vol, spacing = _to_ras(image, np.asarray(affine, dtype=np.float64))
    ras_masks = {name: _to_ras(np.asarray(m) > 0, affine)[0] for name, m in masks.items()}
    union = np.zeros(vol.shape, dtype=bool)
    for m in ras_masks.values():
        union |= m
    centre = np.argwhere(union).mean(axis=0) if union.any() else (np.array(vol.shape) - 1) / 2
    centre = int3(np.round(centre))

    width, height = preview_size(len(masks))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 4), f"{title} - slices through voxel (RAS) {tuple(int(c) for c in centre)}", fill=(255, 255, 255))
    window = _window(image)
    names = ("axial", "coronal", "sagittal")
    for p, (panel, (ra, ca)) in enumerate(zip(_panels(vol, centre), _PANEL_SPACING)):
        rgb = np.repeat(_grey(_fit(panel, (spacing[ra], spacing[ca])), window)[..., None], 3, axis=2)
        for colour, m in zip(COLOURS * 4, ras_masks.values()):
            edge = _outline(_fit(_panels(m, centre)[p], (spacing[ra], spacing[ca])))
            rgb[edge] = colour
        x0 = PAD + p * (CELL + PAD) + (CELL - rgb.shape[1]) // 2
        y0 = TITLE_H + PAD + (CELL - rgb.shape[0]) // 2
        canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (x0, y0))
        draw.text((PAD + p * (CELL + PAD) + 3, TITLE_H + PAD + 2), names[p], fill=(255, 255, 0))
    legend_y = TITLE_H + CELL + 2 * PAD
    col_w = (width - 2 * PAD) // LEGEND_COLS
    for n, (name, colour) in enumerate(zip(masks, COLOURS * 4)):
        x = PAD + (n % LEGEND_COLS) * col_w
        y = legend_y + (n // LEGEND_COLS) * LEGEND_ROW_H
        draw.rectangle((x, y + 3, x + 10, y + 13), fill=colour)
        draw.text((x + 16, y + 2), name, fill=(255, 255, 255))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
