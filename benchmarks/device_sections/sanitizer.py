"""compute-sanitizer (memcheck, then racecheck) over the small kernel checks,
where the machine has it (preflight looks; nothing is assumed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from device_sections.common import Context

TOOLS = ("memcheck", "racecheck")


def run(ctx: Context) -> dict[str, Any]:
    path = (ctx.preflight.get("sanitizer") or {}).get("path")
    if not path:
        return {"ok": False, "error": "compute-sanitizer not found"}
    script = Path(__file__).resolve().parents[1] / "device_check.py"
    out: dict[str, Any] = {"path": path, "tools": {}}
    for tool in TOOLS:
        cmd = [path, "--tool", tool, "--error-exitcode", "3", sys.executable, str(script),
               "--child", "kernels", "--small", "--work", str(ctx.work / f"sanitizer-{tool}")]
        (ctx.work / f"sanitizer-{tool}").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
        log = proc.stdout + proc.stderr
        summary = [line for line in log.splitlines() if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line]
        out["tools"][tool] = {"returncode": proc.returncode, "summary": summary[-2:], "seconds": round(time.perf_counter() - t0, 1),
                              "tail": log[-1500:], "ok": proc.returncode == 0}
        print(f"[sanitizer] {tool}: rc={proc.returncode} {summary[-1:] }", flush=True)
    out["ok"] = all(t["ok"] for t in out["tools"].values())
    return out
