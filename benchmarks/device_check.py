"""One device run that answers the open GPU questions, and cannot come back empty.

    python benchmarks/device_check.py --out $OUT [--small] [--emulate] [--sections a b ...] [--budget S]

Sections, in priority order, each in its own process with its own time share
(benchmarks/device_sections/): ``preflight`` (GPU, NVRTC compile of every
kernel with the options used, imports, which onnxruntime and a toy CUDA
session), ``hybrid`` (CPU ONNX Runtime graphs, CuPy arrays and kernels: bit-
identical to the CPU pipeline), ``kernels`` (against the NumPy twins),
``ort-cuda`` (fp32, TF32 off), ``ort-cuda-tf32`` (fp32 with TF32, and fp16),
``timings`` (CUDA events, peak memory, the official-style torch pipeline side
by side) and ``sanitizer`` (compute-sanitizer memcheck and racecheck over the
small kernel checks). A section whose preflight item failed is skipped with
the reason, and counts as failed: ``ok`` covers every section planned.

``device_check.json`` and ``device_check.md`` in ``--out`` are rewritten after
every section, so a crash or a timeout loses only that section. ``--emulate``
runs the kernels on the CPU emulator (tests/support/kernel_emu.py) and the
pipeline on the fake cupy; the sections that need a real GPU are then not
planned. benchmarks/device/README.md gives the device procedure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from device_sections import report  # noqa: E402
from device_sections.common import Context  # noqa: E402


@dataclass(frozen=True)
class Section:
    """One section: its module under device_sections, time share on the device
    and under ``--small``, the preflight items it needs, the environment it runs
    with, and whether it needs a real GPU (not planned under ``--emulate``)."""

    name: str
    module: str
    share_s: int
    small_s: int
    needs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    gpu_only: bool = False


SECTIONS = (
    Section("preflight", "preflight", 40, 120),
    Section("hybrid", "pipeline", 45, 180, ("imports", "gpu", "kernels"), {"NVIDIA_TF32_OVERRIDE": "0"}),
    Section("kernels", "kernels", 60, 120, ("gpu", "kernels")),
    Section("ort-cuda", "pipeline", 60, 120, ("imports", "gpu", "kernels", "onnxruntime"),
            {"NVIDIA_TF32_OVERRIDE": "0"}, True),
    Section("ort-cuda-tf32", "pipeline", 40, 120, ("imports", "gpu", "kernels", "onnxruntime"), {}, True),
    Section("timings", "timings", 75, 240, ("imports",)),
    Section("sanitizer", "sanitizer", 40, 120, ("gpu", "kernels", "sanitizer"), {}, True),
)
BY_NAME = {s.name: s for s in SECTIONS}
RESULT = "device_check.json"
MARKDOWN = "device_check.md"


def plan(args: argparse.Namespace) -> dict[str, str | None]:
    """Section -> None (planned) or why it is not planned."""
    chosen = set(args.sections or BY_NAME)
    out: dict[str, str | None] = {}
    for s in SECTIONS:
        if s.name not in chosen:
            out[s.name] = "not selected (--sections)"
        elif args.emulate and s.gpu_only:
            out[s.name] = "needs a real GPU (--emulate)"
        else:
            out[s.name] = None
    return out


def run_section(section: Section, args: argparse.Namespace, work: Path, results: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``section`` in a child process under ``timeout`` seconds; its result, or
    what happened to it (crash: exit status and the log's tail; timeout)."""
    out_file = work / f"{section.name}.json"
    out_file.unlink(missing_ok=True)
    (work / "results.json").write_text(json.dumps(results, default=str))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section.name, "--work", str(work)]
    cmd += ["--small"] if args.small else []
    cmd += ["--emulate"] if args.emulate else []
    env = {**os.environ, **section.env, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    # its own process group, so a timeout also ends what it started (compute-sanitizer, pytest)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        tail = _text(stdout) + _text(stderr)
        print(tail[-3000:], flush=True)
        return {"ok": False, "status": "timeout", "error": f"ran over its {timeout:.0f} s", "log_tail": tail[-3000:]}
    seconds = round(time.perf_counter() - t0, 1)
    print((stdout + stderr)[-6000:], flush=True)
    if not out_file.is_file():
        return {"ok": False, "status": "crashed", "returncode": proc.returncode, "seconds": seconds,
                "log_tail": (stdout + stderr)[-3000:]}
    result = json.loads(out_file.read_text())
    result.update(status="ran", seconds=seconds)
    return result


def _text(b: Any) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def missing_needs(section: Section, preflight: dict[str, Any]) -> list[str]:
    return [n for n in section.needs if not (preflight.get(n) or {}).get("ok")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_model:
        args.child = "model"
    if args.child:
        return child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or Path(tempfile.gettempdir()) / "segvol_device_check")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CUPY_CACHE_DIR", str(work / "cupy_cache"))
    deadline = time.monotonic() + args.budget
    planned = plan(args)
    doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "sections": {},
                           "ok": False}
    # the timings' model is built and exported on the CPU while the GPU sections run
    export = start_model_export(args, work) if planned["timings"] is None else None
    for section in SECTIONS:
        if section.name == "timings" and export is not None:
            doc["model_export"] = join_model_export(export, deadline - time.monotonic() - 30)
        why = planned[section.name]
        preflight = doc["sections"].get("preflight", {})
        if why is None and section.name != "preflight":
            lacking = missing_needs(section, preflight) if preflight.get("status") == "ran" else []
            if lacking:
                why = "skipped: preflight failed for " + ", ".join(lacking)
                doc["sections"][section.name] = {"ok": False, "status": "skipped", "why": why}
                report.write(out, doc, RESULT, MARKDOWN)
                continue
        if why is not None:
            doc["sections"][section.name] = {"ok": None, "status": "not planned", "why": why}
            continue
        left = deadline - time.monotonic()
        share = args.share.get(section.name, (section.small_s if args.small else section.share_s) * args.scale)
        timeout = max(1.0, min(share, left))
        print(f"== {section.name} (up to {timeout:.0f} s)", flush=True)
        doc["sections"][section.name] = {"ok": False, "status": "running"}
        report.write(out, doc, RESULT, MARKDOWN)
        doc["sections"][section.name] = run_section(section, args, work, doc["sections"], timeout)
        doc["ok"] = overall_ok(doc["sections"])
        report.write(out, doc, RESULT, MARKDOWN)
    doc["ok"] = overall_ok(doc["sections"])
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.write(out, doc, RESULT, MARKDOWN)
    print(report.verdict(doc), flush=True)
    return 0 if doc["ok"] else 1


