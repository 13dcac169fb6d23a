"""The demo model shipped inside the package: a small SegVol trained on the
synthetic phantoms of :mod:`segvol_rt.phantom` (see ``assets/demo/TRAINING.md``
and :mod:`segvol_rt.export.demo_training`), so ``segvol-rt demo`` and the
end-to-end tests run without downloading the released weights.

It is a checkpoint directory in the official Hugging Face layout
(``config.json`` with ``segvol_rt_config``, ``model.safetensors``,
``tokenizer.json``), exported like any SegVol checkpoint. It only knows the
phantom organs (:data:`segvol_rt.phantom.PHANTOM_LABELS`); never use it on
real scans. No torch here: this module only locates the files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import SegVolError

DEMO_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def demo_checkpoint_dir() -> Path:
    """Directory of the shipped demo checkpoint (Hugging Face layout).

    Raises SegVolError when the package was installed without its data files
    or from a zip (the directory must exist on disk)."""
    root = resources.files("segvol_rt").joinpath("assets", "demo")
    path = Path(str(root))
    missing = [name for name in DEMO_FILES if not (path / name).is_file()]
    if missing:
        raise SegVolError(
            f"the demo model is incomplete at {path} (missing {', '.join(missing)}); "
            "reinstall segvol-rt with its package data"
        )
    return path

