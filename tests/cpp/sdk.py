"""The C++ SDK from the Python tests: building it once per session
(``cpp/build.sh``) and calling its C ABI and test hooks through ctypes.

Volumes cross as the C ABI defines them: (I, J, K) with i fastest, i.e. the
bytes of a Fortran-ordered array (as nibabel loads scans); masks come back
the same way.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "cpp" / "build.sh"
HEADER = ROOT / "cpp" / "include" / "segvol_rt" / "segvol_rt.h"
DTYPES = {"uint8": 1, "int8": 2, "uint16": 3, "int16": 4, "uint32": 5, "int32": 6, "int64": 7, "float32": 8, "float64": 9}
BUFFER_TOO_SMALL = 9


def header_define(name: str) -> str:
    """The value of ``#define name value`` in the C header (its one definition)."""
    for line in HEADER.read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["#define", name] and len(parts) >= 3:
            return parts[2].strip('"')
    raise AssertionError(f"{name} is not defined in {HEADER}")


ABI_VERSION = int(header_define("SEGVOL_RT_ABI_VERSION"))
SONAME = f"libsegvol_rt.so.{ABI_VERSION}"


def missing_toolchain() -> str | None:
    """Why the C++ SDK cannot be built here, or None."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH: the C++ SDK cannot be built here"
    return None


def build_dir() -> Path:
    return Path(os.environ.get("SEGVOL_RT_CPP_BUILD", ROOT / "cpp" / "build"))


def build(directory: Path | None = None, *cmake_args: str) -> Path:
    """Run cpp/build.sh (installs, configure, build, ctest) and return the build directory."""
    out = directory or build_dir()
    run = subprocess.run(["bash", str(BUILD_SCRIPT), str(out), *cmake_args], capture_output=True, text=True)
    if run.returncode != 0:
        raise AssertionError(f"cpp/build.sh failed ({run.returncode}):\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}")
    return out


class Target(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32), ("text", ctypes.c_char_p), ("box", ctypes.POINTER(ctypes.c_int64)),
        ("points", ctypes.POINTER(ctypes.c_int64)), ("n_points", ctypes.c_size_t), ("zoom_in", ctypes.c_int32),
        ("window_prompts", ctypes.c_int32), ("seed", ctypes.c_uint64),
    ]


class LoadOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32), ("backend", ctypes.c_char_p), ("device", ctypes.c_char_p),
        ("threads", ctypes.c_int32), ("precision", ctypes.c_char_p), ("ort_library", ctypes.c_char_p),
        ("verify", ctypes.c_int32), ("cache_bytes", ctypes.c_uint64), ("openvino_library", ctypes.c_char_p),
        ("reorient", ctypes.c_char_p),
    ]


class ResultInfo(ctypes.Structure):
    _fields_ = [("roi", ctypes.c_int64 * 6), ("n_windows", ctypes.c_int32), ("zoom_in_applied", ctypes.c_int32),
                ("no_foreground", ctypes.c_int32)]


@dataclass
class CppResult:
    mask: np.ndarray  # uint8 (I, J, K)
    probabilities: np.ndarray | None
    roi: tuple[int, ...] | None
    n_windows: int
    zoom_in_applied: bool
    no_foreground: bool


class SdkError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"[{status}] {message}")
        self.status = status
        self.message = message


class CppRuntime:
    """libsegvol_rt through its C ABI."""

    def __init__(self, build: Path, artifacts: Path, threads: int = 0, **options: Any):
        lib = ctypes.CDLL(str(build / SONAME))
        lib.segvol_create.restype = ctypes.c_void_p
        lib.segvol_last_error.restype = ctypes.c_char_p
        lib.segvol_last_error.argtypes = []
        lib.segvol_backend.restype = ctypes.c_char_p
        lib.segvol_backend.argtypes = [ctypes.c_void_p]
        lib.segvol_compiled_graphs.restype = ctypes.c_char_p
        lib.segvol_compiled_graphs.argtypes = [ctypes.c_void_p]
        lib.segvol_destroy.argtypes = [ctypes.c_void_p]
        lib.segvol_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(LoadOptions)]
        lib.segvol_set_volume.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                          ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double)]
        lib.segvol_segment.argtypes = [ctypes.c_void_p, ctypes.POINTER(Target), ctypes.c_size_t,
                                       ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                       ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ResultInfo)]
        lib.segvol_release_volume.argtypes = [ctypes.c_void_p]
        lib.segvol_windows_encoded.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)]
        self.lib = lib
        self.h = lib.segvol_create()
        opts = LoadOptions()
        lib.segvol_load_options_init(ctypes.byref(opts))
        opts.threads = threads
        for k, v in options.items():
            setattr(opts, k, v.encode() if isinstance(v, str) else v)
        self._check(lib.segvol_load(self.h, str(artifacts).encode(), ctypes.byref(opts)))
        self.shape: tuple[int, int, int] | None = None

    def _check(self, status: int) -> None:
        if status != 0:
            raise SdkError(status, self.lib.segvol_last_error().decode())

    def close(self) -> None:
        if self.h:
            self.lib.segvol_destroy(self.h)
            self.h = None

    def set_volume(self, volume: np.ndarray, affine: np.ndarray | None = None) -> None:
        vol = np.asfortranarray(volume)
        dims = (ctypes.c_int64 * 3)(*vol.shape)
        aff = None if affine is None else (ctypes.c_double * 16)(*np.asarray(affine, np.float64).reshape(-1))
        self._check(self.lib.segvol_set_volume(self.h, vol.ctypes.data, vol.nbytes, DTYPES[vol.dtype.name], dims, aff))
        self.shape = vol.shape

    def release_volume(self) -> None:
        self._check(self.lib.segvol_release_volume(self.h))
        self.shape = None

    def windows_encoded(self) -> int:
        n = ctypes.c_uint64()
        self._check(self.lib.segvol_windows_encoded(self.h, ctypes.byref(n)))
        return int(n.value)

    def segment_many(self, requests: Sequence[dict[str, Any]], probabilities: bool = False) -> list[CppResult]:
        assert self.shape is not None
        n = len(requests)
        targets = (Target * n)()
        keep = []
        masks = [np.zeros(self.shape, np.uint8, order="F") for _ in range(n)]
        probs = [np.zeros(self.shape, np.float32, order="F") for _ in range(n)] if probabilities else []
        for t, r in zip(targets, requests):
            self.lib.segvol_target_init(ctypes.byref(t))
            if r.get("text") is not None:
                t.text = r["text"].encode()
            if r.get("box") is not None:
                box = (ctypes.c_int64 * 6)(*[int(v) for v in r["box"]])
                keep.append(box)
                t.box = box
            if r.get("points") is not None:
                pts = [(*p[:3], p[3] if len(p) > 3 else 1) for p in r["points"]]
                arr = (ctypes.c_int64 * (4 * len(pts)))(*[int(v) for p in pts for v in p])
                keep.append(arr)
                t.points = arr
                t.n_points = len(pts)
            t.zoom_in = int(r.get("zoom_in", True))
            t.window_prompts = 1 if r.get("window_prompts", "official") == "aligned" else 0
            t.seed = int(r.get("seed", 0))
        mptr = (ctypes.c_void_p * n)(*[m.ctypes.data for m in masks])
        pptr = (ctypes.c_void_p * n)(*[p.ctypes.data for p in probs]) if probabilities else None
        info = (ResultInfo * n)()
        dims = (ctypes.c_int64 * 3)()
        capacity = int(np.prod(self.shape))
        self._check(self.lib.segvol_segment(self.h, targets, n, mptr, pptr, capacity, dims, info))
        assert tuple(dims) == self.shape
        out = []
        for i in range(n):
            roi = tuple(info[i].roi) if info[i].zoom_in_applied else None
            out.append(CppResult(masks[i], probs[i] if probabilities else None, roi, info[i].n_windows,
                                 bool(info[i].zoom_in_applied), bool(info[i].no_foreground)))
        return out


def hooks(build: Path) -> ctypes.CDLL:
    """libsegvol_rt_testing: the host logic behind small C entry points (tests only)."""
    return ctypes.CDLL(str(build / "tests" / "libsegvol_rt_testing.so"))
