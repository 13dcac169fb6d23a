#!/usr/bin/env bash
# The napari plugin's tests (tests/napari): Xvfb (a display for napari's Qt
# canvas: Qt's offscreen platform may give vispy no OpenGL context), the X and
# GL libraries Qt's xcb platform plugin loads (Debian 12 packages), and the
# `napari-test` extra (napari, PyQt6, pytest-qt). Idempotent: fast when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pkgs=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
      libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-randr0
      libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-cursor0)
need=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-napari: need root to install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi
if ! "$PY" -c "import napari, PyQt6, pytestqt" 2>/dev/null; then
    "$PY" -m pip install -q -e ".[napari-test]"
fi
