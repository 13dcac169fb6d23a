"""The C++ SDK against the Python runtime, side by side in one run on this
machine (CPU): process start to first mask, the whole ``infer``, a follow-up
prompt on a loaded volume, and peak RSS.

    python benchmarks/cpp_vs_python.py                      # demo model + full size (random weights)
    python benchmarks/cpp_vs_python.py --models demo --repeat 5
    python benchmarks/cpp_vs_python.py --build cpp/build --json out.json
    python benchmarks/cpp_vs_python.py --models demo --backends onnxruntime:fp32 openvino:bf16

Each BACKEND:PRECISION of ``--backends`` (default: ONNX Runtime fp32, OpenVINO fp32
and bf16, the last only where the CPU's OpenVINO offers BF16) is run by all three
contenders; the follow-up line gives C++'s median as a fraction of SegVolRuntime's.

Contenders, each a fresh process per run (interleaved rounds, one warm-up
round first, not counted):

* ``C++ segvol-rt-infer``: the SDK's sample app (read NIfTI, load, segment,
  write the mask);
* ``segvol-rt infer``: the Python CLI, same scan, prompt and output;
* ``SegVolRuntime``: a Python process that reads the scan, loads the
  runtime and segments, then writes the mask with ``segvol_rt.io.nifti``.

"first mask" is wall time from the process launch to the moment the first
mask is in memory (the child reports the Unix time; the CLI reports none,
so its row shows only the whole run; the other two rows' whole run leaves out
the follow-ups they add, as timed inside the process). "follow-up" repeats the same target on
the loaded volume (zoom-out and window embeddings cached: decoder, upsample,
blend and mask assembly). Peak RSS is the contender's own ``ru_maxrss``
(``os.wait4`` in a small launcher). Medians and p90 over ``--repeat`` runs.
Builds the SDK with cpp/build.sh when ``--build`` holds no app yet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCANS = {"demo": (192, 192, 64), "official": (128, 128, 48)}  # (I, J, K) phantoms

_PY_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from segvol_rt import SegVolRuntime
from segvol_rt.io.nifti import read_scan, write_mask
scan, artifacts, text, out, repeat, threads, backend, precision = sys.argv[1:9]
s = read_scan(scan)
rt = SegVolRuntime.load(artifacts, backend=backend, device="cpu", threads=int(threads) or None, precision=precision)
rt.set_volume(s.data, s.affine)
t1 = time.perf_counter()
seg = rt.segment(text=text)
first = time.time()
seg_s = time.perf_counter() - t1
follow = []
for _ in range(int(repeat)):
    t2 = time.perf_counter(); rt.segment(text=text); follow.append(time.perf_counter() - t2)
write_mask(out, seg.mask, s)
print(json.dumps({"first_mask_epoch": first, "segment_s": seg_s, "followup_s": follow, "total_s": time.perf_counter() - t0}))
"""

# Linux keeps a process's peak RSS across exec: a small launcher forks the
# contender so that its own peak is reported (as benchmarks/memory.py does).
_LAUNCHER = r"""
import json, os, subprocess, sys, time
t0 = time.time()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
out = proc.stdout.read()
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"launch_epoch": t0, "wall_s": time.time() - t0, "code": os.waitstatus_to_exitcode(status),
                  "rss_kib": usage.ru_maxrss, "out": out.decode(errors="replace")[-4000:],
                  "err": err.decode(errors="replace")[-2000:]}))
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["demo", "official"], choices=("demo", "official"),
                   help="demo: the shipped demo model; official: full size, random weights (exported once)")
    p.add_argument("--build", type=Path, default=ROOT / "cpp" / "build", help="C++ build directory")
    p.add_argument("--text", default="liver")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per contender")
    p.add_argument("--followups", type=int, default=3, help="follow-up prompts per run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--backends", nargs="+", default=["onnxruntime:fp32", "openvino:fp32", "openvino:bf16"],
                   help="BACKEND:PRECISION pairs, each run by all three contenders (openvino:bf16 only where the CPU has BF16)")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def measure(cmd: list[str]) -> dict[str, Any]:
    """One run: wall, peak RSS and the child's own timing line (if any)."""
    done = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    run = json.loads(done.stdout)
    if run["code"] != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{run['err']}")
    timing = next((json.loads(line) for line in run["out"].splitlines() if line.startswith("{")), None)
    result = {"wall_s": run["wall_s"], "whole_s": run["wall_s"], "peak_rss_mib": run["rss_kib"] / 1024}
    if timing:
        result["first_mask_s"] = timing["first_mask_epoch"] - run["launch_epoch"]
        result["followup_s"] = timing["followup_s"]
        # the whole infer without the follow-ups this run added (timed in the child)
        result["whole_s"] = run["wall_s"] - sum(timing["followup_s"])
    return result


