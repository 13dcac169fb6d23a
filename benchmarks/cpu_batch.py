#!/usr/bin/env python
"""The prompt decoder's batch on the CPU, per CPU backend: decode seconds, peak
RSS and the mask, at each batch, on a real-shaped case.

    python benchmarks/cpu_batch.py                          # full size, random weights, the CT at 1.5 mm
    python benchmarks/cpu_batch.py --config tiny --batches 1 8

Each (backend, batch) runs ``segment`` in a fresh process (the kernel's peak
RSS of that process, ``ru_maxrss``); masks are compared against the first
batch's of the same backend. The decoder batch is forced through the
backend's declared ``cpu_batches``. Prints a markdown table, the CPU model
and ISA flags, and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BACKENDS = {"onnxruntime": ("onnxruntime", "fp32"), "openvino": ("openvino", "fp32"),
            "openvino-bf16": ("openvino", "bf16")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="official", choices=("official", "tiny"))
    p.add_argument("--cache-dir", type=Path, default=None, help="benchmark model cache (default: the bench's)")
    p.add_argument("--work", type=Path, default=Path("/tmp/segvol-rt-cpu-batch"))
    p.add_argument("--scan", type=Path, help="NIfTI scan (default: ../shared/data's CT at 1.5 mm)")
    p.add_argument("--text", default="aorta")
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"], choices=sorted(BACKENDS))
    p.add_argument("--batches", nargs="+", type=int, default=[8, 4, 2, 1])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", nargs=3, metavar=("BACKEND", "BATCH", "ARTIFACTS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """One segment in this process; prints its figures as JSON."""
    import numpy as np

    from segvol_rt.io import spec as S
    from segvol_rt.runtime import SegVolRuntime

    label, batch, artifacts = args.child
    name, precision = BACKENDS[label]
    t0 = time.perf_counter()
    rt = SegVolRuntime.load(artifacts, backend=name, device="cpu", precision=precision, threads=args.threads)
    load_s = time.perf_counter() - t0
    rt.backend.cpu_batches = {S.PROMPT_DECODER: int(batch)}
    rt.set_volume(str(args.scan))
    t0 = time.perf_counter()
    seg = rt.segment(text=args.text)
    seconds = time.perf_counter() - t0
    timings = rt.stats["timings"]
    mask = np.ascontiguousarray(seg.mask)
    np.save(args.work / f"mask_{label}_{batch}.npy", mask)
    print(json.dumps({
        "load_s": load_s, "segment_s": seconds,
        "decode_s": sum(v for k, v in timings.items() if k.startswith("decode")),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "voxels": int(mask.sum()), "sha256": hashlib.sha256(mask.tobytes()).hexdigest()[:16],
    }))


def run_child(args: argparse.Namespace, label: str, batch: int, artifacts: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", label, str(batch), str(artifacts), "--scan", str(args.scan),
           "--text", args.text, "--work", str(args.work)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{label} batch {batch} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    from cases import resampled_ct

    from segvol_rt.bench.machine import machine_info, machine_line
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    args.work.mkdir(parents=True, exist_ok=True)
    args.scan = args.scan or resampled_ct(args.work)
    artifacts = prepare_bench_model(args.config, cache_dir=args.cache_dir).artifacts
    meta = machine_info()
    rows: list[dict[str, Any]] = []
    for label in args.backends:
        for batch in args.batches:
            r = run_child(args, label, batch, artifacts)
            r.update(backend=label, batch=batch)
            rows.append(r)
            print(f"{label} batch {batch}: {r}", file=sys.stderr)
    lines = [f"# prompt decoder batch on the CPU ({args.scan.name}, {args.config}, --text {args.text})", "",
             machine_line(meta), "",
             "| backend | decoder batch | decode s | segment s | peak RSS MiB | mask voxels | mask = first batch's |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        first = next(x for x in rows if x["backend"] == r["backend"])
        lines.append(f"| {r['backend']} | {r['batch']} | {r['decode_s']:.2f} | {r['segment_s']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['voxels']} | {'yes' if r['sha256'] == first['sha256'] else 'NO'} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
