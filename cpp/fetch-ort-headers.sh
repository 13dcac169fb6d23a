#!/usr/bin/env bash
# Print the directory of the ONNX Runtime C/C++ API headers, fetching them once.
# Source: npm package com.github.asus4.onnxruntime (0.4.9 = ORT 1.29.0 headers,
# ORT_API_VERSION 29). Its 150 MB tarball keeps the headers inside an iOS
# framework; only those headers are extracted, into
# ${XDG_CACHE_HOME:-~/.cache}/segvol-rt/ort-headers-<version>/, so a rerun
# downloads nothing.
set -euo pipefail
VERSION="${SEGVOL_ORT_NPM_VERSION:-0.4.9}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/segvol-rt"
DEST="$CACHE/ort-headers-$VERSION"
if [ -f "$DEST/onnxruntime_c_api.h" ]; then echo "$DEST"; exit 0; fi
command -v npm >/dev/null || { echo "npm is needed once to fetch the ONNX Runtime headers (or pass -DONNXRUNTIME_ROOT=...)" >&2; exit 1; }
mkdir -p "$CACHE"
TMP="$(mktemp -d "$CACHE/fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "com.github.asus4.onnxruntime@$VERSION" >/dev/null)
TGZ="$(ls "$TMP"/*.tgz)"
# the headers of the first framework slice that has them
HDR="$(tar -tzf "$TGZ" | grep -E '/Headers/onnxruntime_c_api\.h$' | head -n1)"
[ -n "$HDR" ] || { echo "no onnxruntime_c_api.h in $TGZ" >&2; exit 1; }
DIR="${HDR%/onnxruntime_c_api.h}"
mkdir -p "$TMP/x"
tar -xzf "$TGZ" -C "$TMP/x" --wildcards "$DIR/*.h"
mkdir -p "$TMP/out"
cp "$TMP/x/$DIR"/*.h "$TMP/out/"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
echo "$DEST"
