"""A cohort in one process against one process per scan, on this machine.

    python benchmarks/cohort.py                    # demo model, 20 phantoms of 96x96x40
    python benchmarks/cohort.py --cases 50 --skip-separate --json cohort.json

Three measurements, all with the demo model (ONNX Runtime, CPU) unless
``--artifacts`` says otherwise:

1. **cohort vs separate**: ``segvol-rt infer DIR --out-dir OUT --text liver --text spleen``
   over N phantoms, against N ``segvol-rt infer SCAN --out ...`` processes on the same
   scans (each loads the model and its graphs again): wall seconds, seconds per
   case, the time saved per case, and the peak RSS (``ru_maxrss`` from ``os.wait4``);
2. **memory over the cohort**: the cohort process's RSS (``/proc/PID/status``
   VmRSS) sampled every 50 ms next to the number of cases its run report lists:
   the RSS after the first case and after the last should be about the same;
3. **--text all vs one target**: in this process, the runtime loaded once, one
   phantom segmented for ``liver`` and for every name of the text table
   (``--text all``), best of ``--repeat`` runs.

Prints markdown tables (with the CPU model and ISA) and writes JSON (``--json``).
Timings on a machine shared with other jobs are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPE = (96, 96, 40)
TEXTS = ("--text", "liver", "--text", "spleen")


def cli() -> list[str]:
    exe = shutil.which("segvol-rt")
    return [exe] if exe else [sys.executable, "-m", "segvol_rt"]


def make_phantoms(folder: Path, n: int) -> list[Path]:
    from segvol_rt.demo.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    labels = folder.parent / "labels"
    labels.mkdir(exist_ok=True)
    return [make_phantom(i, SHAPE).save(folder / f"ph{i:03d}.nii.gz", labels / f"ph{i:03d}.nii.gz")[0] for i in range(n)]


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cases_done(report: Path) -> int:
    try:
        return len(json.loads(report.read_text())["cases"])
    except (OSError, ValueError, KeyError):
        return 0


def run_timed(args: list[str], report: Path) -> dict[str, Any]:
    """Run one process: wall seconds, peak RSS (MiB, ``ru_maxrss``) and RSS samples by cases done."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[int, float]] = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it, with its rusage, once it exits
        if pid:
            break
        rss = _rss_kib(proc.pid)
        if rss is not None:
            samples.append((_cases_done(report), rss / 1024))
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - start, "exit": proc.returncode, "peak_rss_mib": usage.ru_maxrss / 1024,
            "samples": samples}


def peak_rss_of(args: list[str]) -> dict[str, Any]:
    """Wall time and ``ru_maxrss`` of one process (os.wait4 reads it before the process is reaped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - start, "exit": proc.returncode, "peak_rss_mib": usage.ru_maxrss / 1024}


def cohort_run(scans_dir: Path, out: Path, engine: list[str]) -> dict[str, Any]:
    args = [*cli(), "infer", str(scans_dir), "--out-dir", str(out), *TEXTS, *engine, "-q"]
    res = run_timed(args, out / "segvol-rt-run.json")
    by_case: dict[int, float] = {}
    for done, rss in res.pop("samples"):
        by_case[done] = max(by_case.get(done, 0.0), rss)
    res["rss_mib_by_cases_done"] = by_case
    return res


def separate_runs(scans: list[Path], out: Path, engine: list[str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    runs = [peak_rss_of([*cli(), "infer", str(s), "--out", str(out / f"{s.name[:-7]}_segvol.nii.gz"), *TEXTS, *engine, "-q"])
            for s in scans]
    return {"wall_s": sum(r["wall_s"] for r in runs), "exit": max(r["exit"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def text_all_cost(scan: Path, artifacts: str | None, repeat: int) -> dict[str, float]:
    """Best seconds of run_infer (model loaded once, outside the timing) for one target and for --text all."""
    from segvol_rt.app.console import Reporter, load_runtime
    from segvol_rt.app.infer import InferOptions, run_infer

    rt = load_runtime(artifacts, "onnxruntime", "cpu", Reporter())
    out: dict[str, float] = {}
    for label, texts in (("one target (liver)", ("liver",)), ("--text all", ("all",))):
        best = float("inf")
        for i in range(repeat):
            opts = InferOptions(texts=texts, out=str(scan.parent.parent / f"all_{i}.nii.gz"))
            start = time.perf_counter()
            run_infer(scan, opts, lambda: rt)
            best = min(best, time.perf_counter() - start)
        out[label] = best
    return out


def isa() -> str:
    """The vector extensions the CPU reports (Linux: /proc/cpuinfo)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or "none of avx2/avx512"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--artifacts", default=None, help="artifacts directory (default: the demo model)")
    parser.add_argument("--skip-separate", action="store_true", help="only the cohort run (memory over many cases)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of the --text all comparison")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from segvol_rt.bench.machine import machine_info, machine_line

    engine = ["--backend", "onnxruntime", "--device", "cpu"] + (["--artifacts", args.artifacts] if args.artifacts else [])
    meta = machine_info()
    with tempfile.TemporaryDirectory(prefix="segvol-cohort-") as tmp:
        root = Path(tmp)
        scans = make_phantoms(root / "scans", args.cases)
        cohort = cohort_run(root / "scans", root / "cohort_out", engine)
        separate = None if args.skip_separate else separate_runs(scans, root / "separate_out", engine)
        text_all = text_all_cost(scans[0], args.artifacts, args.repeat)
    result = {"meta": meta, "cases": args.cases, "shape": SHAPE, "cohort": cohort, "separate": separate,
              "text_all": text_all}
    print_tables(result, machine_line(meta))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")


def print_tables(r: dict[str, Any], machine: str) -> None:
    n = r["cases"]
    print(f"{machine}\nISA: {isa()}\n\n{n} phantoms {r['shape']}, 2 targets, demo model unless --artifacts\n")
    print("| run | exit | wall s | s per case | peak RSS MiB |\n|---|---|---|---|---|")
    for name, res in (("one cohort process", r["cohort"]), (f"{n} separate processes", r["separate"])):
        if res is not None:
            print(f"| {name} | {res['exit']} | {res['wall_s']:.1f} | {res['wall_s'] / n:.2f} | {res['peak_rss_mib']:.0f} |")
    if r["separate"] is not None:
        saved = (r["separate"]["wall_s"] - r["cohort"]["wall_s"]) / n
        print(f"\ntime saved per case by the cohort: {saved:.2f} s")
    samples = r["cohort"]["rss_mib_by_cases_done"]
    if samples:
        shown = sorted(samples)
        picks = sorted({shown[0], shown[min(1, len(shown) - 1)], shown[len(shown) // 2], shown[-1]})
        print("\ncohort RSS (MiB) by cases done: " + ", ".join(f"{k}: {samples[k]:.0f}" for k in picks))
    print("\n| --text | best s (model loaded) |\n|---|---|")
    for label, sec in r["text_all"].items():
        print(f"| {label} | {sec:.2f} |")


if __name__ == "__main__":
    main()
