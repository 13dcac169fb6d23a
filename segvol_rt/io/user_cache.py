"""segvol-rt's per-user cache directory: ``$SEGVOL_RT_CACHE``, else ``~/.cache/segvol-rt``.

What is derived on this machine and may be rebuilt at any time lives here
(the demo model's artifacts, OpenVINO's compiled models), never inside an
artifacts directory, which may be read-only or shared.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SEGVOL_RT_CACHE"


def cache_root() -> Path:
    """``$SEGVOL_RT_CACHE``, else ``~/.cache/segvol-rt``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segvol-rt"
