"""``import segvol_rt`` imports numpy and the base dependencies only: never torch,
onnx, cupy, tensorrt, typer (or its click and rich) - checked in a fresh
interpreter, over every module that the import loads."""

import json
import subprocess
import sys

# Import names of the base install's dependencies (pyproject's `dependencies`).
BASE = {"numpy", "onnxruntime", "nibabel", "typer", "tokenizers", "indexed_gzip", "isal"}
NEVER = {"torch", "onnx", "cupy", "tensorrt", "typer", "click", "rich", "transformers", "PIL", "scipy"}

_PROBE = """
import json, sys
before = set(sys.modules)
import segvol_rt
from segvol_rt import SegVolRuntime, SegVolError, Request, Segmentation
loaded = sorted({m.split('.')[0] for m in set(sys.modules) - before})
print(json.dumps({"loaded": loaded, "stdlib": sorted(sys.stdlib_module_names)}))
"""


def _probe() -> tuple[set[str], set[str]]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    return set(data["loaded"]), set(data["stdlib"])


def test_import_segvol_rt_loads_numpy_and_base_dependencies_only():
    loaded, stdlib = _probe()
    third_party = {m for m in loaded if m not in stdlib and not m.startswith("_")} - {"segvol_rt"}
    assert third_party <= BASE - {"typer"}, f"import segvol_rt loaded {sorted(third_party - BASE)}"
    assert not loaded & NEVER, f"import segvol_rt loaded {sorted(loaded & NEVER)}"
    assert "numpy" in loaded


def test_public_names():
    import segvol_rt

    for name in ("SegVolRuntime", "SegVolError", "MissingDependencyError", "Request", "Segmentation", "__version__"):
        assert hasattr(segvol_rt, name), name


def test_import_does_not_load_heavy_modules():
    code = (
        "import sys, segvol_rt.app.cli;"
        "heavy = [m for m in ('torch', 'cupy', 'tensorrt', 'onnx', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
