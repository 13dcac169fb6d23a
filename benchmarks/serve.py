"""What serving adds, side by side in one run: a follow-up prompt through
``segvol-rt serve`` (Triton via PyTriton, loopback HTTP) against the same
prompt on a local :class:`SegVolRuntime`, and the upload of a 512x512x200
int16 scan (bytes on the wire, compression, seconds).

    python benchmarks/serve.py                          # demo model
    python benchmarks/serve.py --config official        # full size, random weights (exported once)
    python benchmarks/serve.py --json out.json
    python benchmarks/serve.py --config official --backend openvino --precision bf16   # a CPU server

A *follow-up* prompt is one on a volume that already had a prompt: the
zoom-out embedding and the window embeddings are cached on both sides, so the
difference is the serving path (HTTP, JSON, PyTriton's IPC, mask packing).
Both sides use the same threads, artifacts, volume and prompt, and the masks
are checked equal. Warm-up first; the two sides are called in turn,
``--repeat`` times each; median, p90 and min. The upload row times ``open_session`` (compress, send in chunks,
server-side decompression and preprocessing) against a local ``set_volume``
of the same array. Peak memory: the server process's RSS high-water mark
(VmHWM) and this process's, which holds the local runtime.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt.bench.machine import machine_info, machine_line
from segvol_rt.io.artifacts import PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
UPLOAD_SHAPE = (512, 512, 200)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="demo", choices=("demo", "official", "tiny"),
                   help="demo: the shipped model; official/tiny: random-weight benchmark models (exported once)")
    p.add_argument("--artifacts", type=Path, help="artifacts directory (overrides --config)")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default="auto", help="backend of both sides, e.g. openvino (default: auto)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="what both sides compute in, e.g. bf16 with --backend openvino (default: the backend's)")
    p.add_argument("--skip-upload", action="store_true", help="leave out the 512x512x200 upload row")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def artifacts_for(args: argparse.Namespace) -> Path:
    if args.artifacts is not None:
        return args.artifacts
    if args.config == "demo":
        from tests.support.serving import DEMO_ARTIFACTS

        return DEMO_ARTIFACTS
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    return prepare_bench_model(args.config, log=lambda m: print(m, file=sys.stderr)).artifacts


def interleaved(fns: Sequence[Callable[[], Any]], repeat: int) -> tuple[list[list[float]], list[Any]]:
    """Seconds per call of each function, called in turn (so load on the machine
    falls on both alike), after one warm-up call each; and each one's last result."""
    last = [fn() for fn in fns]
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            last[i] = fn()
            out[i].append(time.perf_counter() - t0)
    return out, last


def summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return {"median_s": statistics.median(samples), "p90_s": q[8], "min_s": min(samples), "n": len(samples)}


