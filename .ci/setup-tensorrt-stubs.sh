#!/usr/bin/env bash
# PyPI's tensorrt-stubs (TensorRT 10.x's typed Python surface) into a folder of
# its own, read by tests/export/test_fake_tensorrt_surface.py to ground the
# fake TensorRT 10 module. Never into the environment: its stub-only
# `tensorrt/` folder would import as an (empty) namespace package there.
# Idempotent; fast when already present.
set -euo pipefail
target="${SEGVOL_RT_TRT_STUBS:-$HOME/.cache/segvol-rt/tensorrt-stubs-10.13}"
if [ -f "$target/tensorrt_bindings/tensorrt.pyi" ]; then
    exit 0
fi
python3 -m pip install -q --no-deps --target "$target" "tensorrt-stubs==10.13.0.35.1"
