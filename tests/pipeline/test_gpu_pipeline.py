"""The GPU pipeline (everything on the device from upload to the final mask)
against the CPU pipeline.

* ``emulated``: runs here. The runtime's GPU code path on an emulated cupy
  (tests/support/fake_cupy.py: numpy memory typed as cupy arrays, the CUDA
  kernels on the CPU emulator of tests/support/kernel_emu.py) with the ONNX
  Runtime CPU graphs behind an emulated CUDA backend. Same arithmetic as the CPU path, so masks must be
  identical and logits equal (rel err <= 1e-6). It also counts host/device
  crossings: the scan goes up once; only boxes, text embeddings and the mask
  come down.
* ``gpu``: ONNX Runtime CUDA (IO binding) + cupy + the NVRTC kernels vs the
  CPU pipeline (Dice >= 0.999, differences only at near-zero logits);
  skipped with the reason when onnxruntime-gpu, cupy or a GPU is missing.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model

from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from segvol_rt.errors import SegVolError  # noqa: E402
from segvol_rt.io import spec as S  # noqa: E402
from segvol_rt.io.artifacts import Artifacts  # noqa: E402
from segvol_rt.runtime import Request, SegVolRuntime  # noqa: E402
from tests.support import fake_cupy  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

REL_TOL = 1e-6
# scan (I, J, K) -> crop (K, J, I); zoom-in windows of the tiny model (16, 64, 64)
VOLUMES = {"one_window": ((64, 64, 16), 1), "six_windows": ((150, 160, 40), 6)}
BOX = (0.2, 0.25, 0.2, 0.73, 0.75, 0.75)
POINT_A, POINT_B, NEGATIVE = (0.4, 0.44, 0.5), (0.6, 0.62, 0.62), (0.27, 0.25, 0.25, 0)
PROMPTS = {
    "text": dict(text="liver"),
    "box": dict(box=BOX),
    "points": dict(points=[POINT_A, POINT_B, NEGATIVE]),
    "text+box": dict(text="spleen", box=BOX),
    "text+points": dict(text="a free phrase", points=[POINT_A]),
    "box+points": dict(box=BOX, points=[POINT_A]),
}
SMALL_DOWNLOAD = 1 << 16  # bytes per call besides the outputs: boxes, block sums, histograms


def _scale(prompt: dict, shape: tuple[int, int, int]) -> dict:
    """Fractions of the scan shape -> scan voxel strings."""
    def vox(fractions):
        return [int(f * shape[i % 3]) for i, f in enumerate(fractions)]

    out = dict(prompt)
    if "box" in out:
        out["box"] = ",".join(map(str, vox(out["box"])))
    if "points" in out:
        out["points"] = ";".join(",".join(map(str, vox(p[:3]) + list(p[3:]))) for p in out["points"])
    return out


def _scan(shape, seed=5) -> np.ndarray:
    # Fortran order, as nibabel hands a scan over
    return np.asfortranarray((np.random.default_rng(seed).random(shape) * 1000 - 500).astype(np.float32))


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")


# -- emulated device -------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu_env():
    """(emulated cupy, gpu_ops device on it with the kernel emulator); installed
    only inside :func:`fake_cupy.activated` blocks."""
    cp = fake_cupy.make()
    try:
        device, emu = fake_cupy.gpu_ops_device(cp)
    except Exception as exc:  # noqa: BLE001 - no g++: the emulator cannot be built
        pytest.skip(f"kernel emulator unavailable: {exc}")
    if not emu.available():
        pytest.skip("no g++ on PATH for the CPU emulator of the kernels")
    return cp, device


@pytest.fixture
def emulated(emu_env):
    """The emulated cupy installed as ``cupy`` and gpu_ops running on it, for one test."""
    with fake_cupy.activated(*emu_env) as cp:
        fake_cupy.TRANSFERS.reset()
        yield cp


@pytest.fixture(scope="module")
def pairs(tiny, emu_env):
    """Per volume: (CPU runtime, emulated-GPU runtime) with that volume set;
    their caches carry over between tests, as in a session."""
    out = {}
    with fake_cupy.activated(*emu_env) as cp:
        for name, (shape, _) in VOLUMES.items():
            cpu, gpu = _runtimes(tiny[0], cp)
            for rt in (cpu, gpu):
                rt.set_volume(_scan(shape))
            out[name] = (cpu, gpu)
    return out


def _runtimes(art_dir, cp):
    art = Artifacts.load(art_dir)
    cpu = SegVolRuntime(art, OnnxRuntimeBackend(art, device="cpu"), "cpu")
    gpu = SegVolRuntime(art, fake_cupy.EmulatedCudaBackend(OnnxRuntimeBackend(art, device="cpu"), cp), "emulated cuda")
    return cpu, gpu


def _same_result(a, b) -> None:
    assert type(b.mask) is np.ndarray and b.mask.dtype == np.uint8  # downloaded, not a device array
    assert a.mask.shape == b.mask.shape and np.array_equal(a.mask, b.mask)
    for name in ("roi", "n_windows", "zoom_in_applied", "no_foreground"):
        assert getattr(a, name) == getattr(b, name), name
    if a.crop_logits is not None:
        assert _rel(b.crop_logits, a.crop_logits) <= REL_TOL
    if a.probabilities is not None:
        np.testing.assert_allclose(b.probabilities, a.probabilities, rtol=0, atol=1e-6)


@pytest.mark.parametrize("volume", list(VOLUMES))
@pytest.mark.parametrize("mode", list(PROMPTS))
def test_emulated_gpu_pipeline_matches_cpu(pairs, emulated, volume, mode):
    shape, windows = VOLUMES[volume]
    cpu, gpu = pairs[volume]
    prompt = _scale(PROMPTS[mode], shape)
    want = cpu.segment(**prompt, seed=11, keep_logits=True)
    got = gpu.segment(**prompt, seed=11, keep_logits=True)
    assert got.zoom_in_applied and got.n_windows == windows
    _same_result(want, got)


@pytest.mark.parametrize("mode", ["box", "points", "box+points"])
def test_emulated_gpu_pipeline_matches_cpu_with_aligned_window_prompts(pairs, emulated, mode):
    """A scan smaller than a window, where the aligned placement changes the window prompts."""
    shape, _ = VOLUMES["one_window"]
    cpu, gpu = pairs["one_window"]
    prompt = _scale(PROMPTS[mode], shape)
    want = cpu.segment(**prompt, seed=11, keep_logits=True, window_prompts="aligned")
    got = gpu.segment(**prompt, seed=11, keep_logits=True, window_prompts="aligned")
    assert got.zoom_in_applied
    _same_result(want, got)
    official = cpu.segment(**prompt, seed=11, keep_logits=True)
    assert not np.array_equal(official.crop_logits, want.crop_logits)  # the placement matters here


def test_emulated_several_targets_share_work_and_match_cpu(tiny, emulated):
    shape = VOLUMES["six_windows"][0]
    cpu, gpu = _runtimes(tiny[0], emulated)
    scan = _scan(shape, seed=7)
    for rt in (cpu, gpu):
        rt.set_volume(scan)
    targets = [
        Request(text="liver", probabilities=True, keep_logits=True),
        Request(**_scale(dict(box=BOX), shape), keep_logits=True),
        Request(**_scale(dict(text="kidney", points=[POINT_A, POINT_B]), shape), seed=3),
        Request(text="spleen", zoom_in=False, keep_logits=True),
    ]
    for a, b in zip(cpu.segment_many(targets), gpu.segment_many(targets)):
        _same_result(a, b)
    calls = gpu.backend.calls
    # one zoom-out encoding for all targets; windows shared across targets, batches of the spec's max
    limit = gpu._max_batch(S.IMAGE_ENCODER)
    assert calls[S.IMAGE_ENCODER][0] == 1 and all(n <= limit for n in calls[S.IMAGE_ENCODER])
    assert sum(calls[S.IMAGE_ENCODER][1:]) == gpu.stats["windows_encoded"] == 6
    assert max(calls[S.PROMPT_DECODER]) > 1  # the decoder ran batched


def test_emulated_reoriented_scan_matches_cpu(tiny, emulated):
    """RAS reorientation with flips: preprocessing views and scan_mask's flips on the device."""
    shape = (70, 60, 20)
    affine = np.diag([-1.5, 1.0, -2.0, 1.0])
    cpu, gpu = _runtimes(tiny[0], emulated)
    scan = _scan(shape, seed=9)
    for rt in (cpu, gpu):
        rt.set_volume(scan, affine, reorient="RAS")
    prompt = _scale(dict(text="liver", box=BOX), shape)
    _same_result(cpu.segment(**prompt, keep_logits=True, probabilities=True),
                 gpu.segment(**prompt, keep_logits=True, probabilities=True))


