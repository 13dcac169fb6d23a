#!/usr/bin/env python
"""The CPU tier side by side: ONNX Runtime fp32, OpenVINO fp32 and OpenVINO bf16.

    python benchmarks/cpu_tier.py windows              # full size: one 32x256x256 window per call
    python benchmarks/cpu_tier.py infer --targets 1 5  # the whole `segvol-rt infer` process, peak RSS

``windows``: the image encoder on one window (random weights), seconds per
window (median of ``--repeat``, after one warm-up), the relative L2 of each
embedding against ONNX Runtime fp32's, and each backend's load time with a
cold and a warm OpenVINO model cache. ``infer``: ``segvol-rt infer`` as a
process of its own per run (peak RSS, CPU seconds in user and kernel mode and
minor page faults from ``os.wait4``, as benchmarks/memory.py),
on ../shared/data's CT at 1.5 mm and the 512x512x200 raw phantom, plus the
official-style torch flow (benchmarks/memory.py's child, the same phrases) with
``--torch`` and the C++ SDK's sample app (``segvol-rt-infer``, each contender's
backend and precision) with ``--cpp cpp/build``, and another install's ``segvol-rt`` (an
earlier commit's, say) with ``--baseline NAME=EXE``; ``--repeat`` interleaved rounds, and each
label map compared with the first contender's.
The CPU model and its ISA flags head the report; figures taken on a shared
machine are ratios, read side by side. With ``--torch`` the report ends with
issue 21's targets per row (:data:`SPEEDUP_TARGETS`, :data:`RSS_TARGET`): met
or not, judged only on a CPU with AMX, for which they are set.
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

TORCH = "torch official-style"  # benchmarks/memory.py's child, with --torch
CPP = "C++"  # cpp/build/segvol-rt-infer, with --cpp
CONTENDERS = {"onnxruntime fp32": ("onnxruntime", "fp32"), "openvino fp32": ("openvino", "fp32"),
              "openvino bf16": ("openvino", "bf16")}
# Issue 21's targets for the whole `segvol-rt infer` process, set for a CPU with AMX: speed
# against the official-style torch flow on the same case (per contender), and peak RSS
# against the torch flow's (every contender).
SPEEDUP_TARGETS = {"openvino bf16": 5.0, "openvino fp32": 2.3}
RSS_TARGET = 0.7


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("windows", "infer"))
    p.add_argument("--config", default="official", choices=("official", "tiny", "demo"),
                   help="random weights at full or tiny size, or the shipped demo model")
    p.add_argument("--cache-dir", type=Path, default=None, help="benchmark model cache (default: the bench's)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "segvol-rt-cpu-tier")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--targets", nargs="+", type=int, default=[1, 5])
    p.add_argument("--cases", nargs="+", default=["ct", "raw"], choices=("ct", "raw"))
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    p.add_argument("--torch", action="store_true", help="also the official-style torch flow (infer)")
    p.add_argument("--cpp", type=Path, default=None, metavar="BUILD",
                   help="also the C++ app of this build (cpp/build) for every contender (infer)")
    p.add_argument("--baseline", type=_baseline, default=None, metavar="NAME=EXE",
                   help="also this other install's segvol-rt (e.g. an earlier commit's venv/bin/segvol-rt) for "
                        "every contender, its rows named 'NAME <contender>' (infer)")
    p.add_argument("--cold-cache", action="store_true",
                   help="infer: an empty user cache (OpenVINO's compiled models, the records of checked "
                        "files) before every run of segvol-rt (a first run on a machine)")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def _baseline(text: str) -> tuple[str, Path]:
    """``NAME=EXE`` -> (NAME, EXE): the rows' prefix and the other install's segvol-rt."""
    name, sep, exe = text.partition("=")
    if not (sep and name.strip() and exe):
        raise argparse.ArgumentTypeError(f"expected NAME=EXE (e.g. before=/venv/bin/segvol-rt), got {text!r}")
    if not Path(exe).is_file():
        raise argparse.ArgumentTypeError(f"{exe} is not a file")
    return name.strip(), Path(exe)


def _skipped(contenders: Sequence[str]) -> dict[str, str]:
    """Contender -> why it cannot run on this CPU (OpenVINO's bf16 without BF16, or any
    OpenVINO contender without the openvino extra: the backend's refusal line), for the
    contenders that cannot."""
    from segvol_rt.backends.openvino import precision_problem

    found = {label: precision_problem(CONTENDERS[label][1]) for label in contenders if CONTENDERS[label][0] == "openvino"}
    return {label: problem for label, problem in found.items() if problem is not None}


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


def _phrases(n: int) -> list[str]:
    """``n`` distinct target phrases (the benchmark's; the ROI is the model's fixed blob)."""
    from segvol_rt.bench.scans import requests_for

    return [str(r.get("text") or "liver") for r in requests_for((64, 64, 64), n)]


def _commands(args: argparse.Namespace, artifacts: Path, checkpoint: Path, scan: Path,
              phrases: Sequence[str]) -> dict[str, list[str]]:
    """One process per contender: ``segvol-rt infer`` (and with ``--cpp`` the C++ app)
    writing its own label map, and the official-style torch flow (one full
    zoom-out-zoom-in per phrase)."""
    texts = [x for t in phrases for x in ("--text", t)]
    # segvol-rt infer, with --cpp the C++ sample app and with --baseline another install's
    # segvol-rt: the same scan, phrases and backend
    programs = {"": ["segvol-rt", "infer"], **({f"{CPP} ": [str(args.cpp / "segvol-rt-infer")]} if args.cpp else {}),
                **({f"{args.baseline[0]} ": [str(args.baseline[1]), "infer"]} if args.baseline else {})}
    cmds = {f"{prefix}{label}": [*_cache_env(args), *program, str(scan), "--artifacts", str(artifacts), *texts,
                                 "--backend", CONTENDERS[label][0], "--device", "cpu", "--precision", CONTENDERS[label][1],
                                 "--out", str(_mask_path(args, f"{prefix}{label}")), "--quiet"]
            for prefix, program in programs.items() for label in args.contenders}
    if args.torch:
        cmds[TORCH] = [sys.executable, str(Path(__file__).parent / "memory.py"), "--child", "torch",
                       "--artifacts", str(artifacts), "--checkpoint", str(checkpoint), "--scan", str(scan), *texts]
    return cmds


def _cache_env(args: argparse.Namespace) -> list[str]:
    """With ``--cold-cache``, segvol-rt's runs get a user cache of their own that
    :func:`infer` empties before every run: no OpenVINO compiled model and no
    record of checked files (segvol_rt.io.digests), so every graph is hashed
    (``env`` execs the command: the measured process is still the contender)."""
    return ["env", f"SEGVOL_RT_CACHE={args.work / 'cold-cache'}"] if args.cold_cache else []


def _mask_path(args: argparse.Namespace, label: str) -> Path:
    return args.work / f"mask-{label.replace(' ', '-')}.nii.gz"


def _voxels_differing(a: Path, b: Path) -> int:
    import nibabel as nib

    return int(np.count_nonzero(np.asanyarray(nib.load(a).dataobj) != np.asanyarray(nib.load(b).dataobj)))


def infer(args: argparse.Namespace, artifacts: Path, checkpoint: Path) -> list[dict[str, Any]]:
    """Per case and target count: ``--repeat`` interleaved rounds of every contender;
    median and p90 wall, median peak RSS, both against the torch flow's, and the
    label map's voxels differing from the first contender's (last round)."""
    from cases import raw_phantom, resampled_ct
    from memory import measure

    from segvol_rt.bench.timing import percentile

    scans = {"ct": resampled_ct(args.work), "raw": raw_phantom(args.work)}
    rows = []
    for case in args.cases:
        for n in args.targets:
            cmds = _commands(args, artifacts, checkpoint, scans[case], _phrases(n))
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in cmds}
            for _ in range(args.repeat):  # interleaved rounds: a busy moment hits every contender
                for label, cmd in cmds.items():
                    shutil.rmtree(args.work / "cold-cache", ignore_errors=True)
                    runs[label].append(measure(cmd))
                    print(case, n, label, runs[label][-1], file=sys.stderr)
            first = _mask_path(args, args.contenders[0])
            for label, got in runs.items():
                walls = [r["wall_s"] for r in got]
                rows.append({"case": case, "targets": n, "contender": label, "runs": len(got),
                             "wall_s": statistics.median(walls), "wall_p90_s": percentile(walls, 90),
                             "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in got),
                             "user_s": statistics.median(r["user_s"] for r in got),
                             "sys_s": statistics.median(r["sys_s"] for r in got),
                             "minor_faults": statistics.median(r["minor_faults"] for r in got),
                             "voxels_differing": None if label == TORCH else
                             _voxels_differing(first, _mask_path(args, label))})
            torch = next((r for r in rows[-len(runs):] if r["contender"] == TORCH), None)
            for r in rows[-len(runs):]:
                r["speedup_vs_torch"] = torch["wall_s"] / r["wall_s"] if torch else None
                r["rss_vs_torch"] = r["peak_rss_mib"] / torch["peak_rss_mib"] if torch else None
    return rows


def _infer_table(rows: Sequence[dict[str, Any]]) -> str:
    def ratio(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = ["| case | targets | contender | wall s (median) | p90 | x torch | peak RSS MiB | / torch | "
             "user s | sys s | minor faults (k) | voxels differing from the first |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        diff = "" if r["voxels_differing"] is None else str(r["voxels_differing"])
        lines.append(f"| {r['case']} | {r['targets']} | {r['contender']} | {r['wall_s']:.1f} | {r['wall_p90_s']:.1f} | "
                     f"{ratio(r['speedup_vs_torch'], '.2f')} | {r['peak_rss_mib']:.0f} | "
                     f"{ratio(r['rss_vs_torch'], '.2f')} | {r['user_s']:.1f} | {r['sys_s']:.1f} | "
                     f"{r['minor_faults'] / 1000:.0f} | {diff} |")
    return "\n".join(lines)


def _targets_table(rows: Sequence[dict[str, Any]], flags: Sequence[str]) -> str:
    """Each row with a torch flow beside it against :data:`SPEEDUP_TARGETS` and
    :data:`RSS_TARGET`: met or not, and whether this CPU is one they are set for
    (this tree's contenders and the C++ app's; a ``--baseline`` is not judged)."""
    amx = "amx_bf16" in flags
    lines = [f"Targets (issue 21, whole `infer` on a CPU with AMX; this CPU {'has' if amx else 'has no'} AMX"
             f"{'' if amx else ': reported, not judged'}):", "",
             "| case | targets | contender | x torch | target | met | RSS / torch | target | met |",
             "|---|---:|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        label = r["contender"].removeprefix(f"{CPP} ")
        if r["speedup_vs_torch"] is None or label not in CONTENDERS:
            continue
        want = SPEEDUP_TARGETS.get(label)
        speed = "" if want is None else ("yes" if r["speedup_vs_torch"] >= want else "no")
        lines.append(f"| {r['case']} | {r['targets']} | {r['contender']} | {r['speedup_vs_torch']:.2f} | "
                     f"{'' if want is None else f'>= {want}'} | {speed} | {r['rss_vs_torch']:.2f} | <= {RSS_TARGET} | "
                     f"{'yes' if r['rss_vs_torch'] <= RSS_TARGET else 'no'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from segvol_rt.bench.machine import compile_bytecode, machine_info, machine_line
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    args.work.mkdir(parents=True, exist_ok=True)
    skipped = _skipped(args.contenders)
    args.contenders = [label for label in args.contenders if label not in skipped]
    if not args.contenders:
        raise SystemExit("no contender can run on this CPU: " + "; ".join(skipped.values()))
    bm = prepare_bench_model(args.config, cache_dir=args.cache_dir)
    meta = machine_info()
    cache = "cold (emptied before every run of segvol-rt)" if args.cold_cache else "warm"
    print(f"# segvol-rt CPU tier ({args.part}, {args.config})\n\n{machine_line(meta)}\n")
    for label, problem in skipped.items():
        print(f"Skipped on this CPU: {label} ({problem}).\n")
    if args.part == "infer":
        print(f"segvol-rt's user cache (OpenVINO's compiled models, the records of checked files): {cache}.\n")
        meta["bytecode"] = compile_bytecode()
        print(f"{meta['bytecode']}\n")
    if args.part == "windows":
        rows = windows(args, bm.artifacts)
        print("| contender | s per window (median) | min | rel L2 vs ORT fp32 | load s (cold cache) | load s (warm) |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['contender']} | {r['s_per_window']:.2f} | {r['min_s']:.2f} | {r['rel_l2_vs_first']:.1e} | "
                  f"{r['load_cold_s']:.2f} | {r['load_warm_s']:.2f} |")
    else:
        rows = infer(args, bm.artifacts, bm.checkpoint)
        print(_infer_table(rows))
        if args.torch:
            print(f"\n{_targets_table(rows, meta['machine']['cpu_flags'])}")
    if args.json:
        doc = {"meta": meta, "part": args.part, "config": args.config, "cold_cache": args.cold_cache,
               "skipped": skipped, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
