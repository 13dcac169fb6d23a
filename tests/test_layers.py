"""The layer rules (import-linter contracts in pyproject.toml), mypy and ruff,
run on the package as installed (``export/`` and ``kernels/`` mapped into
``segvol_rt``; see tests/support/layers.py), and proof that each contract
catches a deliberate violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.layers import REPO, lint_imports, mypy, package_tree

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")

CONTRACTS = ("Layers, top down", "The export core", "Demo training and the torch references", "backends never import app",
             "Only the torch backend", "never import torch", "Nothing below app imports typer", "serve and client are independent",
             "client imports no runtime", "client imports no CuPy", "Only segvol_rt.napari imports napari and Qt")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package_tree(tmp_path_factory.mktemp("tree"))


def test_the_checked_tree_holds_the_mapped_packages(tree):
    assert (tree / "segvol_rt" / "export" / "exporter.py").is_file()
    assert (tree / "segvol_rt" / "kernels" / "__init__.py").is_file()
    assert any((tree / "segvol_rt" / "kernels").glob("*.cu"))


def test_every_layer_contract_is_kept(tree):
    result = lint_imports(tree)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    import tomllib

    count = len(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])
    assert f"{count} kept, 0 broken" in report, report
    for name in CONTRACTS:
        assert name in report


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("io/nifti.py", "import segvol_rt.app.cli", ("Layers, top down", "backends never import app")),
        ("ops/masks.py", "from segvol_rt.export import onnx", ("Layers, top down", "never import torch")),
        ("backends/onnxruntime.py", "import segvol_rt.export.reference.official", ("Layers, top down", "backends never import app")),
        ("backends/onnxruntime.py", "import segvol_rt.export.exporter", ("Only the torch backend",)),
        ("pipeline/zoom.py", "import typer", ("Nothing below app imports typer",)),
        ("runtime.py", "import segvol_rt.bench.report", ("Layers, top down",)),
        ("export/onnx.py", "import segvol_rt.app.cli", ("Layers, top down", "The export core")),
        ("export/exporter.py", "import segvol_rt.pipeline.prompts", ("Layers, top down", "The export core")),
        # the root package's lazy names reach the runtime: an export core module may not take that path
        ("export/exporter.py", "import segvol_rt", ("The export core",)),
        ("export/model/segvol.py", "from segvol_rt.demo.model import demo_checkpoint_dir", ("Layers, top down", "The export core")),
        ("export/reference/official.py", "import segvol_rt.export.demo_training.recipe", ("Demo training and the torch references",)),
        ("kernels/__init__.py", "from segvol_rt.ops import dispatch", ("Layers, top down",)),
        ("types.py", "import torch", ("never import torch",)),
        ("types.py", "from segvol_rt.pipeline import zoom", ("Layers, top down",)),
        ("wire.py", "from segvol_rt.runtime import SegVolRuntime", ("Layers, top down",)),
        ("client/volumes.py", "import onnxruntime", ("client imports no runtime",)),
        ("client/client.py", "from segvol_rt.runtime import SegVolRuntime", ("client imports no runtime",)),
        ("client/volumes.py", "import cupy", ("client imports no CuPy",)),
        ("client/client.py", "from segvol_rt.serve import models",
         ("Layers, top down", "serve and client are independent", "client imports no runtime")),
        ("serve/models.py", "from segvol_rt.client import client", ("Layers, top down", "serve and client are independent")),
        ("serve/models.py", "import segvol_rt.app.cli", ("Layers, top down",)),
        ("app/infer.py", "import segvol_rt.napari.session", ("Layers, top down",)),  # nothing imports the plugin
        ("app/cli.py", "import qtpy", ("Only segvol_rt.napari imports napari and Qt",)),
    ],
)
def test_a_deliberate_violation_breaks_its_contract(tmp_path, module, line, broken):
    tree = package_tree(tmp_path)
    path = tree / "segvol_rt" / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate violation\n")
    result = lint_imports(tree)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    for name in broken:
        assert _verdict(report, name) == "BROKEN", (name, report)


def _verdict(report: str, name: str) -> str:
    """KEPT or BROKEN: the verdict that follows the contract ``name`` in the report's summary."""
    rest = report[report.index(name):]
    return min(("KEPT", "BROKEN"), key=lambda word: rest.find(word) if word in rest else len(rest))


def test_mypy_finds_no_error(tree, tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    result = mypy(tree, tmp_path / "mypy-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_ruff_finds_no_error():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists() and shutil.which("ruff") is None:
        pytest.skip("ruff is in the dev extra")
    folders = ["segvol_rt", "export", "kernels", "tests", "benchmarks"]
    result = subprocess.run([ruff, "check", *folders], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