@pytest.mark.parametrize("orientation,reorient", [("RAS", None), ("LPS", "RAS")])
def test_emulated_phantom_matches_cpu(tiny, emulated, orientation, reorient):
    """A synthetic CT (int16, Fortran order) whose foreground crop is a strict
    part of the scan: the crop origin, and flips when reoriented, in scan_mask."""
    from segvol_rt.demo.phantom import make_phantom

    ph = make_phantom(0, (96, 96, 48), orientation=orientation)
    cpu, gpu = _runtimes(tiny[0], emulated)
    for rt in (cpu, gpu):
        rt.set_volume(ph.image, ph.affine, reorient=reorient)
    assert gpu.geometry.crop_box != (0, 0, 0, *(n - 1 for n in gpu.geometry.model_shape))
    idx = np.argwhere(ph.mask("liver"))
    box = ",".join(str(int(v)) for v in [*idx.min(axis=0), *idx.max(axis=0)])
    targets = [Request(text="liver", box=box, keep_logits=True), Request(text="spleen", keep_logits=True)]
    for a, b in zip(cpu.segment_many(targets), gpu.segment_many(targets)):
        _same_result(a, b)


def test_emulated_pipeline_stays_on_the_device(tiny, emulated):
    """The scan goes up once; per call only small arrays and the mask come down."""
    shape = VOLUMES["six_windows"][0]
    _, gpu = _runtimes(tiny[0], emulated)
    scan = _scan(shape)
    t = fake_cupy.TRANSFERS
    gpu.set_volume(scan)
    assert max(t.uploads) == scan.nbytes and sum(t.uploads) < scan.nbytes + SMALL_DOWNLOAD
    assert sum(t.downloads) < SMALL_DOWNLOAD  # statistics, boxes: no volume
    vol = gpu._volume
    assert isinstance(vol.crop_image, fake_cupy.DeviceArray) and isinstance(vol.zoom_image, fake_cupy.DeviceArray)

    prompt = _scale(dict(text="liver", box=BOX), shape)
    t.reset()
    seg = gpu.segment(**prompt)
    mask_bytes = int(np.prod(shape))
    assert max(t.downloads) == mask_bytes and sum(t.downloads) < mask_bytes + SMALL_DOWNLOAD
    assert sum(t.uploads) < SMALL_DOWNLOAD  # prompts, text rows, window starts
    assert isinstance(vol.zoom_embedding, fake_cupy.DeviceArray)
    assert all(isinstance(e, fake_cupy.DeviceArray) for e in vol.windows.embeddings.values())
    assert t.syncs > 0  # stage ends wait for the device

    t.reset()
    kept = gpu.segment(**prompt, on_device=True, keep_logits=True, probabilities=True)
    assert sum(t.downloads) < SMALL_DOWNLOAD
    for arr in (kept.mask, kept.probabilities, kept.crop_logits):
        assert isinstance(arr, fake_cupy.DeviceArray)
    assert np.array_equal(kept.mask.get(), seg.mask)

    stats = gpu.stats
    assert stats["device"] == "cuda" and stats["peak_gpu_pool_bytes"] > 0 and stats["peak_gpu_device_bytes"] > 0
    assert isinstance(gpu.crop_image, np.ndarray) and not isinstance(gpu.crop_image, fake_cupy.DeviceArray)


