"""The demo training's preprocessed phantoms (:mod:`segvol_rt.export.demo_training.training`).

:class:`Case`: one phantom run through the runtime's own
:func:`segvol_rt.pipeline.preprocess.preprocess`, its labels through the same
geometry (crop space and the nearest-exact zoom-out); the seeded streams of
training and held-out phantoms; and :func:`build_cases`, the training cases,
cached as npz files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segvol_rt.demo.phantom import Phantom, make_phantom, random_phantom
from segvol_rt.ops.boxes import InclusiveBox, int_box
from segvol_rt.pipeline import prompts as P
from segvol_rt.pipeline.preprocess import preprocess

# -- preprocessed phantoms -------------------------------------------------------


@dataclass
class Case:
    """One preprocessed phantom, as the runtime sees it.

    ``crop`` (D, H, W) float16 crop-space image in [0, 1]; ``labels`` (D, H, W)
    uint8 in crop space; ``zoom`` / ``zoom_labels``: the same at
    ``spatial_size`` (nearest-exact); ``boxes``: organ id -> inclusive
    crop-space box (d0, h0, w0, d1, h1, w1)."""

    crop: np.ndarray
    labels: np.ndarray
    zoom: np.ndarray
    zoom_labels: np.ndarray
    boxes: dict[int, InclusiveBox]


def make_case(phantom: Phantom, spatial_size: Sequence[int]) -> Case:
    """Preprocess a phantom with the runtime's code; labels through the same geometry."""
    pre = preprocess(phantom.image, spatial_size)
    labels = np.ascontiguousarray(pre.geometry.volume(phantom.labels, "scan", "crop"), dtype=np.uint8)
    zoom_labels = np.ascontiguousarray(pre.geometry.zoom.forward_volume(labels), dtype=np.uint8)
    boxes: dict[int, InclusiveBox] = {}
    for organ in np.unique(labels)[1:]:
        boxes[int(organ)] = P.generate_box(labels == organ)
    return Case(
        np.ascontiguousarray(pre.image, dtype=np.float16),
        labels,
        np.ascontiguousarray(pre.zoom_image, dtype=np.float16),
        zoom_labels,
        boxes,
    )


def training_phantoms(seed: int, count: int) -> Iterable[Phantom]:
    """The training phantoms of ``seed``: random ones, plus the default shape every 8th."""
    rng = np.random.default_rng([seed, 1])
    for i in range(count):
        if i % 8 == 7:
            yield make_phantom(int(rng.integers(2**31)))
        else:
            yield random_phantom(rng)


def validation_phantoms(count: int) -> list[Phantom]:
    """Held-out phantoms: a stream no training seed draws from (fixed, seed-independent)."""
    rng = np.random.default_rng([2**20, 7])
    out = [make_phantom(10_000_019)]  # the demo's default shape
    while len(out) < count:
        out.append(random_phantom(rng))
    return out


def _save_case(case: Case, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npz")
    boxes = np.array([[k, *v] for k, v in sorted(case.boxes.items())], dtype=np.int64).reshape(-1, 7)
    np.savez(tmp, crop=case.crop, labels=case.labels, zoom=case.zoom, zoom_labels=case.zoom_labels, boxes=boxes)
    os.replace(tmp, path)


def _load_case(path: Path) -> Case:
    with np.load(path) as z:
        boxes = {int(r[0]): int_box(r[1:]) for r in z["boxes"]}
        return Case(z["crop"], z["labels"], z["zoom"], z["zoom_labels"], boxes)


def build_cases(seed: int, count: int, spatial_size: Sequence[int], cache: str | os.PathLike[str] | None,
                log=print) -> list[Case]:
    """``count`` preprocessed training phantoms; cached as npz under ``cache`` (keyed by seed and size)."""
    folder = None
    if cache is not None:
        folder = Path(cache) / f"seed{seed}_{'x'.join(map(str, spatial_size))}"
        folder.mkdir(parents=True, exist_ok=True)
    cases = []
    t0 = time.perf_counter()
    for i, phantom in enumerate(training_phantoms(seed, count)):
        path = None if folder is None else folder / f"{i:04d}.npz"
        if path is not None and path.is_file():
            cases.append(_load_case(path))
            continue
        case = make_case(phantom, spatial_size)
        if path is not None:
            _save_case(case, path)
        cases.append(case)
        if (i + 1) % 16 == 0:
            log(f"phantoms {i + 1}/{count} ({time.perf_counter() - t0:.0f}s)")
    return cases
