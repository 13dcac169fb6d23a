"""Shared fixtures. Tests that need ../shared (real CT, CLIP tokenizer files)
skip with a visible reason when it is absent, as in a user's clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGVOL_RT_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the developers' checkout)")
    return path


@pytest.fixture
def clip_dir() -> Path:
    return shared_path("clip")


@pytest.fixture
def real_ct() -> Path:
    return shared_path("data", "ct", "example_ct_sm.nii.gz")


@pytest.fixture
def real_seg() -> Path:
    return shared_path("data", "ct", "example_seg.nii.gz")
