"""End-to-end geometry: a box prompt around a marked blob gives a mask on the
blob, in the input file's own voxel grid, for RAS, LPS and oblique anisotropic
affines, with and without ``--reorient RAS``.

The model is a fixture whose output is known (:class:`FollowBackend`): its
"image embedding" is the window itself, rearranged space-to-depth (patch 4 -> 64
channels, low-res grid = window), and its logits are +4 on the bright objects
(> 0.5 after normalisation, connected components) that the prompt box (token
labels 2/3, inclusive) touches, -4 elsewhere: it segments what the box points
at, like SegVol. The scan holds the blob and a bright decoy the box does not
touch, so the right mask is the blob's voxels alone: the prompt must reach the
model where the blob is, and the mask must come back to the scan's grid
through every geometry step (reorientation, axis swap, padding, crop, zoom-out
resize, zoom-in windows, and back). "Touches" rather than "inside": with a
single zoom-in window the official prompt box is shifted by the window padding
(the quirk :mod:`segvol_rt.pipeline.zoom` reproduces), as a real model would tolerate.

Also ``segvol-rt infer`` on the real CT of ../shared with a box from its liver
label (tiny artifacts): the output opens, has the input's grid and is non-empty.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from segvol_rt.app.infer import InferOptions, run_infer
from segvol_rt.backends.base import Backend
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.runtime import SegVolRuntime

nib = pytest.importorskip("nibabel")

CONFIG = SegVolConfig(spatial_size=(16, 64, 64), patch_size=(4, 4, 4), embed_dim=64, encoder_heads=2)


@dataclass(frozen=True)
class Layout:
    """A scan shape (i, j, k) with a blob and a decoy (centre, radius in voxels).

    Shapes are unequal so that a wrong permutation cannot pass, and the blob is
    off-centre on every axis so that a wrong flip cannot."""

    shape: tuple[int, int, int]
    blob: tuple[tuple[float, ...], tuple[float, ...]]
    decoy: tuple[tuple[float, ...], tuple[float, ...]]


LAYOUTS = {
    # every axis >= the window: no padding, and the ROI around the blob is a
    # whole window, so the zoom-in sees the box where the blob is
    "large": Layout((72, 80, 68), ((38, 44, 34), (5, 4, 3)), ((10, 44, 34), (3, 3, 2))),
    # axes below the window (64): padded; zoom-out only, because a single
    # zoom-in window of a small ROI gets its box shifted by the window padding
    # (the official quirk segvol_rt.pipeline.zoom reproduces) - a real model may miss too
    "small": Layout((40, 48, 30), ((27, 14, 19), (5, 4, 3)), ((7, 39, 19), (3, 3, 2))),
}
BRIGHT = 0.5


class FollowBackend(Backend):
    """Graphs with a known answer: bright voxels inside the box (see module doc)."""

    name = "follow"

    def __init__(self, config: SegVolConfig):
        super().__init__(S.graph_specs(config, max_batch=4, max_points=16))
        self.config = config

    def _run(self, graph, feeds):
        if graph == S.IMAGE_ENCODER:
            return {"image_embedding": self._space_to_depth(feeds["image"])}
        if graph == S.PROMPT_DECODER:
            return {"low_res_logits": self._logits(feeds)}
        raise AssertionError("no text in these tests")

    def _space_to_depth(self, image: np.ndarray) -> np.ndarray:
        b = image.shape[0]
        (d, h, w), (pd, ph, pw) = self.config.grid_size, self.config.patch_size
        x = image.reshape(b, d, pd, h, ph, w, pw).transpose(0, 2, 4, 6, 1, 3, 5)
        return np.ascontiguousarray(x.reshape(b, pd * ph * pw, d, h, w), dtype=np.float32)

    def _depth_to_space(self, emb: np.ndarray) -> np.ndarray:
        b = emb.shape[0]
        (d, h, w), (pd, ph, pw) = self.config.grid_size, self.config.patch_size
        x = emb.reshape(b, pd, ph, pw, d, h, w).transpose(0, 4, 1, 5, 2, 6, 3)
        return x.reshape(b, d * pd, h * ph, w * pw)

    def _logits(self, feeds) -> np.ndarray:
        from scipy import ndimage

        image = self._depth_to_space(feeds["image_embedding"])
        out = np.full((image.shape[0], 1, *image.shape[1:]), -4.0, dtype=np.float32)
        for b in range(image.shape[0]):
            labels, coords = list(feeds["prompt_labels"][b]), feeds["prompt_coords"][b]
            if S.LABEL_BOX_MIN not in labels:
                continue
            lo = coords[labels.index(S.LABEL_BOX_MIN)].astype(int)
            hi = coords[labels.index(S.LABEL_BOX_MAX)].astype(int)
            if (lo < 0).any():
                continue  # the official empty box: nothing there
            objects, _ = ndimage.label(image[b] > BRIGHT)
            touched = np.unique(objects[tuple(slice(a, c + 1) for a, c in zip(lo, hi))])
            out[b, 0][np.isin(objects, touched[touched > 0])] = 4.0
        return out


def follow_runtime() -> SegVolRuntime:
    return SegVolRuntime(SimpleNamespace(config=CONFIG), FollowBackend(CONFIG), "follow (fixture)")


# -- scans -------------------------------------------------------------------------


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(linear: np.ndarray, origin=(-20.0, 35.0, 12.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = linear
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "RAS": _affine(np.diag([0.8, 0.8, 2.5])),
    "LPS": _affine(np.diag([-0.8, -0.8, 2.5])),
    # i -> mostly S, j -> mostly L, k -> mostly P, tilted ~15 and ~10 degrees
    "oblique": _affine(
        _rotation(2, 15) @ _rotation(0, 10) @ np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]]) @ np.diag([0.7, 1.1, 3.0])
    ),
}


def ellipsoid(shape, centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (((grid - np.asarray(centre)) / np.asarray(radius)) ** 2).sum(axis=-1) <= 1.0


def write_scan(path, layout: Layout, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise in 0..100 with a blob and a decoy of 1000; returns their masks."""
    blob = ellipsoid(layout.shape, *layout.blob)
    decoy = ellipsoid(layout.shape, *layout.decoy)
    image = np.random.default_rng(3).uniform(0, 100, layout.shape).astype(np.float32)
    image[blob | decoy] = 1000.0
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return blob, decoy