def start_model_export(args: argparse.Namespace, work: Path) -> subprocess.Popen:
    """A background process that makes the timings' benchmark model (cached under ``work``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-model", "--work", str(work)]
    cmd += ["--small"] if args.small else []
    log = open(work / "model_export.log", "w")  # noqa: SIM115 - closed by join_model_export
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.log = log  # type: ignore[attr-defined]
    return proc


def join_model_export(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """Wait for the export (at most ``timeout`` s); its outcome for the report."""
    t0 = time.perf_counter()
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    proc.log.close()  # type: ignore[attr-defined]
    tail = Path(proc.log.name).read_text(errors="replace")[-2000:]  # type: ignore[attr-defined]
    return {"returncode": rc, "waited_s": round(time.perf_counter() - t0, 1), "log_tail": tail,
            "status": "timeout" if rc is None else "done"}


def overall_ok(sections: dict[str, Any]) -> bool:
    """Every planned section ran and passed (skipped, crashed, timed out: False)."""
    planned = [r for r in sections.values() if r.get("status") != "not planned"]
    return bool(planned) and all(r.get("ok") is True for r in planned)


def child(args: argparse.Namespace) -> int:
    """Run one section in this process and write its JSON for the driver."""
    import importlib

    if args.child == "model":
        from device_sections import timings

        timings.prepare_model(Context(small=args.small, emulate=args.emulate, work=Path(args.work)))
        return 0

    section = BY_NAME[args.child]
    work = Path(args.work)
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    ctx = Context(small=args.small, emulate=args.emulate, work=work,
                  preflight=results.get("preflight", {}), results=results)
    module = importlib.import_module(f"device_sections.{section.module}")
    runner = getattr(module, "run_" + section.name.replace("-", "_"), None) or module.run
    result = runner(ctx)
    (work / f"{section.name}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    p.add_argument("--work", default=None, help="scratch folder (default: under the temp dir; $OUT sends back 8 files only)")
    p.add_argument("--small", action="store_true", help="tiny sizes (the CPU test)")
    p.add_argument("--emulate", action="store_true", help="CPU emulator of the kernels, fake cupy (no GPU)")
    p.add_argument("--sections", nargs="+", choices=list(BY_NAME), default=None, help="run only these (a rerun)")
    p.add_argument("--budget", type=float, default=345.0, help="seconds for all sections together")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every section's time share")
    p.add_argument("--share", nargs="+", default=[], metavar="NAME=S", help="one section's time share in seconds")
    p.add_argument("--child", choices=list(BY_NAME), default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-model", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.share = {k: float(v) for k, v in (item.split("=", 1) for item in args.share)}
    except ValueError:
        p.error("--share takes NAME=SECONDS")
    return args


if __name__ == "__main__":
    sys.exit(main())
