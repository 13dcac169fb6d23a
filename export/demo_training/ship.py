"""Write the demo model's exported artifacts into the package, so that a
runtime-only install (no torch) runs ``segvol-rt demo`` and ``segvol-rt infer``
out of the box:

    python -m segvol_rt.export.demo_training.ship        # -> segvol_rt/assets/demo/artifacts/

Run it after retraining the demo model (``python -m segvol_rt.export.demo_training``)
or after a change of the graphs or the manifest. The export is the ordinary
``segvol-rt export --precision fp16`` of the shipped checkpoint with the default parity checks;
``tests/demo/test_shipped_demo.py`` holds the shipped graphs to a fresh export of the
same checkpoint (same IO specs, numerical parity: ONNX bytes differ across torch
versions, so the files are not compared byte for byte).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segvol_rt.demo.model import demo_checkpoint_dir, shipped_artifacts_dir
from segvol_rt.export.exporter import ExportOptions, export_artifacts


def ship(out: Path | None = None) -> Path:
    """Export the shipped demo checkpoint into ``out`` (default: the package's assets), replacing it."""
    target = out or shipped_artifacts_dir()
    # fp16 variants too, so `segvol-rt infer --precision fp16` runs on the demo model out of the box
    export_artifacts(demo_checkpoint_dir(), target, options=ExportOptions(precision="fp16"), force=True, progress=print)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="target directory (default: the package's assets)")
    print(f"wrote {ship(parser.parse_args(argv).out)}")


if __name__ == "__main__":
    main()