def box_around(mask: np.ndarray, before=(3, 2, 1), after=(6, 4, 2)) -> str:
    """An asymmetric margin, so the box centre is not the blob centre."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - before, 0)
    hi = np.minimum(idx.max(axis=0) + after, np.array(mask.shape) - 1)
    return ",".join(str(int(v)) for v in (*lo, *hi))


# -- the geometry round trip ---------------------------------------------------------


CASES = [("large", True), ("large", False), ("small", False)]


@pytest.mark.parametrize("reorient", [None, "RAS"], ids=["as-stored", "reorient-RAS"])
@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("layout,zoom_in", CASES, ids=["large-zoom-in", "large-zoom-out", "small-padded-zoom-out"])
def test_box_prompt_mask_lands_on_blob(tmp_path, layout, zoom_in, orientation, reorient):
    affine, lay = AFFINES[orientation], LAYOUTS[layout]
    scan = tmp_path / "scan.nii.gz"
    blob, decoy = write_scan(scan, lay, affine)
    opts = InferOptions(box=box_around(blob), reorient=reorient, zoom_in=zoom_in, out=str(tmp_path / "mask.nii.gz"))
    result = run_infer(scan, opts, follow_runtime)

    img = nib.load(str(tmp_path / "mask.nii.gz"))
    mask = np.asarray(img.dataobj).astype(bool)
    assert mask.shape == lay.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert mask.any() and not (mask & decoy).any()
    centroid = np.argwhere(mask).mean(axis=0)
    truth = np.argwhere(blob).mean(axis=0)
    overlap = 2 * np.count_nonzero(mask & blob) / (np.count_nonzero(mask) + np.count_nonzero(blob))
    if zoom_in:  # the windows run at crop resolution: the blob, voxel for voxel
        assert result.targets[0].segmentation.zoom_in_applied
        assert overlap == 1.0 and np.allclose(centroid, truth)
    else:  # through the nearest resizes to the zoom-out window and back: within a zoom-out voxel
        assert np.all(np.abs(centroid - truth) <= zoom_voxel(result.geometry, truth) + 0.5), (centroid, truth)
        assert overlap > 0.3  # a 7-slice blob is ~2 zoom-out slices of the large scan


def zoom_voxel(geometry, at: np.ndarray) -> np.ndarray:
    """Extent of one zoom-out voxel along each scan axis, in scan voxels."""
    steps = at + np.eye(3)
    moved = geometry.points(steps, "scan", "zoom") - geometry.points(at[None], "scan", "zoom")
    return 1.0 / np.abs(moved).max(axis=1)


def test_reorientation_really_changes_the_model_view(tmp_path):
    """Guard against a vacuous test: for LPS, the reoriented model-space image is
    flipped relative to the stored one (so the round trip above was exercised)."""
    scan = tmp_path / "scan.nii.gz"
    write_scan(scan, LAYOUTS["small"], AFFINES["LPS"])
    data = np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32)
    plain, ras = follow_runtime(), follow_runtime()
    plain.set_volume(data, AFFINES["LPS"])
    ras.set_volume(data, AFFINES["LPS"], reorient="RAS")
    assert plain.geometry.reorient is None and ras.geometry.reorient is not None
    assert not np.array_equal(plain.crop_image, ras.crop_image)


def test_point_prompt_maps_to_the_blob(tmp_path):
    """A point on the blob reaches the model at the blob: the coarse decode sees it
    at the zoom-out voxel of that scan voxel (checked by the runtime's own mapping)."""
    scan = tmp_path / "scan.nii.gz"
    lay = LAYOUTS["small"]
    write_scan(scan, lay, AFFINES["oblique"])
    rt = follow_runtime()
    data = np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32)
    rt.set_volume(data, AFFINES["oblique"], reorient="RAS")
    zoom = rt.geometry.scan_to_zoom_index(np.array([lay.blob[0]], dtype=int))[0]
    assert rt.zoom_image[tuple(zoom)] > BRIGHT


# -- the real CT (../shared) -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.support.tiny_artifacts import tiny_artifacts

    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


def test_infer_on_real_ct_with_liver_box(tmp_path, real_ct, real_seg, tiny):
    labels = np.asarray(nib.load(str(real_seg)).dataobj)
    idx = np.argwhere(labels == 5)  # liver
    assert idx.size, "label 5 (liver) missing from example_seg"
    box = ",".join(str(int(v)) for v in (*idx.min(axis=0), *idx.max(axis=0)))
    out = tmp_path / "liver.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "segvol_rt", "infer", str(real_ct), "--box", box, "--text", "liver",
         "--artifacts", str(tiny[0]), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ct = nib.load(str(real_ct))
    mask = nib.load(str(out))
    assert mask.shape == ct.shape
    np.testing.assert_allclose(mask.affine, ct.affine)
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1} and data.any()
