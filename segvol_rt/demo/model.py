"""The demo model shipped inside the package, and where its exported artifacts
are cached: a small SegVol trained on the synthetic phantoms of
:mod:`segvol_rt.demo.phantom` (see ``assets/demo/TRAINING.md``
and :mod:`segvol_rt.export.demo_training.training`), so ``segvol-rt demo`` and the
end-to-end tests run without downloading the released weights.

It is a checkpoint directory in the official Hugging Face layout
(``config.json`` with ``segvol_rt_config``, ``model.safetensors``,
``tokenizer.json``), exported like any SegVol checkpoint. It only knows the
phantom organs (:data:`segvol_rt.demo.phantom.PHANTOM_LABELS`); never use it on
real scans. No torch here: this module only locates the files.

Its exported artifacts ship in the package too (``assets/demo/artifacts``,
written by ``python -m segvol_rt.export.demo_training.ship``), so a runtime-only
install needs no torch. They are used when their manifest names the shipped
checkpoint's sha256 and every hash matches. Otherwise (a retrained or replaced
checkpoint) the artifacts are exported the first time they are needed (the
``export`` extra: torch, onnx; see :func:`segvol_rt.app.console.demo_artifacts`) into

    $SEGVOL_RT_CACHE/demo-<sha256 of the weights, 12 hex digits>

(``~/.cache/segvol-rt`` when ``SEGVOL_RT_CACHE`` is unset), so a changed
checkpoint gets a new directory, and later runs only check the hashes.
``SEGVOL_RT_DEMO_ARTIFACTS=DIR`` makes DIR the demo artifacts outright.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from segvol_rt.errors import SegVolError
from segvol_rt.io import user_cache

CACHE_ENV = user_cache.CACHE_ENV
DEMO_ARTIFACTS_ENV = "SEGVOL_RT_DEMO_ARTIFACTS"
DEMO_BANNER = "using the demo model (synthetic phantoms, not for clinical use)"
WEIGHTS_FILE = "model.safetensors"
DEMO_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _assets() -> Path:
    return Path(str(resources.files("segvol_rt").joinpath("assets", "demo")))


def shipped_artifacts_dir() -> Path:
    """Where the package keeps the demo model's exported artifacts."""
    return _assets() / "artifacts"


def demo_checkpoint_dir() -> Path:
    """Directory of the shipped demo checkpoint (Hugging Face layout).

    Raises SegVolError when the package was installed without its data files
    or from a zip (the directory must exist on disk)."""
    path = _assets()
    missing = [name for name in DEMO_FILES if not (path / name).is_file()]
    if missing:
        raise SegVolError(
            f"the demo model is incomplete at {path} (missing {', '.join(missing)}); "
            "reinstall segvol-rt with its package data"
        )
    return path



def cache_root() -> Path:
    """``$SEGVOL_RT_CACHE``, else ``~/.cache/segvol-rt`` (:func:`segvol_rt.io.user_cache.cache_root`)."""
    return user_cache.cache_root()


def demo_cache_dir() -> Path:
    """Where the demo model's artifacts live: ``cache_root()/demo-<sha256[:12]>``."""
    from segvol_rt.io.digests import sha256_file

    digest = sha256_file(demo_checkpoint_dir() / WEIGHTS_FILE)
    return cache_root() / f"demo-{digest[:12]}"


def usable_artifacts(directory: Path, checkpoint_sha256: str | None = None) -> bool:
    """True when ``directory`` holds artifacts whose hashes all match (and,
    with ``checkpoint_sha256``, that were exported from that checkpoint)."""
    from segvol_rt.io.artifacts import MANIFEST, Artifacts

    if not (directory / MANIFEST).is_file():
        return False
    try:
        artifacts = Artifacts.load(directory)
        artifacts.verify()
    except SegVolError:
        return False
    exported_from = (artifacts.manifest.get("checkpoint") or {}).get("sha256")
    return checkpoint_sha256 is None or exported_from == checkpoint_sha256


def cached_demo_artifacts() -> Path | None:
    """``$SEGVOL_RT_DEMO_ARTIFACTS``; else the shipped artifacts when they were
    exported from the shipped checkpoint; else the cache directory when it
    holds verified artifacts; else None (an export is needed)."""
    from segvol_rt.io.digests import sha256_file

    override = os.environ.get(DEMO_ARTIFACTS_ENV)
    if override:
        return Path(override)
    weights = sha256_file(demo_checkpoint_dir() / WEIGHTS_FILE)
    if usable_artifacts(shipped_artifacts_dir(), weights):
        return shipped_artifacts_dir()
    target = cache_root() / f"demo-{weights[:12]}"
    return target if usable_artifacts(target) else None
