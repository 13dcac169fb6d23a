#!/usr/bin/env bash
# Run HERE (not on the device), once, before a device session: fetches what the
# device machine lacks and checks that every call fits the 64 MiB it may carry.
#   .whl/  : jsonschema (+ jsonschema-specifications, referencing, rpds-py), nibabel,
#            onnxconverter-common (fp16 export of the full-size model on the device)
#   .ortw/ : onnxruntime-gpu 1.31.1 (CUDA 13, cp312) in 40 MiB chunks, one per call
# Both folders are in .gitignore: they travel only when a call names them in carry.
# The demo model's fp32 and fp16 graphs are tracked (segvol_rt/assets/demo/artifacts).
# See README.md beside this file.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
ORT_VERSION=1.31.1
CHUNK=40M
LIMIT=$((64 * 1024 * 1024))
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # cp312 x86-64 wheels, no dependencies (each needed one is named)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$1" "${@:2}"
}

mkdir -p .whl
rm -f .whl/*.whl
download .whl jsonschema jsonschema-specifications referencing rpds-py nibabel onnxconverter-common
ls -la .whl

if [ ! -f .ortw/p06 ] || [ "${REFRESH_ORT:-0}" = 1 ]; then
  mkdir -p .ortw
  tmp=$(mktemp -d)
  download "$tmp" "onnxruntime-gpu==$ORT_VERSION"
  rm -f .ortw/p0*
  split -b "$CHUNK" -d "$tmp"/onnxruntime_gpu-*.whl .ortw/p
  rm -rf "$tmp"
fi
ls -la .ortw

for f in segvol_rt/assets/demo/artifacts/{image_encoder,text_encoder,prompt_decoder}{,.fp16}.onnx; do
  [ -f "$f" ] || { echo "missing $f (the demo model's graphs travel with the tree)"; exit 1; }
done

# What travels: tracked files plus untracked files git does not ignore, plus the carried paths.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
status=0
check() {  # name, bytes carried
  total=$((tree + $2))
  printf '%-28s tree %6.1f MiB + carried %6.1f MiB = %6.1f MiB\n' "$1" \
    "$(echo "$tree / 1048576" | bc -l)" "$(echo "$2 / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
  if [ "$total" -ge "$LIMIT" ]; then echo "  OVER the 64 MiB limit"; status=1; fi
}
for p in .ortw/p0*; do check "chunk call ($p)" "$(du -cb "$p" | tail -1 | cut -f1)"; done
check "main call (.whl)" "$(du -cb .whl | tail -1 | cut -f1)"
exit $status
