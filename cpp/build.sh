#!/usr/bin/env bash
# Build and test the C++ SDK: cpp/build.sh [BUILD_DIR] [extra cmake args...]
#
# Installs what the build needs (Debian packages, the ONNX Runtime headers from
# npm, cached under ~/.cache/segvol-rt; see .ci/setup-cpp.sh), configures
# with CMake, builds and runs ctest. BUILD_DIR defaults to cpp/build.
# Environment: SEGVOL_RT_SKIP_SETUP=1 skips the installs; JOBS sets the build
# parallelism (default: the number of cores); SEGVOL_RT_SKIP_TESTS=1 skips ctest.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUILD="${1:-$HERE/build}"
shift || true
if [ "${SEGVOL_RT_SKIP_SETUP:-0}" != 1 ]; then
    "$HERE/../.ci/setup-cpp.sh"
fi
HEADERS="$("$HERE/fetch-ort-headers.sh")"
cmake -S "$HERE" -B "$BUILD" -DSEGVOL_RT_ORT_INCLUDE_DIR="$HEADERS" \
    -DSEGVOL_RT_TEST_ARTIFACTS="$HERE/../segvol_rt/assets/demo/artifacts" "$@" >/dev/null
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
if [ "${SEGVOL_RT_SKIP_TESTS:-0}" != 1 ]; then
    ctest --test-dir "$BUILD" --output-on-failure
fi
