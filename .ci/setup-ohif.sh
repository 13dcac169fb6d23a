#!/usr/bin/env bash
# The OHIF viewer test's tools (issue 25): Debian's chromium (headless, software
# WebGL), npm playwright-core to drive it, and the built OHIF viewer from the npm
# package @ohif/app, unpacked (npm pack: its engines field wants a newer Node than
# Debian's, so it is not installed, only its dist/ is served by nginx).
# Everything goes to a cache outside the repo. Idempotent: fast when it is there.
#
#   SEGVOL_OHIF_CACHE  the cache (default ~/.cache/segvol-rt); tests/support/ohif.py
#                      reads the same variable and the same versions below.
#
# Prints nothing on success; on failure one line on stderr and exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${SEGVOL_OHIF_CACHE:-$HOME/.cache/segvol-rt}"
# shellcheck source=/dev/null
. .ci/ohif-versions.env
OHIF_DIR="$CACHE/ohif-$OHIF_VERSION"
PW_DIR="$CACHE/playwright-core-$PLAYWRIGHT_CORE_VERSION"

fail() { echo "setup-ohif: $*" >&2; exit 1; }

if [ ! -x /usr/bin/chromium ]; then
    [ "$(id -u)" -eq 0 ] || fail "need root to install chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
             && apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
        || fail "could not install chromium"
fi
command -v npm >/dev/null || fail "npm is not installed (Debian: apt-get install npm)"

if [ ! -f "$PW_DIR/node_modules/playwright-core/package.json" ]; then
    mkdir -p "$PW_DIR"
    # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the system chromium is used; nothing else is fetched
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund --prefix "$PW_DIR" \
        "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null 2>&1 || fail "npm could not install playwright-core"
fi

if [ ! -f "$OHIF_DIR/dist/index.html" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null 2>&1) || fail "npm could not pack @ohif/app@$OHIF_VERSION"
    tar -xzf "$work"/ohif-app-*.tgz -C "$work" || fail "could not unpack @ohif/app"
    [ -f "$work/package/dist/index.html" ] || fail "@ohif/app@$OHIF_VERSION has no dist/index.html"
    rm -rf "$OHIF_DIR.partial" && mkdir -p "$CACHE"
    mv "$work/package" "$OHIF_DIR.partial" && mv "$OHIF_DIR.partial" "$OHIF_DIR"  # whole or absent
fi
