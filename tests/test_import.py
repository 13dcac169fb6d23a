"""``import segvol_rt`` needs numpy alone."""

import subprocess
import sys


def test_import_does_not_load_heavy_modules():
    code = (
        "import sys, segvol_rt, segvol_rt.io.spec, segvol_rt.io.config, segvol_rt.app.cli;"
        "heavy = [m for m in ('torch', 'cupy', 'tensorrt', 'onnx', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
