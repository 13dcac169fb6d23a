"""The device run's two result files, rewritten after every section: the JSON
(everything) and a markdown summary, plus the one-line verdict."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write(out: Path, doc: dict[str, Any], json_name: str, md_name: str) -> None:
    """Both files, each replaced atomically (a kill mid-write leaves the last complete one)."""
    for name, text in ((json_name, json.dumps(doc, indent=1, default=str)), (md_name, markdown(doc))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def verdict(doc: dict[str, Any]) -> str:
    parts = [f"{name}={_state(r)}" for name, r in doc["sections"].items() if r.get("status") != "not planned"]
    return f"DEVICE CHECK {'PASS' if doc.get('ok') else 'FAIL'}: " + " ".join(parts)


def _state(r: dict[str, Any]) -> str:
    if r.get("status") in ("skipped", "timeout", "crashed", "running"):
        return r["status"]
    return "ok" if r.get("ok") else "FAILED"


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# segvol-rt device check", "", f"- started {doc.get('started')}, finished {doc.get('finished', '(running)')}",
             f"- ok: **{doc.get('ok')}**", "", "| section | status | ok | seconds | note |", "| --- | --- | --- | --- | --- |"]
    for name, r in doc["sections"].items():
        note = r.get("why") or r.get("error") or ""
        lines.append(f"| {name} | {r.get('status')} | {r.get('ok')} | {r.get('seconds', '')} | {str(note)[:160]} |")
    for name, r in doc["sections"].items():
        body = _details(name, r)
        if body:
            lines += ["", f"## {name}", ""] + body
    return "\n".join(lines) + "\n"


def _details(name: str, r: dict[str, Any]) -> list[str]:
    if name == "kernels" and r.get("checks"):
        rows = ["| check | ok | detail |", "| --- | --- | --- |"]
        for c in r["checks"]:
            detail = {k: v for k, v in c.items() if k not in ("name", "ok", "trace")}
            rows.append(f"| {c.get('name')} | {c.get('ok')} | `{json.dumps(detail, default=str)[:200]}` |")
        return rows
    if name == "timings" and r.get("rows"):
        rows = ["| what | median ms | p90 ms | memory | note |", "| --- | --- | --- | --- | --- |"]
        for t in r["rows"]:
            rows.append(f"| {t.get('what')} | {_f(t.get('median_ms'))} | {_f(t.get('p90_ms'))} | "
                        f"`{json.dumps(t.get('memory', {}), default=str)[:120]}` | {t.get('note', t.get('error', ''))} |")
        return rows
    if r.get("status") in ("ran", "timeout", "crashed"):
        trimmed = {k: v for k, v in r.items() if k not in ("trace",)}
        return ["```", json.dumps(trimmed, indent=1, default=str)[:5000], "```"]
    return []


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else ""
