"""The shipped demo model, end to end: exported graphs -> ONNX Runtime CPU
pipeline -> Dice on held-out phantoms (seeds the training never saw), zoom-in
window prompts ``aligned`` as ``segvol-rt demo`` runs them.

Thresholds sit below what the model reliably achieves (see
segvol_rt/assets/demo/TRAINING.md and the closing note of issue 6); they guard
against regressions in the export or the pipeline, not against a weak model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from segvol_rt.app.demo import PROMPT_KINDS as KINDS  # noqa: E402
from segvol_rt.app.demo import segment_organs  # noqa: E402
from segvol_rt.demo.phantom import make_phantom, random_phantom  # noqa: E402
from segvol_rt.runtime import SegVolRuntime  # noqa: E402

# Two phantoms of the demo's default shape and one of random shape and spacing.
HELD_OUT = (lambda: make_phantom(90001), lambda: make_phantom(90002),
            lambda: random_phantom(np.random.default_rng([90003])))
# Achieved (2026-11-29), mean over 30 organs, zoom-out / zoom-out-zoom-in:
# text 0.618 / 0.651, text+box 0.695 / 0.765 (with the official window-prompt
# placement text+box zoom-in falls to 0.565: these phantoms are narrower than
# the window). Floors: about 0.07 below.
MIN_DICE = {"text": (0.55, 0.58), "text+box": (0.62, 0.69)}


@pytest.fixture(scope="module")
def demo_runtime(fresh_demo_artifacts):
    return SegVolRuntime.load(fresh_demo_artifacts, backend="onnxruntime", device="cpu")


def _dice_rows(rt, phantom):
    """{kind: [(zoom-out Dice, zoom-out-zoom-in Dice) per organ]} in scan space, as the demo computes them."""
    rt.set_volume(phantom.image.astype(np.float32), phantom.affine)
    rows, _ = segment_organs(rt, phantom, window_prompts="aligned")
    return {k: [(r.dice_zoom_out, r.dice_zoom_in) for r in rows if r.kind == k] for k in KINDS}


@pytest.fixture(scope="module")
def dice(demo_runtime):
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    for make in HELD_OUT:
        for kind, values in _dice_rows(demo_runtime, make()).items():
            rows[kind] += values
    means = {k: np.mean(v, axis=0) for k, v in rows.items()}
    for kind, (zo, zi) in means.items():
        print(f"demo model, {kind}, {len(rows[kind])} organs: Dice zoom-out {zo:.3f}, zoom-out-zoom-in {zi:.3f}")
    return means


@pytest.mark.parametrize("kind", KINDS)
def test_demo_model_segments_held_out_phantoms(dice, kind):
    zoom_out, zoom_in = dice[kind]
    floor_out, floor_in = MIN_DICE[kind]
    assert zoom_out >= floor_out and zoom_in >= floor_in


def test_zoom_in_improves_on_zoom_out_with_box_prompts(dice):
    """The SegVol paper's claim, as far as this small model carries it: with
    text+box prompts zoom-out-zoom-in beats zoom-out alone on average, here
    and on TRAINING.md's phantoms. With text alone it does here (+0.03) but
    not on those (-0.035), so that is reported, not asserted."""
    zoom_out, zoom_in = dice["text+box"]
    assert zoom_in > zoom_out