def test_emulated_device_volume_input(tiny, emulated):
    """A scan already on the device is used as it is (no upload)."""
    shape = VOLUMES["one_window"][0]
    cpu, gpu = _runtimes(tiny[0], emulated)
    scan = _scan(shape)
    on_device = emulated.asarray(scan)
    fake_cupy.TRANSFERS.reset()
    gpu.set_volume(on_device)
    assert sum(fake_cupy.TRANSFERS.uploads) < SMALL_DOWNLOAD
    cpu.set_volume(scan)
    _same_result(cpu.segment(text="liver", keep_logits=True), gpu.segment(text="liver", keep_logits=True))


def test_cpu_runtime_reports_no_gpu_memory(tiny):
    art = Artifacts.load(tiny[0])
    rt = SegVolRuntime(art, OnnxRuntimeBackend(art, device="cpu"), "cpu")
    rt.set_volume(_scan(VOLUMES["one_window"][0]))
    seg = rt.segment(text="liver", on_device=True)  # no effect on the host
    assert isinstance(seg.mask, np.ndarray)
    stats = rt.stats
    assert stats["device"] == "cpu"
    assert stats["peak_gpu_pool_bytes"] is None and stats["peak_gpu_device_bytes"] is None


# -- backend selection ----------------------------------------------------------------------


