"""``import segvol_rt`` imports numpy and the base dependencies only: never torch,
onnx, cupy, tensorrt, typer (or its click and rich) - checked in a fresh
interpreter, over every module that the import loads."""

import json
import subprocess
import sys

import pytest

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


_NIFTI_PROBE = """
import json, sys
from segvol_rt._optional import require
from segvol_rt.io.nifti import read_scan
scan = read_scan(sys.argv[1])
unimported = "pydicom" not in sys.modules
nibabel = require("nibabel")
kept = [type(e).__name__ for e in nibabel.load(sys.argv[1]).header.extensions]
print(json.dumps({"pydicom_unimported": unimported, "shape": list(scan.data.shape), "extensions": kept,
                  "pydicom_after": bool(require("pydicom").Dataset)}))
"""


def test_reading_a_nifti_scan_leaves_pydicom_unimported(tmp_path):
    """nibabel imports pydicom, where installed, only to parse the DICOM extensions (code 2)
    of NIfTI files, which segvol-rt never reads: require("nibabel") keeps it out of that
    import (0.4 s of every run). A scan carrying such an extension, not even a DICOM one,
    reads, its bytes kept; segvol-rt imports pydicom itself afterwards."""
    pytest.importorskip("pydicom")
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(2, b"not a DICOM dataset"))
    nib.save(img, tmp_path / "ext.nii.gz")
    out = subprocess.run([sys.executable, "-c", _NIFTI_PROBE, str(tmp_path / "ext.nii.gz")],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"pydicom_unimported": True, "shape": [4, 5, 6],
                                      "extensions": ["Nifti1Extension"], "pydicom_after": True}


def test_the_console_script_leaves_its_objects_to_the_exit():
    """segvol-rt's process ends with its run: the entry point freezes what the run made,
    so the interpreter's last collections skip it (0.15-0.2 s of an infer's exit)."""
    code = ("import gc, sys\nfrom segvol_rt.app import entry\nsys.argv = ['segvol-rt', 'targets']\n"
            "try:\n    entry.main()\nexcept SystemExit as exc:\n    print('exit', exc.code, gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "exit 0 True"
