"""segvol-rt: a deployment SDK for SegVol (3D promptable CT segmentation).

The public face: :class:`SegVolRuntime` (the stateful API), :class:`Request`
(one target's prompts and options), :class:`Segmentation` (one target's
result) and :class:`SegVolError` (every user error). ``import segvol_rt``
needs numpy and the base dependencies alone; heavy ones (torch, onnx, cupy,
tensorrt) load lazily on the code paths that use them, and the runtime
module itself loads on first use of its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segvol_rt.errors import MissingDependencyError, SegVolError

__version__ = "0.1.0"

__all__ = ["MissingDependencyError", "Request", "SegVolError", "SegVolRuntime", "Segmentation", "__version__"]

_RUNTIME_NAMES = ("SegVolRuntime", "Request", "Segmentation")

if TYPE_CHECKING:  # pragma: no cover
    from segvol_rt.runtime import Request, Segmentation, SegVolRuntime


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        from segvol_rt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'segvol_rt' has no attribute {name!r}")