def test_cuda_selects_the_io_binding_backend(tiny, monkeypatch):
    """device="cuda" opens OrtCudaBackend (not the host-numpy ORT session)."""
    from segvol_rt.backends import cuda_common, ort_cuda, select
    from segvol_rt.backends import onnxruntime as ort_backend

    opened = []

    class FakeOrtCuda:
        name, device = "onnxruntime", "cuda"

        def __init__(self, artifacts, precision="fp32"):
            self.precision = precision
            opened.append(artifacts)

    monkeypatch.setattr(cuda_common, "gpu_problem", lambda: None)
    monkeypatch.setattr(ort_backend, "cuda_problem", lambda ort=None: None)
    monkeypatch.setattr(ort_cuda, "OrtCudaBackend", FakeOrtCuda)
    art = Artifacts.load(tiny[0])
    backend, reason = select.open_backend(art, "onnxruntime", "cuda")
    assert isinstance(backend, FakeOrtCuda) and opened and reason == "onnxruntime on CUDA (fp32): requested"
    backend, reason = select.open_backend(art, "auto", "cuda")
    assert isinstance(backend, FakeOrtCuda) and reason.startswith("onnxruntime on CUDA (fp32): no TensorRT engines")


def test_cuda_without_cupy_names_the_gpu_extra(tiny, monkeypatch):
    from segvol_rt.backends import cuda_common, select
    from segvol_rt.backends import onnxruntime as ort_backend

    monkeypatch.setattr(cuda_common, "gpu_problem", lambda: None)
    monkeypatch.setattr(ort_backend, "cuda_problem", lambda ort=None: None)
    monkeypatch.setitem(sys.modules, "cupy", None)
    art = Artifacts.load(tiny[0])
    with pytest.raises(SegVolError, match=r"segvol-rt\[gpu\]"):
        select.open_backend(art, "onnxruntime", "cuda")
    backend, reason = select.open_backend(art, "auto", "auto")
    assert backend.device == "cpu" and "segvol-rt[gpu]" in reason
    backend, reason = select.open_backend(art, "onnxruntime", "auto")
    assert backend.device == "cpu" and "cupy is not installed" in reason


def test_cuda_without_a_gpu_says_so(tiny, monkeypatch):
    from segvol_rt.backends import cuda_common, select

    monkeypatch.setattr(cuda_common, "gpu_problem", lambda: "no CUDA device")
    with pytest.raises(SegVolError, match=r"device='cuda': no CUDA device.*--device cpu"):
        select.open_backend(Artifacts.load(tiny[0]), "auto", "cuda")


# -- real GPU -------------------------------------------------------------------------------


def _gpu_stack_or_skip():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (onnxruntime-gpu: the [gpu] extra)")
    from segvol_rt.backends.cuda_common import require_cupy

    try:
        return require_cupy(0)
    except SegVolError as exc:
        pytest.skip(f"no CuPy/GPU: {exc}")


def _dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["text", "box", "points", "text+box"])
def test_gpu_ort_cuda_pipeline_matches_cpu(tiny, mode):
    cp = _gpu_stack_or_skip()
    shape = VOLUMES["six_windows"][0]
    gpu = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cuda")
    cpu = SegVolRuntime.load(tiny[0], backend="onnxruntime", device="cpu")
    assert gpu.backend.xp is cp and gpu.backend_reason.startswith("onnxruntime on CUDA")
    scan = _scan(shape)
    for rt in (cpu, gpu):
        rt.set_volume(scan)
    assert isinstance(gpu._volume.crop_image, cp.ndarray)
    prompt = _scale(PROMPTS[mode], shape)
    a = cpu.segment(**prompt, seed=11, keep_logits=True)
    b = gpu.segment(**prompt, seed=11, keep_logits=True)
    assert isinstance(b.mask, np.ndarray) and b.mask.shape == a.mask.shape
    assert _dice(a.mask, b.mask) >= 0.999
    # masks identical up to ties: any differing voxel has a logit near 0 (TF32/float order on the GPU)
    scale = np.abs(a.crop_logits).max()
    assert _rel(b.crop_logits, a.crop_logits) <= 1e-2
    differ = np.asarray(gpu.geometry.crop_to_scan(np.abs(a.crop_logits) < 1e-3 * scale, fill=True))
    assert not np.any((a.mask != b.mask) & ~differ)
    stats = gpu.stats
    assert stats["device"] == "cuda" and stats["peak_gpu_device_bytes"] > 0
    on_device = gpu.segment(**prompt, seed=11, on_device=True)
    assert isinstance(on_device.mask, cp.ndarray) and np.array_equal(cp.asnumpy(on_device.mask), b.mask)
