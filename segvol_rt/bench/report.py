"""The benchmark report: rows of latency statistics, ratios between rows
measured in the same run, target checks, printed as a markdown table and
written as JSON. Targets are reported, never asserted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt.bench.machine import machine_line
from segvol_rt.bench.timing import LatencyStats
from segvol_rt.io.atomic import atomic_write_text

# -- the report -----------------------------------------------------------------


@dataclass
class Row:
    """One measured stage of one backend on one case."""

    case: str
    backend: str
    stage: str
    timing: LatencyStats
    windows: int | None = None  # zoom-in windows run (decoded), when relevant
    batch: int | None = None  # items per call; per-item time = p50 / batch
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"case": self.case, "backend": self.backend, "stage": self.stage, **self.timing.to_dict()}
        if self.windows is not None:
            out["windows"] = self.windows
        if self.batch is not None:
            out["batch"] = self.batch
            out["p50_ms_per_item"] = round(self.timing.p50 * 1e3 / self.batch, 4)
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Ratio:
    """``slow.p50 / fast.p50`` of two rows of the same run, with its target."""

    name: str
    slow: Row
    fast: Row
    target: float | None = None  # the ratio should be at least this
    at_most: float | None = None  # ... or at most this
    note: str = ""

    @property
    def value(self) -> float:
        return self.slow.timing.p50 / max(self.fast.timing.p50, 1e-12)

    @property
    def met(self) -> bool | None:
        if self.target is not None:
            return self.value >= self.target
        if self.at_most is not None:
            return self.value <= self.at_most
        return None

    def target_text(self) -> str:
        if self.target is not None:
            return f">= {self.target:g}x"
        if self.at_most is not None:
            return f"<= {self.at_most:g}x"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "slow": _label(self.slow),
            "fast": _label(self.fast),
            "slow_p50_ms": round(self.slow.timing.p50 * 1e3, 4),
            "fast_p50_ms": round(self.fast.timing.p50 * 1e3, 4),
            "target": self.target_text() or None,
            "met": self.met,
            "note": self.note or None,
        }


@dataclass
class Check:
    """An absolute latency target: a row's median (per item with ``per_item``) at most ``limit_ms``."""

    name: str
    row: Row
    limit_ms: float
    per_item: bool = False

    @property
    def value_ms(self) -> float:
        per = self.row.batch if (self.per_item and self.row.batch) else 1
        return self.row.timing.p50 * 1e3 / per

    @property
    def met(self) -> bool:
        return self.value_ms <= self.limit_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "row": _label(self.row), "value_ms": round(self.value_ms, 4),
                "limit_ms": self.limit_ms, "met": self.met}


def _label(row: Row) -> str:
    return f"{row.case} / {row.backend} / {row.stage}"


@dataclass
class Report:
    """Rows, ratios and notes of one benchmark run, with the machine it ran on."""

    title: str
    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, case: str, backend: str, stage: str, timing: LatencyStats, **extra: Any) -> Row:
        row = Row(case, backend, stage, timing, **extra)
        self.rows.append(row)
        return row

    def find(self, case: str, backend: str, stage: str) -> Row | None:
        for row in reversed(self.rows):
            if (row.case, row.backend, row.stage) == (case, backend, stage):
                return row
        return None

    def ratio(self, name: str, slow: Row | None, fast: Row | None, **kw: Any) -> Ratio | None:
        """Record ``slow / fast`` when both rows exist."""
        if slow is None or fast is None:
            return None
        r = Ratio(name, slow, fast, **kw)
        self.ratios.append(r)
        return r

    def check(self, name: str, row: Row | None, limit_ms: float, per_item: bool = False) -> Check | None:
        """Record an absolute target when the row exists."""
        if row is None:
            return None
        c = Check(name, row, limit_ms, per_item)
        self.checks.append(c)
        return c

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            **self.meta,
            "cases": self.cases,
            "rows": [r.to_dict() for r in self.rows],
            "ratios": [r.to_dict() for r in self.ratios],
            "checks": [c.to_dict() for c in self.checks],
            "notes": self.notes,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(p, json.dumps(self.to_dict(), indent=2, default=json_default) + "\n")

    def markdown(self) -> str:
        """The machine line, the stage table, the ratio table and the notes."""
        lines = [f"## {self.title}", "", machine_line(self.meta), ""]
        if self.cases:
            lines += ["| case | scan (I, J, K) | crop (D, H, W) | model window | notes |", "|---|---|---|---|---|"]
            for name, c in self.cases.items():
                lines.append(
                    f"| {name} | {_shape(c.get('scan_shape'))} | {_shape(c.get('crop_shape'))} "
                    f"| {_shape(c.get('window'))} | {c.get('note', '')} |"
                )
            lines.append("")
        lines += [
            "| case | backend | stage | p50 ms | p90 ms | min ms | n | windows | per item ms | note |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            t = r.timing
            per = f"{t.p50 * 1e3 / r.batch:.2f}" if r.batch else ""
            lines.append(
                f"| {r.case} | {r.backend} | {r.stage} | {_ms(t.p50)} | {_ms(t.p90)} | {_ms(t.min)} | {len(t.samples)} "
                f"| {'' if r.windows is None else r.windows} | {per} | {r.note} |"
            )
        if self.ratios:
            lines += ["", "| comparison | ratio | target | met | slow p50 ms | fast p50 ms |", "|---|---:|---|---|---:|---:|"]
            for q in self.ratios:
                met = "" if q.met is None else ("yes" if q.met else "**no**")
                lines.append(
                    f"| {q.name} | {q.value:.2f}x | {q.target_text()} | {met} | {_ms(q.slow.timing.p50)} "
                    f"| {_ms(q.fast.timing.p50)} |"
                )
        if self.checks:
            lines += ["", "| target | p50 ms | limit ms | met |", "|---|---:|---:|---|"]
            for check in self.checks:
                met = "yes" if check.met else "**no**"
                lines.append(f"| {check.name} | {check.value_ms:.2f} | {check.limit_ms:g} | {met} |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _shape(shape: Any) -> str:
    return "" if shape is None else "x".join(str(int(s)) for s in shape)


def json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