def peak_rss_mib(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scan_for(artifacts: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A phantom sized for the model (the demo's default, or 120x126x164 at
    full size) and a follow-up prompt on it: text + the liver's box."""
    from segvol_rt.demo.phantom import make_phantom

    manifest = json.loads((artifacts / "manifest.json").read_text())
    full = manifest.get("config", {}).get("spatial_size", [32, 128, 128])[1] >= 256
    ph = make_phantom(0, shape=(120, 126, 164) if full else None)
    idx = np.argwhere(ph.mask("liver"))
    box = tuple(int(v) for v in (*idx.min(0), *idx.max(0)))
    return ph.image, ph.affine, {"text": "liver", "box": box}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from segvol_rt.client import SegVolClient
    from segvol_rt.runtime import SegVolRuntime
    from tests.support import serving

    artifacts = artifacts_for(args)
    image, affine, prompt = scan_for(artifacts)
    results: dict[str, Any] = {"artifacts": str(artifacts), "threads": args.threads, "device": args.device,
                               "backend": args.backend, "precision": args.precision, "machine": machine_info(),
                               "scan": list(image.shape), "prompt": {k: list(v) if isinstance(v, tuple) else v for k, v in prompt.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        server = serving.ServerProcess.started(serving.serve_venv(), Path(tmp), [
            "--instances", "1", "--threads", str(args.threads), "--device", args.device, "--backend", args.backend,
            *(["--precision", args.precision] if args.precision else [])], artifacts=artifacts, timeout_s=300)
        try:
            local = SegVolRuntime.load(artifacts, backend=args.backend, device=args.device, threads=args.threads,
                                       precision=args.precision)
            results["local_backend"] = local.backend.describe()
            local.set_volume(image, affine)
            outside: dict[str, list[float]] = {"local": [], "served": []}  # wall time minus the runtime's stages

            def timed(name: str, call: Callable[[], Any]) -> Callable[[], Any]:
                def run_once() -> Any:
                    t0 = time.perf_counter()
                    seg = call()
                    outside[name].append(time.perf_counter() - t0 - sum(seg.timings.values()))
                    return seg
                return run_once

            with SegVolClient(server.url) as client, client.open_session(image, affine) as session:
                (local_t, served_t), (local_seg, served_seg) = interleaved(
                    [timed("local", lambda: local.segment(**prompt)), timed("served", lambda: session.segment(**prompt))],
                    args.repeat)
            if not np.array_equal(served_seg.mask, np.asarray(local_seg.mask)):
                raise SystemExit("served and local masks differ")
            results["follow_up"] = {"local": summary(local_t), "served": summary(served_t),
                                    "added_median_s": statistics.median(served_t) - statistics.median(local_t),
                                    # the serving path alone: each call's wall time minus its pipeline stages
                                    "outside_pipeline_median_s": {k: statistics.median(v[1:]) for k, v in outside.items()}}
            if not args.skip_upload:
                results["upload"] = upload_row(server.url, local)
            results["peak_rss_mib"] = {"server": peak_rss_mib(server.proc.pid), "client+local": peak_rss_mib()}
        finally:
            server.stop()
    return results


def upload_row(url: str, local: Any) -> dict[str, Any]:
    """open_session of a 512x512x200 int16 phantom against a local set_volume of it."""
    from segvol_rt.client import SegVolClient
    from segvol_rt.demo.phantom import make_phantom

    ph = make_phantom(1, shape=UPLOAD_SHAPE)
    t0 = time.perf_counter()
    local.set_volume(ph.image, ph.affine)
    local_s = time.perf_counter() - t0
    local.release_volume()
    with SegVolClient(url) as client:
        t0 = time.perf_counter()
        session = client.open_session(ph.image, ph.affine)
        open_s = time.perf_counter() - t0
        up = session.upload
        session.close()
    return {"shape": list(UPLOAD_SHAPE), "dtype": str(ph.image.dtype), "raw_mb": up.raw_bytes / 1e6,
            "compressed_mb": up.compressed_bytes / 1e6, "ratio": up.raw_bytes / up.compressed_bytes, "chunks": up.chunks,
            "compress_s": up.compress_seconds, "open_session_s": open_s, "local_set_volume_s": local_s,
            "float32_mb_uncompressed": np.prod(UPLOAD_SHAPE) * 4 / 1e6}


def table(r: dict[str, Any]) -> str:
    f = r["follow_up"]
    rows = [machine_line(r["machine"]), f"\nboth sides: {r['local_backend']}\n",
            "| follow-up prompt | median s | p90 s | min s |", "|---|---:|---:|---:|"]
    for name in ("local", "served"):
        s = f[name]
        rows.append(f"| {name} | {s['median_s']:.3f} | {s['p90_s']:.3f} | {s['min_s']:.3f} |")
    o = f["outside_pipeline_median_s"]
    rows.append(f"\nadded by serving (median wall, served - local): {f['added_median_s'] * 1000:.0f} ms; time outside the "
                f"pipeline's stages per call: served {o['served'] * 1000:.1f} ms, local {o['local'] * 1000:.1f} ms")
    if "upload" in r:
        u = r["upload"]
        rows += ["", "| upload 512x512x200 | value |", "|---|---:|",
                 f"| raw int16 | {u['raw_mb']:.1f} MB (float32 would be {u['float32_mb_uncompressed']:.0f} MB) |",
                 f"| compressed (zlib level 1) | {u['compressed_mb']:.1f} MB ({u['ratio']:.2f}x, {u['chunks']} chunks) |",
                 f"| compress | {u['compress_s']:.2f} s |",
                 f"| open_session (compress + send + server preprocess) | {u['open_session_s']:.2f} s |",
                 f"| local set_volume of the same array | {u['local_set_volume_s']:.2f} s |"]
    m = r["peak_rss_mib"]
    rows.append(f"\npeak RSS: server {m['server']:.0f} MiB, this process (client + local runtime) {m['client+local']:.0f} MiB")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    results = run(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
