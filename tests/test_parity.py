"""The torch-free zoom-out-zoom-in (ONNX Runtime, numpy) against the
official-style torch pipeline (:mod:`segvol_rt.export.reference.official`) on tiny
artifacts: crop-space logits within 1e-5 relative error, identical masks.

The model is :mod:`tests.support.tiny_artifacts`' seeded tiny SegVol with a
decoder edited so the coarse logits form a blob (a usable ROI). Volumes: a
(16, 64, 64) crop (ROI = one padded window) and a (40, 160, 150) crop (ROI ->
6 windows, 2 encoder batches of at most 4).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segvol_rt import ops  # noqa: E402
from segvol_rt.export.reference.official import official_zoom_out_zoom_in  # noqa: E402
from segvol_rt.pipeline import prompts as P  # noqa: E402
from segvol_rt.runtime import SegVolRuntime  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

REL_TOL = 1e-5

# scan (I, J, K) shape -> crop (K, J, I); the expected number of windows
VOLUMES = {"one_window": ((64, 64, 16), 1), "six_windows": ((150, 160, 40), 6)}
# prompts as fractions of the scan shape (i, j, k); points may carry a label
BOX = (0.2, 0.25, 0.2, 0.73, 0.75, 0.75)
POINT_A, POINT_B, NEGATIVE = (0.4, 0.44, 0.5), (0.6, 0.62, 0.62), (0.27, 0.25, 0.25, 0)
PROMPTS = {
    "text": dict(text="liver"),
    "box": dict(box=BOX),
    "text+box": dict(text="spleen", box=BOX),
    "points": dict(points=[POINT_A, POINT_B, NEGATIVE]),
    "text+points": dict(text="a free phrase", points=[POINT_A]),
    "box+points": dict(box=BOX, points=[POINT_A]),
}


def _voxels(fractions, shape) -> list[int]:
    return [int(f * shape[i % 3]) for i, f in enumerate(fractions)]


def _scale(prompt: dict, scan_shape: tuple[int, int, int]) -> dict:
    """Fractions -> scan voxel indices, as the strings a user types."""
    out = dict(prompt)
    if "box" in out:
        out["box"] = ",".join(map(str, _voxels(out["box"], scan_shape)))
    if "points" in out:
        out["points"] = ";".join(",".join(map(str, _voxels(p[:3], scan_shape) + list(p[3:]))) for p in out["points"])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


@pytest.fixture(scope="module")
def runtimes(tiny):
    """Per volume: a runtime with that volume set."""
    out = {}
    rng = np.random.default_rng(5)
    for name, (shape, _) in VOLUMES.items():
        rt = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
        rt.set_volume((rng.random(shape) * 1000 - 500).astype(np.float32))
        out[name] = rt
    return out


def _reference(model, rt: SegVolRuntime, prompt: dict, zoom_in: bool, seed: int) -> np.ndarray:
    box = P.parse_box(prompt["box"]) if "box" in prompt else None
    points = P.parse_points(prompt["points"]) if "points" in prompt else None
    mp = P.to_model_space(rt.geometry, box, points)
    text = rt.text_embeddings([prompt["text"]])[0] if "text" in prompt else None
    pts = None if mp.points_zoom is None else (mp.points_zoom.coords, mp.points_zoom.labels)
    logits = official_zoom_out_zoom_in(model, rt.crop_image, rt.zoom_image, text, mp.box_zoom, pts, zoom_in, seed)
    return logits.numpy()


def _compare(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    assert rel <= REL_TOL, f"relative error {rel:.2e}"
    ref_mask = (torch.sigmoid(torch.from_numpy(ref)) > 0.5).numpy()
    assert np.array_equal(np.asarray(ops.positive_mask(ours)), ref_mask)


@pytest.mark.parametrize("volume", list(VOLUMES))
@pytest.mark.parametrize("mode", list(PROMPTS))
def test_zoom_out_zoom_in_parity(tiny, runtimes, volume, mode):
    rt = runtimes[volume]
    prompt = _scale(PROMPTS[mode], VOLUMES[volume][0])
    seg = rt.segment(**prompt, seed=11, keep_logits=True)
    assert seg.zoom_in_applied and seg.n_windows == VOLUMES[volume][1]
    _compare(seg.crop_logits, _reference(tiny[2], rt, prompt, True, seed=11))


@pytest.mark.parametrize("volume", list(VOLUMES))
@pytest.mark.parametrize("mode", ["text", "box", "points"])
def test_zoom_out_only_parity(tiny, runtimes, volume, mode):
    rt = runtimes[volume]
    prompt = _scale(PROMPTS[mode], VOLUMES[volume][0])
    seg = rt.segment(**prompt, zoom_in=False, keep_logits=True)
    assert not seg.zoom_in_applied and seg.n_windows == 0
    _compare(seg.crop_logits, _reference(tiny[2], rt, prompt, False, seed=0))


def test_roi_is_a_strict_part_of_the_large_crop(runtimes):
    rt = runtimes["six_windows"]
    seg = rt.segment(text="liver")
    assert all(0 < b - a < n for a, b, n in zip(seg.roi.lo, seg.roi.hi, rt.crop_image.shape))
