#!/usr/bin/env bash
# Issue 21's CPU-tier measurements in one call, for a session on a CPU kind not measured yet
# (above all an Intel Xeon with AMX, the only CPU its targets are judged on). Run it on a quiet
# machine (no CI, no tests beside it): each part times processes side by side.
#
#   bash benchmarks/cpu_tier_run.sh [TAG [ARGS...]]
#
# TAG names the machine in the file names (default: from the CPU, e.g. xeon-amx, epyc-avx2). ARGS
# go to every part after its own: the options all take (--config, --cache-dir, --work). The
# environment may set PARTS (which parts, default all five, run in the order below), RESULTS
# (default benchmarks/results), SEGVOL_RT_CPP_BUILD (the C++ build, default cpp/build as the
# tests'; built when missing) and PYTHON (default python). A smoke run:
#   RESULTS=/tmp/r bash benchmarks/cpu_tier_run.sh smoke --config tiny      (about 7 min)
#
# The parts (a full run took 35 min on the AVX2-only EPYC, 2026-12-07):
#   cpu-tier-windows               cpu_tier.py windows --repeat 3
#   cpu-tier-infer                 cpu_tier.py infer --cases ct raw --targets 1 5 --torch --cpp BUILD
#                                  --repeat 2 (the table of issue 21's targets)
#   cpu-tier-infer-ct-cold-cache   the same on the CT, 1 target, the user cache emptied before each run
#   cpu-tier-infer-demo            cpu_tier.py infer --config demo --cases ct raw --targets 1 5 --repeat 3
#   encoder-int8                   encoder_int8.py
# Each writes $RESULTS/<date>-<part>-<TAG>.md (its report, then its command) and .json, its log in a
# new folder under $TMPDIR; a part that fails is named and the others still run. The exit status is
# the number of parts that failed. List the reports you keep in benchmarks/results/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

machine_tag() {
  local model flags vendor isa
  model=$(grep -m1 '^model name' /proc/cpuinfo | tr 'A-Z' 'a-z')
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  case "$model" in *xeon*) vendor=xeon ;; *epyc*) vendor=epyc ;; *) vendor=cpu ;; esac
  if [[ $flags == *" amx_bf16"* ]]; then isa=amx
  elif [[ $flags == *" avx512_bf16"* ]]; then isa=avx512-bf16
  elif [[ $flags == *" avx512f"* ]]; then isa=avx512
  else isa=avx2; fi
  echo "$vendor-$isa"
}

TAG=${1:-$(machine_tag)}
shift $(( $# > 0 ? 1 : 0 ))
EXTRA=("$@")
DAY=$(date -u +%F)
RESULTS=${RESULTS:-benchmarks/results}
BUILD=${SEGVOL_RT_CPP_BUILD:-cpp/build}
PYTHON=${PYTHON:-python}
mkdir -p "$RESULTS"
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/segvol-rt-cpu-tier-logs.XXXXXX")
echo "== machine $TAG; reports in $RESULTS, logs in $LOGS"
failed=0

PARTS=${PARTS:-cpu-tier-windows cpu-tier-infer cpu-tier-infer-ct-cold-cache cpu-tier-infer-demo encoder-int8}

wanted() { [[ " $PARTS " == *" $1 "* ]]; }  # wanted NAME: PARTS names it

part() {  # part NAME SCRIPT ARGS...: one report, its command appended (when PARTS names it)
  local name=$1 script=$2 base
  shift 2
  wanted "$name" || return 0
  set -- "$@" "${EXTRA[@]}"
  base="$RESULTS/$DAY-$name-$TAG"
  echo "== $name -> $base.md ($(date -u +%T))"
  if "$PYTHON" "benchmarks/$script" "$@" --json "$base.json" > "$base.md" 2> "$LOGS/$name.log"; then
    printf '\nCommand: `python benchmarks/%s%s` (%s, %s, by benchmarks/cpu_tier_run.sh).\n' \
      "$script" "${*:+ $*}" "$DAY" "$TAG" >> "$base.md"
  else
    echo "FAILED: $name (exit $?); its log: $LOGS/$name.log" >&2
    tail -5 "$LOGS/$name.log" >&2
    failed=$((failed + 1))
  fi
}

if { wanted cpu-tier-infer || wanted cpu-tier-infer-ct-cold-cache; } && [ ! -x "$BUILD/segvol-rt-infer" ]; then
  SEGVOL_RT_SKIP_TESTS=1 bash cpp/build.sh "$BUILD" > "$LOGS/cpp-build.log" 2>&1 \
    || { echo "FAILED: the C++ build (log: $LOGS/cpp-build.log)" >&2; exit 1; }
fi
part cpu-tier-windows cpu_tier.py windows --repeat 3
part cpu-tier-infer cpu_tier.py infer --cases ct raw --targets 1 5 --torch --cpp "$BUILD" --repeat 2
part cpu-tier-infer-ct-cold-cache cpu_tier.py infer --cases ct --targets 1 --torch --cpp "$BUILD" --cold-cache --repeat 2
part cpu-tier-infer-demo cpu_tier.py infer --config demo --cases ct raw --targets 1 5 --repeat 3
part encoder-int8 encoder_int8.py
echo "== done ($(date -u +%T)): $failed part(s) failed; the targets table ends $RESULTS/$DAY-cpu-tier-infer-$TAG.md"
exit "$failed"
