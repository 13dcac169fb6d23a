"""Default artifacts: the shipped demo model, exported on demand into a cache.

``segvol-rt infer`` and ``segvol-rt demo`` without ``--artifacts`` use the
demo model of :mod:`segvol_rt.demo_model` (trained on synthetic phantoms, not
for clinical use). Its artifacts are exported the first time they are needed
(this needs the ``export`` extra: torch, onnx) into

    $SEGVOL_RT_CACHE/demo-<sha256 of the weights, 12 hex digits>

(``~/.cache/segvol-rt`` when ``SEGVOL_RT_CACHE`` is unset), so a changed
checkpoint gets a new directory, and later runs only check the hashes.
``SEGVOL_RT_DEMO_ARTIFACTS=DIR`` makes DIR the demo artifacts outright (tests,
machines without torch that were given exported artifacts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import SegVolError

CACHE_ENV = "SEGVOL_RT_CACHE"
DEMO_ARTIFACTS_ENV = "SEGVOL_RT_DEMO_ARTIFACTS"
DEMO_BANNER = "using the demo model (synthetic phantoms, not for clinical use)"
WEIGHTS_FILE = "model.safetensors"

Say = Callable[[str], None]


def cache_root() -> Path:
    """``$SEGVOL_RT_CACHE``, else ``~/.cache/segvol-rt``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segvol-rt"


def demo_cache_dir() -> Path:
    """Where the demo model's artifacts live: ``cache_root()/demo-<sha256[:12]>``."""
    from .artifacts import sha256_file
    from .demo_model import demo_checkpoint_dir

    digest = sha256_file(demo_checkpoint_dir() / WEIGHTS_FILE)
    return cache_root() / f"demo-{digest[:12]}"


def _usable(directory: Path) -> bool:
    """True when ``directory`` holds artifacts whose hashes all match."""
    from .artifacts import MANIFEST, Artifacts

    if not (directory / MANIFEST).is_file():
        return False
    try:
        Artifacts.load(directory).verify()
    except SegVolError:
        return False
    return True


def demo_artifacts(say: Say | None = None) -> Path:
    """The demo model's artifacts directory, exported first if needed.

    Raises :class:`segvol_rt.errors.MissingDependencyError` naming the
    ``export`` extra when an export is needed and torch or onnx is missing."""
    say = say or (lambda _msg: None)
    override = os.environ.get(DEMO_ARTIFACTS_ENV)
    if override:
        return Path(override)
    target = demo_cache_dir()
    if _usable(target):
        return target
    return export_demo(target, say)


def export_demo(target: Path, say: Say | None = None) -> Path:
    """Export the shipped demo checkpoint into ``target`` (replacing a damaged copy)."""
    from ._optional import require
    from .demo_model import demo_checkpoint_dir

    say = say or (lambda _msg: None)
    for module in ("torch", "onnx"):
        require(module)  # the error names the `export` extra
    from .export.exporter import ExportOptions, export_artifacts

    # A light parity check: the shipped model was verified when it was made;
    # this only guards against a broken local torch / onnxruntime pair.
    options = ExportOptions(image_batches=(1,), text_batches=(1,), decoder_batches=(1, 2), point_counts=(1, 5))
    say(f"exporting the demo model into {target} (once; later runs reuse it)")
    export_artifacts(demo_checkpoint_dir(), target, options=options, force=True, progress=say)
    return target
