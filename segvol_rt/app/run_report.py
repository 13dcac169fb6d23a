"""The report of a cohort run: ``DIR/segvol-rt-run.json`` and ``DIR/segvol-rt-run.csv``.

The JSON holds the run's settings (the options that shape the outputs and the
runtime's provenance) and one entry per finished case, in the cohort's order::

    {"case": "ct01", "input": "cohort/ct01.nii.gz", "series": null,
     "status": "ok" | "failed", "error": null | "one line",
     "outputs": {"ct01_segvol.nii.gz": "<sha256>", ...},   # names relative to DIR
     "seconds": {"read": 0.1, ..., "total": 2.3},
     "targets": [{"name": "liver", "label": 1, "voxels": ..., "statistics": {...}}],
     "input_signature": "<sha256 of the input files' paths, sizes, mtimes>",
     "resumed": false}

Both files are rewritten atomically (:func:`segvol_rt.io.atomic.atomic_write_bytes`)
after every case, so a run killed at any point leaves a report that lists
exactly the cases finished (the JSON is the record; the CSV, written right
after it, is a flat copy for spreadsheets: one row per case, or per case and
target with ``--statistics``).

**Resume**: a case is taken over from an earlier report (and not run again)
when the settings are equal, its entry there is ``ok`` for the same input
(same signature), and every output it lists exists with the recorded
sha256. ``force`` ignores the earlier report.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segvol_rt.app.cohort_cases import REPORT_NAME, Case
from segvol_rt.errors import SegVolError
from segvol_rt.io.digests import sha256_file

CSV_NAME = "segvol-rt-run.csv"
FORMAT = "segvol-rt-run/1"
_STAT_KEYS = ("voxels", "volume_ml", "mean", "std", "min", "max")


class RunReport:
    """The report of the run writing into ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: Path, settings: dict[str, Any], force: bool = False):
        self.out_dir = out_dir
        self.path = out_dir / REPORT_NAME
        self.settings = json.loads(json.dumps(settings, default=str))  # as it reads back
        self.entries: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self._previous = {} if force else self._read_previous()

    def _read_previous(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SegVolError(f"cannot read the earlier run report {self.path} ({exc}); "
                              "remove it or pass --force to redo every case") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("settings") != self.settings:
            return {}  # other options or another model: every case runs again
        return {e["case"]: e for e in doc.get("cases", []) if isinstance(e, dict) and "case" in e}

    def reusable(self, case: Case) -> dict[str, Any] | None:
        """The earlier entry of ``case`` when its outputs stand as recorded (see Resume)."""
        old = self._previous.get(case.name)
        if old is None or old.get("status") != "ok" or old.get("input") != case.source:
            return None
        if old.get("input_signature") != case.signature() or not old.get("outputs"):
            return None
        for name, digest in old["outputs"].items():
            p = self.out_dir / name
            if not p.is_file() or p.is_symlink() or sha256_file(p) != digest:
                return None
        return {**old, "resumed": True}

    def record(self, entry: dict[str, Any], cases: Sequence[Case]) -> None:
        """Add (or replace) one case's entry and rewrite both files, in the order of ``cases``."""
        self.entries[entry["case"]] = entry
        self.order = [c.name for c in cases if c.name in self.entries]
        self.write()

    def summary(self) -> dict[str, int]:
        done = [self.entries[n] for n in self.order]
        ok = sum(e["status"] == "ok" for e in done)
        return {"done": len(done), "ok": ok, "failed": len(done) - ok, "resumed": sum(bool(e.get("resumed")) for e in done)}

    def write(self) -> None:
        from segvol_rt.io.atomic import atomic_write_bytes

        doc = {"format": FORMAT, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": self.settings,
               "summary": self.summary(), "cases": [self.entries[n] for n in self.order]}
        atomic_write_bytes(self.path, (json.dumps(doc, indent=1, default=str) + "\n").encode())
        atomic_write_bytes(self.out_dir / CSV_NAME, self.csv_text().encode())

    def csv_text(self) -> str:
        rows = []
        for entry in (self.entries[n] for n in self.order):
            base = {"case": entry["case"], "input": entry["input"], "series": entry.get("series") or "",
                    "status": entry["status"], "error": entry.get("error") or "",
                    "seconds": f"{entry.get('seconds', {}).get('total', 0.0):.3f}",
                    "outputs": " ".join(entry.get("outputs", {})), "resumed": int(bool(entry.get("resumed")))}
            targets = [t for t in entry.get("targets", []) if "statistics" in t]
            rows.extend([{**base, **_stat_columns(t)} for t in targets] or [base])
        columns = list(rows[0]) if rows else ["case"]
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def _stat_columns(target: dict[str, Any]) -> dict[str, Any]:
    stats = target["statistics"]
    out: dict[str, Any] = {"target": target["name"]}
    out.update({k: "" if stats[k] is None else stats[k] for k in _STAT_KEYS})
    for key, space in (("bbox_voxels", "vox"), ("bbox_world_mm", "mm")):
        box = stats.get(key)
        for corner in ("min", "max"):
            for axis, value in zip("ijk" if space == "vox" else "xyz", box[corner] if box else ("", "", "")):
                out[f"bbox_{space}_{corner}_{axis}"] = value
    return out
