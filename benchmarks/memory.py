"""Peak memory (RSS) of a whole segmentation, side by side: ``segvol-rt infer``
against the official-style torch flow, each in a process of its own, on the
same scan, model and prompt, on this machine.

    python benchmarks/memory.py                         # full size, random weights, 120x126x164 phantom
    python benchmarks/memory.py --config tiny --repeat 1
    python benchmarks/memory.py --scan ct.nii.gz --artifacts DIR --checkpoint CKPT

Each contender runs ``--repeat`` times as a fresh process. The kernel reports
the process's peak resident set (``ru_maxrss`` of ``os.wait4``), which counts
everything the process touched: the interpreter, the libraries, the model
weights, ONNX Runtime's arena or torch's allocator, and the volumes. Wall
time is reported too, but this is a memory benchmark: see ``bench.py`` for
latency.

The torch contender is the official flow as the other benchmarks run it
(:mod:`segvol_rt.export.reference.bench`): our torch SegVol called as the
official ``SegVol.forward`` is, text re-encoded on every call, one
zoom-out-zoom-in per target, on the crop and zoom-out images of our
preprocessing (the official MONAI preprocessing needs more memory still).
Prints a markdown table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SCAN = (120, 126, 164)  # (I, J, K), the scan shape of the measurement


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="official", choices=("official", "tiny", "demo"),
                   help="benchmark model when --artifacts is not given (random weights; demo: the shipped model)")
    p.add_argument("--artifacts", type=Path, help="artifacts directory (from segvol-rt export)")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint the artifacts came from (torch contender)")
    p.add_argument("--scan", type=Path, help="NIfTI scan (default: a synthetic phantom of 120x126x164)")
    p.add_argument("--text", action="extend", nargs="+", help="phrases, one target each (default: liver; "
                   "repeat the option or list several)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads of both contenders (default: all cores)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", choices=("torch",), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.text = args.text or ["liver"]
    return args


# -- the contenders ------------------------------------------------------------------


def torch_child(args: argparse.Namespace) -> None:
    """The official-style torch flow in this process (run by the parent as a child)."""
    import torch

    from segvol_rt.backends.torch import TorchBackend
    from segvol_rt.export.checkpoint import build_model
    from segvol_rt.export.reference.bench import OfficialStyleModel, official_targets, run_official
    from segvol_rt.io.artifacts import Artifacts
    from segvol_rt.runtime import SegVolRuntime

    if args.threads:
        torch.set_num_threads(args.threads)
    artifacts = Artifacts.load(args.artifacts)
    model, _ = build_model(args.checkpoint)
    # the runtime only preprocesses and maps the prompt here; the torch model does all the work
    rt = SegVolRuntime(artifacts, TorchBackend(artifacts, model=model), "torch")
    rt.set_volume(args.scan)
    wrapper = OfficialStyleModel(model.eval(), artifacts.tokenizer(), artifacts.prompt_template, "cpu")
    crop = torch.from_numpy(rt.crop_image.copy())
    zoom = torch.from_numpy(rt.zoom_image.copy())
    run_official(wrapper, crop, zoom, official_targets(rt, [{"text": t} for t in args.text]))


def commands(args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    threads = ["--threads", str(args.threads)] if args.threads else []
    texts = [x for t in args.text for x in ("--text", t)]
    exe = shutil.which("segvol-rt")
    ours = [exe] if exe else [sys.executable, "-m", "segvol_rt"]
    ours += ["infer", str(args.scan), "--artifacts", str(args.artifacts), *texts,
             "--out", str(out / "mask.nii.gz"), "--quiet", *threads]
    torch_cmd = [sys.executable, __file__, "--child", "torch", "--artifacts", str(args.artifacts),
                 "--checkpoint", str(args.checkpoint), "--scan", str(args.scan), *texts, *threads]
    return {"segvol-rt infer (ONNX Runtime CPU)": ours, "torch official-style (CPU)": torch_cmd}


# Linux keeps a process's peak RSS across exec, so a child forked straight from
# this (large) process would report at least our own peak: a small launcher
# forks the contender instead and reports the contender's own peak.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"rss_kib": usage.ru_maxrss, "wall_s": time.perf_counter() - t0, "user_s": usage.ru_utime,
                  "sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
                  "code": os.waitstatus_to_exitcode(status), "err": err.decode(errors="replace")[-2000:]}))
"""


def measure(cmd: list[str]) -> dict[str, float]:
    """Peak RSS (MiB), wall seconds, CPU seconds in user and kernel mode and minor
    page faults of one run of ``cmd`` in a process of its own. The kernel's share
    is mostly page faults: on a VM whose host backs guest memory lazily (as
    this project's machines, see benchmarks/README.md) each fresh page costs
    tens of microseconds, so a process that touches more memory pays for it in
    wall time too."""
    out = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    run = json.loads(out.stdout)
    if run["code"] != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{run['err']}")
    return {"peak_rss_mib": run["rss_kib"] / 1024, "wall_s": run["wall_s"], "user_s": run["user_s"],
            "sys_s": run["sys_s"], "minor_faults": run["minor_faults"]}


# -- setup and report -----------------------------------------------------------------


def prepare(args: argparse.Namespace, tmp: Path) -> None:
    """Fill in the artifacts, checkpoint and scan that were not given."""
    if args.artifacts is None:
        from segvol_rt.export.reference.bench_model import prepare_bench_model

        bm = prepare_bench_model(args.config, log=lambda m: print(m, file=sys.stderr))
        args.artifacts, args.checkpoint = bm.artifacts, bm.checkpoint
    if args.checkpoint is None:
        raise SystemExit("--checkpoint is needed with --artifacts (the torch contender builds its model from it)")
    if args.scan is None:
        from segvol_rt.bench.scans import synthetic_scan, write_scan

        phantom, _ = synthetic_scan(DEFAULT_SCAN, fill_air=False)
        args.scan = write_scan(tmp / "scan.nii.gz", phantom)


def machine() -> dict[str, Any]:
    """The machine's facts, and segvol-rt's bytecode compiled ahead of the runs (as installed)."""
    from segvol_rt.bench.machine import compile_bytecode, machine_info

    return {**machine_info(), "bytecode": compile_bytecode()}


def table(results: dict[str, list[dict[str, float]]], meta: dict[str, Any]) -> str:
    lines = [f"# segvol-rt memory benchmark ({meta['scan']}, model {meta['model']})", "",
             meta["machine"]["bytecode"], "",
             "| contender | peak RSS MiB (median) | max | wall s (median) | runs |", "|---|---:|---:|---:|---:|"]
    for name, runs in results.items():
        rss = [r["peak_rss_mib"] for r in runs]
        lines.append(f"| {name} | {statistics.median(rss):.0f} | {max(rss):.0f} | "
                     f"{statistics.median(r['wall_s'] for r in runs):.1f} | {len(runs)} |")
    names = list(results)
    if len(names) == 2:
        a, b = (statistics.median(r["peak_rss_mib"] for r in results[n]) for n in names)
        lines += ["", f"{names[0]} / {names[1]}: {a / b:.2f}x the peak RSS"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "torch":
        torch_child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="segvol-rt-memory-") as tmp:
        prepare(args, Path(tmp))
        cmds = commands(args, Path(tmp))
        meta = {"scan": f"{args.scan.name}", "model": str(args.artifacts), "text": args.text,
                "threads": args.threads, "machine": machine()}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cmds}
        for _ in range(args.repeat):  # interleaved rounds, as the latency benchmarks
            for name, cmd in cmds.items():
                results[name].append(measure(cmd))
    print(table(results, meta))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
