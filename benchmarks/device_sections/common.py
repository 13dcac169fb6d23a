"""What the sections of benchmarks/device_check.py share: the device under
test (CuPy and the NVRTC kernels, or numpy and the CPU emulator), timing with
CUDA events, memory high-water marks, and comparisons (bitwise, in ulp
against float64, Dice).

Each section runs in its own process; a section's ``run(ctx)`` returns a
JSON-able dict whose ``ok`` says whether every check it made passed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

#: The official-style torch pipeline and the benchmark model, by module name:
#: the one place to change when the export package is re-laid.
REFERENCE_MODULE = "segvol_rt.export.reference.bench"
BENCH_MODEL_MODULE = "segvol_rt.export.reference.bench_model"
OFFICIAL_FLOW_MODULE = "segvol_rt.export.reference.official"

#: the demo model's graphs (fp32 and fp16), shipped in the tracked tree
DEMO_ARTIFACTS = ROOT / "segvol_rt" / "assets" / "demo" / "artifacts"

#: the smallest normal float32 (below it the GPU flushes: -ftz=true)
F32_TINY = float(np.finfo(np.float32).tiny)


def reference_module(name: str = REFERENCE_MODULE) -> Any:
    return importlib.import_module(name)


@dataclass
class Context:
    """What the driver hands a section: sizes, where to write scratch files, the
    preflight's findings and the other sections' results so far."""

    small: bool
    emulate: bool
    work: Path
    preflight: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    artifacts: Path = DEMO_ARTIFACTS


def load_support(name: str) -> Any:
    """``tests/support/<name>.py`` (the fake cupy, the kernel emulator) as a module."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"tests.support.{name}")


class Env:
    """The device under test: cupy + the NVRTC kernels, or numpy + the CPU
    emulator of the kernels (which flushes subnormals as the GPU does)."""

    def __init__(self, emulate: bool):
        from segvol_rt.ops import cuda as gpu_ops

        self.emulated = emulate
        if emulate:
            self.cupy = None
            self.device = load_support("kernel_emu").backend(poison=True)
        else:
            import cupy

            from segvol_rt import kernels

            self.cupy = cupy
            self.device = gpu_ops.Device(xp=cupy, kernel=kernels.function, to_host=cupy.asnumpy, poison=True)
        self.xp = self.device.xp

    def put(self, a: np.ndarray) -> Any:
        return self.xp.array(a, copy=True, order="K")

    def get(self, a: Any) -> np.ndarray:
        return np.asarray(self.device.to_host(a))

    def sync(self) -> None:
        """Wait for the device after every check, so that an asynchronous fault is
        blamed on the check that caused it."""
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()

    def free(self) -> None:
        """Give the pools back between sections."""
        if self.cupy is not None:
            self.sync()
            self.cupy.get_default_memory_pool().free_all_blocks()
            self.cupy.get_default_pinned_memory_pool().free_all_blocks()


# -- timing and memory ----------------------------------------------------------------


