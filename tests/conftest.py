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


@pytest.fixture(scope="session")
def fresh_demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh export of the shipped demo checkpoint (needs torch; about a minute), shared by the session."""
    pytest.importorskip("torch")
    from segvol_rt.app.console import export_demo

    return export_demo(tmp_path_factory.mktemp("demo") / "artifacts")
