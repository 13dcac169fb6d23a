#!/usr/bin/env bash
# The main device call (README.md beside this file): installs from the carried
# files, then runs benchmarks/device_check.py under `timeout 360`, its log teed
# to $OUT. Arguments go to device_check.py (a rerun: --sections NAME ...).
# Comes back from $OUT: device_check.json, device_check.md, device_run.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
log="$OUT/device_run.log"
export PYTHONUNBUFFERED=1

install() {
  if [ ! -d /tmp/site ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || echo "INSTALL: the carried wheels (.whl) did not install; preflight will say what is missing"
  fi
  if [ ! -d /tmp/ortsite ]; then
    if [ "$(ls /tmp/ortw/p0* 2>/dev/null | wc -l)" = 7 ]; then
      cat /tmp/ortw/p0* > /tmp/ort.whl && python3 -m pip install -q --no-index --no-deps --target /tmp/ortsite /tmp/ort.whl \
        || echo "INSTALL: onnxruntime-gpu did not install"
    else
      echo "INSTALL: /tmp/ortw holds $(ls /tmp/ortw 2>/dev/null | wc -l) of 7 onnxruntime-gpu chunks: ORT CUDA sections will be skipped"
    fi
  fi
  # segvol_rt.kernels and segvol_rt.export are the top-level kernels/ and export/ (pyproject's
  # package-dir); in this throw-away copy of the tree, links make them importable without an install
  [ -e segvol_rt/kernels ] || ln -s ../kernels segvol_rt/kernels
  [ -e segvol_rt/export ] || ln -s ../export segvol_rt/export
  export PYTHONPATH="/tmp/ortsite:/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader || true
}

{
  date -u
  install
  timeout 360 python3 benchmarks/device_check.py --out "$OUT" --work /tmp/segvol_device_check "$@"
  rc=$?
  if [ "$rc" = 124 ]; then
    echo "DEVICE CHECK INCOMPLETE: ran over 360 s; device_check.json holds the sections that finished"
  elif [ "$rc" != 0 ] && [ "$rc" != 1 ]; then
    echo "DEVICE CHECK BROKEN: device_check.py exited $rc; see the log above"
  fi
} 2>&1 | tee "$log"
