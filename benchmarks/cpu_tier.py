#!/usr/bin/env python
"""The CPU tier side by side: ONNX Runtime fp32, OpenVINO fp32 and OpenVINO bf16.

    python benchmarks/cpu_tier.py windows              # full size: one 32x256x256 window per call
    python benchmarks/cpu_tier.py infer --targets 1 5  # the whole `segvol-rt infer` process, peak RSS

``windows``: the image encoder on one window (random weights), seconds per
window (median of ``--repeat``, after one warm-up), the relative L2 of each
embedding against ONNX Runtime fp32's, and each backend's load time with a
cold and a warm OpenVINO model cache. ``infer``: ``segvol-rt infer`` as a
process of its own per run (peak RSS from ``os.wait4``, as benchmarks/memory.py),
on ../shared/data's CT at 1.5 mm and the 512x512x200 raw phantom, plus the
official-style torch flow (benchmarks/memory.py's child) with ``--torch``.
The CPU model and its ISA flags head the report; figures taken on a shared
machine are ratios, read side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONTENDERS = {"onnxruntime fp32": ("onnxruntime", "fp32"), "openvino fp32": ("openvino", "fp32"),
              "openvino bf16": ("openvino", "bf16")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("windows", "infer"))
    p.add_argument("--config", default="official", choices=("official", "tiny"))
    p.add_argument("--cache-dir", type=Path, default=None, help="benchmark model cache (default: the bench's)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "segvol-rt-cpu-tier")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--targets", nargs="+", type=int, default=[1, 5])
    p.add_argument("--cases", nargs="+", default=["ct", "raw"], choices=("ct", "raw"))
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    p.add_argument("--torch", action="store_true", help="also the official-style torch flow (infer)")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def _open(artifacts: Path, backend: str, precision: str, cache: Path | None) -> tuple[Any, float]:
    from segvol_rt.backends.select import open_backend
    from segvol_rt.io.artifacts import Artifacts

    if backend == "openvino":
        from segvol_rt.backends.openvino import OpenVinoBackend

        t0 = time.perf_counter()
        return OpenVinoBackend(Artifacts.load(artifacts), precision=precision, cache_dir=cache), time.perf_counter() - t0
    t0 = time.perf_counter()
    opened, _ = open_backend(Artifacts.load(artifacts), backend, "cpu", precision=precision)
    return opened, time.perf_counter() - t0


def windows(args: argparse.Namespace, artifacts: Path) -> list[dict[str, Any]]:
    from segvol_rt.io import spec as S
    from segvol_rt.io.artifacts import Artifacts

    window = Artifacts.load(artifacts).config.spatial_size
    image = np.random.default_rng(0).random((1, 1, *window), dtype=np.float32)
    rows, reference = [], None
    for label in args.contenders:
        name, precision = CONTENDERS[label]
        cache = args.work / "ov-cache" / precision
        shutil.rmtree(cache, ignore_errors=True)
        backend, cold = _open(artifacts, name, precision, cache)
        backend.close()
        backend, warm = _open(artifacts, name, precision, cache)
        backend.run(S.IMAGE_ENCODER, {"image": image})  # warm-up
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = backend.run(S.IMAGE_ENCODER, {"image": image})["image_embedding"]
            times.append(time.perf_counter() - t0)
        reference = out if reference is None else reference
        rel = float(np.linalg.norm(out.astype(np.float64) - reference) / np.linalg.norm(reference.astype(np.float64)))
        rows.append({"contender": label, "s_per_window": statistics.median(times), "min_s": min(times),
                     "rel_l2_vs_first": rel, "load_cold_s": cold, "load_warm_s": warm})
        print(rows[-1], file=sys.stderr)
        backend.close()
    return rows


def infer(args: argparse.Namespace, artifacts: Path, checkpoint: Path) -> list[dict[str, Any]]:
    from cases import raw_phantom, resampled_ct
    from memory import measure

    from segvol_rt.bench.scans import requests_for

    scans = {"ct": resampled_ct(args.work), "raw": raw_phantom(args.work)}
    rows = []
    for case in args.cases:
        for n in args.targets:
            prompts: list[str] = []
            for r in requests_for((64, 64, 64), n):  # n distinct phrases; the ROI is the model's fixed blob
                prompts += ["--text", str(r.get("text") or "liver")]
            cmds = {label: ["segvol-rt", "infer", str(scans[case]), "--artifacts", str(artifacts), *prompts,
                            "--backend", CONTENDERS[label][0], "--device", "cpu", "--precision", CONTENDERS[label][1],
                            "--out", str(args.work / "mask.nii.gz"), "--quiet"] for label in args.contenders}
            if args.torch and n == 1:
                cmds["torch official-style"] = [sys.executable, str(Path(__file__).parent / "memory.py"), "--child",
                                                "torch", "--artifacts", str(artifacts), "--checkpoint", str(checkpoint),
                                                "--scan", str(scans[case]), "--text", "liver"]
            for label, cmd in cmds.items():
                r = measure(cmd)
                rows.append({"case": case, "targets": n, "contender": label, **r})
                print(rows[-1], file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from segvol_rt.bench.machine import machine_info, machine_line
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    args.work.mkdir(parents=True, exist_ok=True)
    bm = prepare_bench_model(args.config, cache_dir=args.cache_dir)
    meta = machine_info()
    print(f"# segvol-rt CPU tier ({args.part}, {args.config})\n\n{machine_line(meta)}\n")
    if args.part == "windows":
        rows = windows(args, bm.artifacts)
        print("| contender | s per window (median) | min | rel L2 vs ORT fp32 | load s (cold cache) | load s (warm) |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['contender']} | {r['s_per_window']:.2f} | {r['min_s']:.2f} | {r['rel_l2_vs_first']:.1e} | "
                  f"{r['load_cold_s']:.2f} | {r['load_warm_s']:.2f} |")
    else:
        rows = infer(args, bm.artifacts, bm.checkpoint)
        print("| case | targets | contender | wall s | peak RSS MiB |\n|---|---:|---|---:|---:|")
        for r in rows:
            print(f"| {r['case']} | {r['targets']} | {r['contender']} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "part": args.part, "rows": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
