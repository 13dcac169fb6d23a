"""Lazy imports of optional heavy dependencies, with an actionable error.

``import segvol_rt`` needs numpy alone. torch, onnx, cupy, tensorrt and
onnxruntime-gpu are imported only by the code paths that use them, through
:func:`require`, so a missing one names the extra that brings it.

Some dependencies import optional packages of their own that segvol-rt never
uses through them (:data:`_UNUSED_OPTIONAL`); :func:`require` imports them
without those, so that, e.g., reading a NIfTI file does not import pydicom.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

from segvol_rt.errors import MissingDependencyError

# module -> (pip extra, what it is needed for)
_EXTRAS = {
    "torch": ("export", "exporting graphs and the torch reference backend"),
    "onnx": ("export", "writing and checking ONNX graphs"),
    "safetensors": ("export", "reading .safetensors checkpoints"),
    "onnxconverter_common": ("export", "fp16 graphs (export --precision fp16)"),
    "cupy": ("gpu", "the GPU pipeline (CuPy kernels)"),
    "tensorrt": ("trt", "TensorRT engines"),
    "openvino": ("openvino", "the OpenVINO backend"),
    "onnxruntime": ("base install", "the ONNX Runtime backend"),
    "nibabel": ("base install", "reading and writing NIfTI files"),
    "tokenizers": ("base install", "the CLIP tokenizer"),
    "jsonschema": ("base install", "checking the artifacts' manifest.json against its schema"),
    "transformers": ("dev", "reference checks against transformers"),
    "PIL": ("demo", "PNG previews"),
    "pydicom": ("dicom", "reading DICOM series"),
    "highdicom": ("dicom", "writing DICOM SEG files"),
    "dicomweb_client": ("dicom", "DICOMweb (WADO-RS, STOW-RS)"),
    "requests": ("dicom", "DICOMweb (WADO-RS, STOW-RS)"),
    "pytriton": ("serve", "segvol-rt serve (Triton through PyTriton; needs numpy<2, so an environment of its own)"),
    "tritonclient": ("client", "segvol_rt.client and `segvol-rt infer --server`"),
}

# module -> optional packages it imports eagerly when they are installed but segvol-rt never
# uses through it: kept out of its first import (while not imported already), so it does
# without them. nibabel imports pydicom (0.4 s, with requests and tqdm, of a 14 s
# `segvol-rt infer` on a NIfTI CT; 2-core EPYC) only to parse the DICOM header extensions
# (code 2) of NIfTI files, which segvol-rt never reads; without it nibabel keeps their bytes
# (a plain Nifti1Extension), as it does where pydicom is not installed. segvol-rt's DICOM
# reading imports pydicom itself (require("pydicom")).
_UNUSED_OPTIONAL = {"nibabel": ("pydicom",)}
# One import through this module at a time: while a package's unused optional packages are
# kept out, another thread's import of them must wait, not fail.
_import_lock = threading.RLock()


def _import(module: str) -> ModuleType:
    """``importlib.import_module(module)``, keeping :data:`_UNUSED_OPTIONAL` out of a first import."""
    with _import_lock:
        root = module.split(".")[0]
        kept_out = () if root in sys.modules else [m for m in _UNUSED_OPTIONAL.get(root, ()) if m not in sys.modules]
        for name in kept_out:
            sys.modules[name] = None  # type: ignore[assignment]  # the import system's "raise ImportError"
        try:
            return importlib.import_module(module)
        finally:
            for name in kept_out:
                if sys.modules.get(name, False) is None:
                    del sys.modules[name]


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming its extra."""
    try:
        return _import(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra, purpose = _EXTRAS.get(root, ("?", "this feature"))
        if extra == "base install":
            hint = "reinstall segvol-rt: pip install segvol-rt"
        else:
            hint = f"install the extra: pip install 'segvol-rt[{extra}]'"
        raise MissingDependencyError(
            f"{root} is needed for {purpose} but cannot be imported ({exc}); {hint}"
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` imports; never raises."""
    try:
        _import(module)
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True
