"""segvol-rt: a deployment SDK for SegVol (3D promptable CT segmentation).

``import segvol_rt`` needs numpy alone; heavy dependencies (torch, cupy,
tensorrt, onnxruntime) load lazily on the code paths that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segvol_rt.errors import MissingDependencyError, SegVolError

__version__ = "0.1.0"

__all__ = ["SegVolError", "MissingDependencyError", "SegVolRuntime", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from segvol_rt.runtime import SegVolRuntime


def __getattr__(name: str) -> Any:
    if name == "SegVolRuntime":
        from segvol_rt.runtime import SegVolRuntime

        return SegVolRuntime
    raise AttributeError(name)
