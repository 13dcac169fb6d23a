"""Locating ../shared, the developers' data folder beside the checkout
(``$SEGVOL_RT_SHARED`` overrides it): the one place tests compute that path.

:data:`SHARED` is the folder (it may be absent, as in a user's clone);
:func:`shared_path` is a path under it, or a skip with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGVOL_RT_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the developers' checkout)")
    return path
