"""Fixtures of the C++ SDK tests: one build per session (cpp/build.sh, which
also runs its ctest), shared by every test here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cpp import sdk


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    reason = sdk.missing_toolchain()
    if reason:
        pytest.skip(reason)
    return sdk.build()


@pytest.fixture(scope="session")
def demo_artifacts() -> Path:
    return sdk.ROOT / "segvol_rt" / "assets" / "demo" / "artifacts"