def synchronize() -> None:
    """Wait for CuPy's and torch's queued GPU work, where loaded."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and hasattr(cupy, "cuda") and hasattr(cupy.cuda, "Device"):
        with contextlib.suppress(Exception):  # the fake cupy has no device to wait for
            cupy.cuda.Device().synchronize()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _event_pair() -> tuple[Any, Any, Callable[[Any, Any], float]] | None:
    """(start, end, elapsed ms) CUDA events of CuPy, where a GPU is in use."""
    cupy = sys.modules.get("cupy")
    if cupy is None or not hasattr(cupy.cuda, "Event"):
        return None
    return cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.get_elapsed_time


def time_ms(fn: Callable[[], Any], repeat: int = 10, warmup: int = 2) -> dict[str, Any]:
    """``warmup`` untimed calls, then ``repeat`` timed ones: CUDA events around
    each call on the current stream (host work inside the call counts, and the
    end event is waited for), wall time where no GPU is in use."""
    for _ in range(warmup):
        fn()
    synchronize()
    samples = []
    for _ in range(repeat):
        events = _event_pair()
        if events is None:
            t0 = time.perf_counter()
            fn()
            synchronize()
            samples.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end, elapsed = events
        start.record()
        fn()
        end.record()
        end.synchronize()
        synchronize()
        samples.append(float(elapsed(start, end)))
    return {"median_ms": statistics.median(samples), "p90_ms": float(np.percentile(samples, 90)),
            "min_ms": min(samples), "n": repeat, "warmup": warmup, "timer": "wall" if _event_pair() is None else "cuda events"}


def memory_reset() -> None:
    """Free the pools and reset the high-water marks before a measurement."""
    synchronize()
    cupy = sys.modules.get("cupy")
    if cupy is not None and hasattr(cupy, "get_default_memory_pool"):
        pool = cupy.get_default_memory_pool()
        if hasattr(pool, "free_all_blocks"):
            pool.free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_peaks() -> dict[str, Any]:
    """torch's ``max_memory_allocated``, CuPy's pool (bytes it holds now: a
    high-water mark, since it is only freed by :func:`memory_reset`) and the
    device-wide used memory (``cudaMemGetInfo``, ORT's arena included)."""
    out: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_max_allocated_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    cupy = sys.modules.get("cupy")
    if cupy is not None and hasattr(cupy, "get_default_memory_pool"):
        out["cupy_pool_held_MiB"] = cupy.get_default_memory_pool().total_bytes() / 2**20
        try:
            free, total = cupy.cuda.runtime.memGetInfo()
            out["device_used_MiB"] = (total - free) / 2**20
        except Exception as exc:  # noqa: BLE001
            out["device_used_MiB"] = f"unavailable: {exc}"
    return out


# -- comparisons -------------------------------------------------------------------------


def bitwise(got: Any, ref: Any) -> dict[str, Any]:
    """Exact comparison (NaN equals NaN); mismatch count and max abs error."""
    if not hasattr(ref, "dtype"):
        return {"ok": got == ref, "got": str(got), "ref": str(ref)}
    g, r = np.asarray(got), np.asarray(ref)
    if g.shape != r.shape or g.dtype != r.dtype:
        return {"ok": False, "why": f"shape/dtype {g.shape} {g.dtype} vs {r.shape} {r.dtype}"}
    equal = g == r
    if g.dtype.kind == "f":
        equal |= np.isnan(g) & np.isnan(r)
    bad = int(equal.size - np.count_nonzero(equal))
    diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
    diff[equal] = 0
    return {"ok": bad == 0, "mismatches": bad, "max_abs_err": float(np.nanmax(diff)) if diff.size else 0.0}


def ulp_vs_float64(values: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Distance in float32 ulp of float32 ``values`` from the float64 ``exact``
    (ulp of the exact value's float32 binade). Below the smallest normal the
    unit is the smallest normal itself: there float32's ``1 / (1 + exp(-x))``
    underflows (``exp`` overflows near x = -88.7) and the GPU flushes, so the
    question is only whether the result is about zero."""
    v = np.asarray(values, np.float64)
    e = np.asarray(exact, np.float64)
    ulp = np.spacing(np.abs(e).astype(np.float32)).astype(np.float64)
    ulp = np.where(np.abs(e) < F32_TINY, F32_TINY, ulp)
    return np.abs(v - e) / ulp


def sigmoid_ulp(got: np.ndarray, twin: np.ndarray, logits: np.ndarray, limit: float = 3.0) -> dict[str, Any]:
    """The sigmoid check: the device's float32 and the NumPy twin's each within
    ``limit`` ulp of the float64 sigmoid (they need not agree with each other:
    numpy's and CUDA's expf differ by up to about 2 ulp each); see
    :func:`ulp_vs_float64` below the smallest normal."""
    x = np.asarray(logits, np.float64)
    exact = 1.0 / (1.0 + np.exp(-x))
    flushed = (np.abs(exact) < F32_TINY) & (np.asarray(got) == 0)
    dev = ulp_vs_float64(got, exact)
    host = ulp_vs_float64(twin, exact)
    out = {"max_ulp_device": float(dev.max()), "max_ulp_twin": float(host.max()), "limit_ulp": limit,
           "values": int(x.size), "flushed_subnormal_results": int(flushed.sum())}
    out["ok"] = bool(out["max_ulp_device"] <= limit and out["max_ulp_twin"] <= limit)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def error(exc: BaseException) -> dict[str, Any]:
    """A failed check's record: the exception in one line and the traceback's tail."""
    import traceback

    return {"ok": False, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:500],
            "trace": traceback.format_exc()[-2000:]}
