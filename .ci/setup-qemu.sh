#!/usr/bin/env bash
# tests/test_avx2_cpu.py: Debian's qemu-user, whose qemu-x86_64 runs the CPU-dependent
# tests on an emulated AVX2-only CPU (the project's machines are AVX-512/AMX Xeons or
# AVX2-only EPYCs, and the suite must pass on both). Idempotent: fast when it is there.
set -euo pipefail
command -v qemu-x86_64 >/dev/null && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-qemu: need root to install qemu-user" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends qemu-user >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends qemu-user >/dev/null; }
