"""The installed package tree, assembled from the checkout, and the static
checks that run on it: import-linter's layer contracts and mypy.

``segvol_rt.export`` and ``segvol_rt.kernels`` live in the top-level
``export/`` and ``kernels/`` folders (setuptools ``package-dir``), so a tool
that walks ``segvol_rt/`` on disk would not see them. :func:`package_tree`
copies the three folders into the layout a wheel installs, and the checks
run there.

    python -m tests.support.layers      # prints lint-imports' report
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAPPED = {"segvol_rt": "segvol_rt", "segvol_rt/export": "export", "segvol_rt/kernels": "kernels"}
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "assets")


def package_tree(dest: Path, repo: Path = REPO) -> Path:
    """Copy the package's sources into ``dest`` as installed (``dest/segvol_rt/...``,
    assets left out) with ``pyproject.toml`` beside it; returns ``dest``."""
    for target, source in MAPPED.items():
        shutil.copytree(repo / source, dest / target, ignore=_IGNORE, dirs_exist_ok=True)
    shutil.copy2(repo / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _tool(name: str) -> str:
    """A console script of this interpreter's environment."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _env(tree: Path) -> dict[str, str]:
    # the copied tree comes first on sys.path, ahead of the editable install's finder
    return {**os.environ, "PYTHONPATH": str(tree)}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the contracts of ``tree/pyproject.toml`` on ``tree``."""
    return subprocess.run([_tool("lint-imports"), "--no-cache", str(tree / "pyproject.toml")],
                          cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=300)


def mypy(tree: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """mypy with the settings of ``tree/pyproject.toml`` on the whole package."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tree / "pyproject.toml"),
                           "--cache-dir", str(cache_dir), "-p", "segvol_rt"],
                          cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=600)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = lint_imports(package_tree(Path(tmp)))
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