def contenders(app: Path, scan: Path, artifacts: Path, out: Path, args: argparse.Namespace,
               backend: str, precision: str) -> dict[str, list[str]]:
    threads = ["--threads", str(args.threads)] if args.threads else []
    chosen = ["--backend", backend, "--precision", precision]
    tag = f" [{backend} {precision}]"
    return {
        "C++ segvol-rt-infer" + tag: [str(app), str(scan), "--artifacts", str(artifacts), "--text", args.text, *chosen,
                                      "--out", str(out / "cpp.nii.gz"), "-q", "--timing", "--repeat", str(args.followups),
                                      *threads],
        "segvol-rt infer (Python CLI)" + tag: [sys.executable, "-m", "segvol_rt", "infer", str(scan), "--artifacts",
                                               str(artifacts), *chosen, "--device", "cpu", "--text", args.text,
                                               "--out", str(out / "cli.nii.gz"), "-q", *threads],
        "SegVolRuntime (Python)" + tag: [sys.executable, "-c", _PY_CHILD, str(scan), str(artifacts), args.text,
                                         str(out / "py.nii.gz"), str(args.followups), str(args.threads), backend, precision],
    }


def backend_problem(backend: str, precision: str) -> str | None:
    """Why a BACKEND:PRECISION pair cannot run here (None: it can): the backend's own refusal line."""
    if backend != "openvino":
        return None
    from segvol_rt.backends.openvino import precision_problem

    return precision_problem(precision)  # without openvino installed, the line naming the extra


def artifacts_of(model: str) -> Path:
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    return prepare_bench_model(model, log=lambda m: print(m, file=sys.stderr)).artifacts


def ensure_app(build: Path) -> Path:
    app = build / "segvol-rt-infer"
    if not app.exists():
        subprocess.run(["bash", str(ROOT / "cpp" / "build.sh"), str(build)], check=True,
                       env={**os.environ, "SEGVOL_RT_SKIP_TESTS": "1"})
    return app


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return f"{statistics.median(values):.3f} / {p90:.3f}"


def table(model: str, scan: tuple[int, ...], results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"## {model} model, phantom {scan[0]}x{scan[1]}x{scan[2]} (I x J x K), CPU", "",
             "| contender | first mask s (median / p90) | whole infer s | follow-up s | peak RSS MiB | runs |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, runs in results.items():
        first = [r["first_mask_s"] for r in runs if "first_mask_s" in r]
        follow = [v for r in runs for v in r.get("followup_s", [])]
        lines.append(f"| {name} | {_stats(first)} | {_stats([r.get('whole_s', r['wall_s']) for r in runs])} | {_stats(follow)} | "
                     f"{statistics.median(r['peak_rss_mib'] for r in runs):.0f} | {len(runs)} |")
    lines.append("")
    for name, cpp in results.items():
        if not name.startswith("C++"):
            continue
        tag = name[len("C++ segvol-rt-infer"):]
        cli, py = results.get("segvol-rt infer (Python CLI)" + tag), results.get("SegVolRuntime (Python)" + tag)
        if cli:
            a, b = (statistics.median(r["whole_s"] for r in runs) for runs in (cpp, cli))
            lines.append(f"whole infer{tag}: C++ app {a:.2f} s vs Python CLI {b:.2f} s ({b / a:.2f}x)")
        fc = [v for r in cpp for v in r.get("followup_s", [])]
        fp = [v for r in (py or []) for v in r.get("followup_s", [])]
        if fc and fp:
            a, b = statistics.median(fc), statistics.median(fp)
            lines.append(f"follow-up{tag}: C++ {a:.3f} s vs SegVolRuntime {b:.3f} s ({a / b:.2f}x Python's)")
    return "\n".join(lines)


def render(path: Path) -> str:
    """The tables of a JSON report written by ``--json`` (older reports: whole_s recomputed)."""
    report = json.loads(Path(path).read_text())
    parts = []
    for model, entry in report["models"].items():
        for runs in entry["results"].values():
            for r in runs:
                r.setdefault("whole_s", r["wall_s"] - sum(r.get("followup_s", [])))
        parts.append(table(model, tuple(entry["scan"]), entry["results"]))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from segvol_rt.bench.machine import compile_bytecode, machine_info, machine_line
    from segvol_rt.demo.phantom import make_phantom

    app = ensure_app(args.build)
    meta = {**machine_info(), "bytecode": compile_bytecode()}
    report: dict[str, Any] = {"machine": meta, "models": {}}
    print(f"# C++ SDK vs Python runtime\n\n{machine_line(meta)}\n\n{meta['bytecode']}\n")
    with tempfile.TemporaryDirectory(prefix="segvol-rt-cpp-bench-") as tmp:
        for model in args.models:
            artifacts = artifacts_of(model)
            shape = SCANS[model]
            scan = Path(tmp) / f"{model}.nii.gz"
            make_phantom(2000, shape).save(scan)
            cmds: dict[str, list[str]] = {}
            for pair in args.backends:
                backend, _, precision = pair.partition(":")
                problem = backend_problem(backend, precision or "fp32")
                if problem:
                    print(f"skipping {pair}: {problem}", file=sys.stderr)
                    continue
                cmds.update(contenders(app, scan, artifacts, Path(tmp), args, backend, precision or "fp32"))
            for cmd in cmds.values():  # warm-up round: page cache, ORT's first-use costs
                measure(cmd)
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in cmds}
            for _ in range(args.repeat):
                for name, cmd in cmds.items():
                    results[name].append(measure(cmd))
            print(table(model, shape, results) + "\n", flush=True)
            report["models"][model] = {"scan": shape, "artifacts": str(artifacts), "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
