"""Fixtures for export tests: the tiny config, a seeded tiny model and the same
weights written in both released checkpoint layouts.

``tiny_model`` is a fresh model per test; ``tiny_pth`` and ``tiny_hf_dir`` are
written once per session from a model with the same seed, so their weights
equal ``tiny_model``'s. Treat the checkpoint files as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from segvol_rt.export.checkpoint import save_hf, save_pth  # noqa: E402
from segvol_rt.export.model.segvol import SegVol  # noqa: E402
from segvol_rt.io.config import SegVolConfig  # noqa: E402
from tests.support.shared import SHARED  # noqa: E402

TINY_SEED = 1234


def tiny_weights(config: SegVolConfig) -> SegVol:
    return SegVol.random(config, seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_config() -> SegVolConfig:
    return SegVolConfig.tiny()


@pytest.fixture
def tiny_model(tiny_config: SegVolConfig) -> SegVol:
    """Seeded random weights everywhere (LayerNorm affines and biases too), eval mode."""
    return tiny_weights(tiny_config)


@pytest.fixture(scope="session")
def tiny_pth(tmp_path_factory: pytest.TempPathFactory, tiny_config: SegVolConfig) -> Path:
    """The tiny weights in the GitHub ``.pth`` layout (``module.`` keys, with segvol_rt_config)."""
    path = tmp_path_factory.mktemp("pth") / "segvol_tiny.pth"
    return save_pth(tiny_weights(tiny_config), path, extra={"epoch": 0})


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config: SegVolConfig) -> Path:
    """The tiny weights in the Hugging Face layout (``model.safetensors``), with the
    CLIP tokenizer files of ../shared/clip when present."""
    clip = SHARED / "clip"
    directory = tmp_path_factory.mktemp("hf") / "segvol_tiny"
    return save_hf(tiny_weights(tiny_config), directory, tokenizer_files=clip if clip.is_dir() else None)
