"""fp16 against fp32 image encoder on ONNX Runtime's CPU provider, side by side
in one run: per-window latency (batch 1) and the peak resident memory of a
process that loads the graph and encodes a window.

    python benchmarks/precision.py                       # full size, random weights (exported once)
    python benchmarks/precision.py --artifacts DIR       # artifacts from `segvol-rt export [--precision fp16]`
    python benchmarks/precision.py --repeat 5 --json benchmarks/results/precision.json

The fp16 graph is the artifacts' own variant when they have one, else it is
made once from the fp32 graph with the exporter's conversion
(:func:`segvol_rt.export.fp16.convert_graph`) into a cache beside them.

Latency: both sessions in one process, warmed up, then timed in alternation
(fp32, fp16, fp32, ...) so that a machine shared with other work slows both
alike; median, p90 and min per window. Peak RSS: a fresh process per
precision that opens the session with the runtime's own session options and
encodes one window; the kernel's ``ru_maxrss`` (``os.wait4``, through
``benchmarks/memory.py``'s launcher). Also the
relative L2 error of the fp16 embedding against the fp32 one. Prints a
markdown table; ``--json`` writes every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, help="artifacts directory (default: the full-size random-weight benchmark model)")
    p.add_argument("--config", default="official", choices=("official", "tiny"), help="benchmark model without --artifacts")
    p.add_argument("--repeat", type=int, default=5, help="timed windows per precision")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--child", choices=("rss", "latency"), help=argparse.SUPPRESS)
    p.add_argument("--graph", action="append", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the graphs --------------------------------------------------------------------------------


def graphs(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any]]:
    """{precision: image encoder ONNX path} and notes on where they came from."""
    from segvol_rt.io import spec as S
    from segvol_rt.io.artifacts import Artifacts

    if args.artifacts is None:
        from segvol_rt.export.reference.bench_model import prepare_bench_model

        bm = prepare_bench_model(args.config, log=lambda m: print(m, file=sys.stderr))
        root, source = bm.artifacts, f"{args.config} benchmark model ({bm.info.get('weights', '?')})"
    else:
        root, source = args.artifacts, str(args.artifacts)
    arts = Artifacts.load(root)
    fp32 = arts.graph_path(S.IMAGE_ENCODER)
    if "fp16" in arts.precisions:
        return {"fp32": fp32, "fp16": arts.graph_path(S.IMAGE_ENCODER, "fp16")}, {"model": source, "fp16": "the artifacts' variant"}
    from segvol_rt.export import fp16 as F
    from segvol_rt.io.digests import sha256_file

    cache = Path(root).parent / "fp16-bench" / sha256_file(fp32)[:16]
    target = cache / F.fp16_file(fp32.name)
    if not target.is_file():
        print(f"converting {fp32} to fp16 (once) ...", file=sys.stderr)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / (".tmp-" + target.name)
        F.convert_graph(fp32, tmp)
        os.replace(tmp, target)
    return {"fp32": fp32, "fp16": target}, {"model": source, "fp16": f"converted by {F.converter_version()} into {cache}"}


# -- children ---------------------------------------------------------------------------------


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    from segvol_rt._system import cpu_cores
    from segvol_rt.backends.onnxruntime import session_options

    return ort.InferenceSession(str(path), session_options(ort, threads or cpu_cores()), providers=["CPUExecutionProvider"])


def _window(session: Any) -> dict[str, Any]:
    import numpy as np

    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    return {session.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def rss_child(args: argparse.Namespace) -> None:
    """Load one graph and encode one window (the parent reads this process's peak RSS)."""
    session = _session(args.graph[0], args.threads)
    session.run(None, _window(session))


def latency_child(args: argparse.Namespace) -> None:
    """Both graphs in this process, timed in alternation; prints JSON."""
    import numpy as np

    sessions = dict(zip(PRECISIONS, (_session(p, args.threads) for p in args.graph)))
    feeds = _window(sessions["fp32"])
    outputs = {p: s.run(None, feeds)[0] for p, s in sessions.items()}
    for _ in range(max(0, args.warmup - 1)):
        for s in sessions.values():
            s.run(None, feeds)
    samples: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.repeat):
        for p, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            samples[p].append(time.perf_counter() - t0)
    a, b = (np.asarray(outputs[p], np.float64) for p in ("fp16", "fp32"))
    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    print(json.dumps({"samples_s": samples, "rel_l2_fp16_vs_fp32": rel}))


def _child(args: argparse.Namespace, kind: str, paths: Sequence[Path]) -> list[str]:
    cmd = [sys.executable, __file__, "--child", kind, "--repeat", str(args.repeat), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    for p in paths:
        cmd += ["--graph", str(p)]
    return cmd


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of ``cmd`` in a process of its own, through memory.py's small
    launcher (a child forked from this process would inherit our peak)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from memory import measure

    return float(measure(cmd)["peak_rss_mib"])


# -- the run ----------------------------------------------------------------------------------


def stats(samples: list[float]) -> dict[str, float]:
    from segvol_rt.bench.timing import LatencyStats

    s = LatencyStats(samples)
    return {"median_ms": s.p50 * 1e3, "p90_ms": s.p90 * 1e3, "min_ms": s.min * 1e3, "n": len(samples)}


def table(result: dict[str, Any]) -> str:
    from segvol_rt.bench.machine import machine_line

    lines = [
        "| precision | per window median ms | p90 ms | min ms | peak RSS MiB | graph MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in PRECISIONS:
        r = result["precisions"][p]
        lines.append(f"| {p} | {r['median_ms']:.0f} | {r['p90_ms']:.0f} | {r['min_ms']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['graph_mib']:.0f} |")
    f16, f32 = result["precisions"]["fp16"], result["precisions"]["fp32"]
    lines += [
        "",
        f"fp16 / fp32: latency x{f16['median_ms'] / f32['median_ms']:.2f}, peak RSS x{f16['peak_rss_mib'] / f32['peak_rss_mib']:.2f}; "
        f"embedding rel L2 fp16 vs fp32 {result['rel_l2_fp16_vs_fp32']:.2e}.",
        f"Model: {result['notes']['model']}; fp16 graph: {result['notes']['fp16']}.",
        f"Image encoder, batch 1, ONNX Runtime CPUExecutionProvider, {result['threads']} threads, "
        f"{result['repeat']} timed windows each after {result['warmup']} warm-up, alternating.",
        machine_line(result["meta"]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "rss":
        rss_child(args)
        return 0
    if args.child == "latency":
        latency_child(args)
        return 0
    from segvol_rt._system import cpu_cores
    from segvol_rt.bench.machine import machine_info

    paths, notes = graphs(args)
    print("peak RSS: one process per precision ...", file=sys.stderr)
    rss = {p: peak_rss_mib(_child(args, "rss", [paths[p]])) for p in PRECISIONS}
    print("latency: both precisions, alternating ...", file=sys.stderr)
    out = subprocess.run(_child(args, "latency", [paths[p] for p in PRECISIONS]), check=True, capture_output=True, text=True)
    timed = json.loads(out.stdout.strip().splitlines()[-1])
    result = {
        "precisions": {
            p: {**stats(timed["samples_s"][p]), "samples_ms": [s * 1e3 for s in timed["samples_s"][p]],
                "peak_rss_mib": rss[p], "graph_mib": paths[p].stat().st_size / 2**20, "graph": str(paths[p])}
            for p in PRECISIONS
        },
        "rel_l2_fp16_vs_fp32": timed["rel_l2_fp16_vs_fp32"],
        "threads": args.threads or cpu_cores(),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "notes": notes,
        "meta": machine_info(),
    }
    text = table(result)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
