"""segvol-rt: a deployment SDK for SegVol (3D promptable CT segmentation).

The public face: :class:`SegVolRuntime` (the stateful API), :class:`Request`
(one target's prompts and options), :class:`Segmentation` (one target's
result) and :class:`SegVolError` (every user error). ``import segvol_rt``
needs numpy and the base dependencies alone; heavy ones (torch, onnx, cupy,
tensorrt) load lazily on the code paths that use them, and the runtime
(:mod:`segvol_rt.runtime`) and the shared types (:mod:`segvol_rt.types`)
load on first use of their names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segvol_rt._version import __version__
from segvol_rt.errors import MissingDependencyError, SegVolError

__all__ = ["MissingDependencyError", "Request", "SegVolError", "SegVolRuntime", "Segmentation", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from segvol_rt.runtime import SegVolRuntime
    from segvol_rt.types import Request, Segmentation


def __getattr__(name: str) -> Any:
    if name == "SegVolRuntime":
        from segvol_rt.runtime import SegVolRuntime

        return SegVolRuntime
    if name in ("Request", "Segmentation"):
        from segvol_rt import types

        return getattr(types, name)
    raise AttributeError(f"module 'segvol_rt' has no attribute {name!r}")
