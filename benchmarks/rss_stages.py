#!/usr/bin/env python
"""Where the peak RSS of one ``segvol-rt infer`` goes: the resident set over the
stages of the run, in this process.

    python benchmarks/rss_stages.py SCAN --artifacts DIR --backend openvino --precision fp32 --text aorta
    python benchmarks/rss_stages.py --case ct --backend onnxruntime   # cpu_tier's CT at 1.5 mm, full size

Runs the ``segvol-rt infer`` command (:func:`segvol_rt.app.cli.main`) in this
process with a thread that samples ``VmRSS`` of /proc/self/status every
``--every`` seconds, and labels each sample with the stage in progress: the
reading of the scan, the opening of each graph (ONNX Runtime's session,
OpenVINO's compile), the preprocessing, every graph call, the writing. Prints
per stage the RSS when it began, its highest sample and the RSS when it ended,
then the kernel's high-water mark (``VmHWM``) and the stage in progress when
the highest sample was taken. Linux only. Stages are found by wrapping the
backends' and the runtime's methods, so a stage the wrappers do not name is
reported under the one before it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/self/status has no {field} (Linux only)")


class Sampler:
    """VmRSS samples (seconds, KiB, stage) taken every ``every`` seconds, and at every stage change."""

    def __init__(self, every: float):
        self.every = every
        self.stage = "start"
        self.samples: list[tuple[float, int, str]] = []
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def mark(self) -> None:
        self.samples.append((time.perf_counter() - self._t0, status_kib("VmRSS"), self.stage))

    def enter(self, stage: str) -> str:
        self.mark()
        before, self.stage = self.stage, stage
        self.mark()
        return before

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.mark()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.mark()


def wrap(owner: Any, name: str, sampler: Sampler, label: Callable[..., str]) -> None:
    """Label the calls of ``owner.name`` with ``label(*args)``; the stage before resumes after."""
    inner = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before = sampler.enter(label(*args, **kwargs))
        try:
            return inner(*args, **kwargs)
        finally:
            sampler.enter(before)

    setattr(owner, name, wrapped)


def instrument(sampler: Sampler) -> None:
    """Wrap the stages of an infer run (the backends' graph opening and calls, the runtime's volume)."""
    import segvol_rt.app.infer as infer_module
    from segvol_rt.backends.base import Backend
    from segvol_rt.backends.onnxruntime import OnnxRuntimeBackend
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.runtime import SegVolRuntime

    wrap(Artifacts, "verify", sampler, lambda *a, **k: "verify artifacts")
    wrap(OnnxRuntimeBackend, "_open", sampler, lambda self, graph: f"open {graph}")
    try:
        from segvol_rt.backends.openvino import OpenVinoBackend

        wrap(OpenVinoBackend, "_compile", sampler, lambda self, graph: f"open {graph}")
    except ImportError:
        pass
    wrap(Backend, "run", sampler, lambda self, graph, feeds: f"run {graph}")
    wrap(SegVolRuntime, "set_volume", sampler, lambda *a, **k: "set_volume (preprocess)")
    wrap(infer_module, "write_outputs", sampler, lambda *a, **k: "write outputs")


def stages(samples: Sequence[tuple[float, int, str]]) -> list[dict[str, Any]]:
    """Consecutive runs of one stage label: start, max and end RSS (MiB), seconds."""
    out: list[dict[str, Any]] = []
    for t, kib, stage in samples:
        mib = kib / 1024
        if out and out[-1]["stage"] == stage:
            row = out[-1]
            row.update(max_mib=max(row["max_mib"], mib), end_mib=mib, end_s=t)
        else:
            out.append({"stage": stage, "start_mib": mib, "max_mib": mib, "end_mib": mib, "start_s": t, "end_s": t})
    merged: list[dict[str, Any]] = []  # repeated graph calls in a row become one line with a count
    for row in out:
        prev = merged[-1] if merged else None
        if prev and prev["stage"] == row["stage"]:
            prev.update(max_mib=max(prev["max_mib"], row["max_mib"]), end_mib=row["end_mib"], end_s=row["end_s"],
                        calls=prev["calls"] + 1)
        else:
            merged.append({**row, "calls": 1})
    return [r for r in merged if r["end_s"] > r["start_s"] or r["stage"] != "start"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scan", nargs="?", type=Path, help="NIfTI scan (default: --case)")
    p.add_argument("--case", default="ct", choices=("ct", "raw"), help="cpu_tier's case when no scan is given")
    p.add_argument("--work", type=Path, default=Path("/tmp/segvol-rt-cpu-tier"))
    p.add_argument("--artifacts", type=Path, help="default: the full-size random-weight bench model")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--text", nargs="+", default=["aorta"])
    p.add_argument("--every", type=float, default=0.02, help="sampling period, seconds")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.artifacts is None:
        from segvol_rt.export.reference.bench_model import prepare_bench_model

        args.artifacts = prepare_bench_model("official").artifacts
    if args.scan is None:
        from cases import raw_phantom, resampled_ct

        args.scan = resampled_ct(args.work) if args.case == "ct" else raw_phantom(args.work)
    sampler = Sampler(args.every)
    sampler.enter("imports")
    from segvol_rt.app import cli

    instrument(sampler)
    sampler.enter("cli")
    sampler.start()
    texts = [x for t in args.text for x in ("--text", t)]
    cmd = ["infer", str(args.scan), "--artifacts", str(args.artifacts), *texts, "--backend", args.backend,
           "--device", "cpu", "--precision", args.precision, "--out", str(args.work / "rss-stages-mask.nii.gz"),
           "--quiet"]
    try:
        cli.main(cmd)
    except SystemExit as exc:
        if exc.code:
            raise
    sampler.stop()
    rows = stages(sampler.samples)
    hwm = status_kib("VmHWM") / 1024
    peak = max(sampler.samples, key=lambda s: s[1])
    print(f"# RSS by stage: segvol-rt infer {args.scan.name} --backend {args.backend} --precision {args.precision}\n")
    print("| stage | calls | s | RSS at start MiB | max MiB | at end MiB |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['calls']} | {r['end_s'] - r['start_s']:.1f} | {r['start_mib']:.0f} | "
              f"{r['max_mib']:.0f} | {r['end_mib']:.0f} |")
    print(f"\nVmHWM {hwm:.0f} MiB; highest sample {peak[1] / 1024:.0f} MiB at {peak[0]:.1f} s, during {peak[2]!r}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "hwm_mib": hwm,
                                         "stages": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
