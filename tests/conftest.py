"""Shared fixtures. Tests that need ../shared (real CT, CLIP tokenizer files)
skip with a visible reason when it is absent, as in a user's clone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.shared import shared_path


@pytest.fixture
def clip_dir() -> Path:
    return shared_path("clip")


@pytest.fixture
def real_ct() -> Path:
    return shared_path("data", "ct", "example_ct_sm.nii.gz")


@pytest.fixture
def real_seg() -> Path:
    return shared_path("data", "ct", "example_seg.nii.gz")
