"""Lazy imports of optional heavy dependencies, with an actionable error.

``import segvol_rt`` needs numpy alone. torch, onnx, cupy, tensorrt and
onnxruntime-gpu are imported only by the code paths that use them, through
:func:`require`, so a missing one names the extra that brings it.
"""

from __future__ import annotations

import importlib
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


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming its extra."""
    try:
        return importlib.import_module(module)
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
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True
