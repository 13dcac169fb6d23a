#!/usr/bin/env bash
# C++ SDK build dependencies (Debian 12 packages) and the ONNX Runtime headers
# (npm package com.github.asus4.onnxruntime, headers only, cached under
# ~/.cache/segvol-rt/ort-headers-<version>/). Idempotent: fast when present.
set -euo pipefail
# libnifti2-dev, libznz-dev: nifti1.h and znzlib.h, which libniftiio-dev's nifti1_io.h includes but does not ship
PKGS=(cmake g++ make pkg-config nlohmann-json3-dev libutf8proc-dev libzip-dev libssl-dev libniftiio-dev libnifti2-dev libznz-dev zlib1g-dev valgrind)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
"$(dirname "$0")/../cpp/fetch-ort-headers.sh" >/dev/null
