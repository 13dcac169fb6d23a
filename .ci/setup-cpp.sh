#!/usr/bin/env bash
# C++ SDK build dependencies (Debian 12 packages) and the ONNX Runtime headers
# (npm package com.github.asus4.onnxruntime, headers only, cached under
# ~/.cache/segvol-rt/ort-headers-<version>/). Idempotent: fast when present.
set -euo pipefail
# libnifti2-dev, libznz-dev: nifti1.h and znzlib.h, which libniftiio-dev's nifti1_io.h includes but does not ship
PKGS=(cmake g++ make pkg-config nlohmann-json3-dev libutf8proc-dev libzip-dev libssl-dev libniftiio-dev libnifti2-dev libznz-dev zlib1g-dev valgrind)
missing=()
# npm fetches the ONNX Runtime headers once (cpp/fetch-ort-headers.sh); not needed once they are cached
HEADERS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/segvol-rt/ort-headers-${SEGVOL_ORT_NPM_VERSION:-0.4.9}/onnxruntime_c_api.h"
if [ ! -f "$HEADERS_CACHE" ] && ! command -v npm >/dev/null; then PKGS+=(npm); fi
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
"$(dirname "$0")/../cpp/fetch-ort-headers.sh" >/dev/null
# The OpenVINO backend of the SDK compiles against the C API headers of the Python openvino wheel
# (pyproject's openvino extra, part of dev: .ci/run installs it before this script runs). Without
# it the SDK builds without the backend and tests/cpp/test_cpp_openvino.py skips, so say so.
if ! python3 -c "import openvino" 2>/dev/null; then
    echo "setup-cpp: the openvino wheel is not installed for python3: the C++ SDK builds without its OpenVINO backend (pip install 'segvol-rt[openvino]')" >&2
fi
