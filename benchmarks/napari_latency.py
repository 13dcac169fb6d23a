"""The latency a napari user feels: from the click on **Segment** in the SegVol
dock widget to the result's Labels layer drawn, for a first prompt and a
follow-up, on the demo model and on full size (random weights).

    xvfb-run -a python benchmarks/napari_latency.py                  # demo model and full size
    xvfb-run -a python benchmarks/napari_latency.py --config demo --repeat 10 --json out.json

A real viewer (napari, PyQt6) on the display, the widget of
:mod:`segvol_rt.napari.widget`, its ``Open`` on a phantom NIfTI file, then
per repeat: every cache of the runtime cleared, **first prompt** = text
"liver" and a positive point at the liver's centre (zoom-out encoding, text,
decoding, zoom-in windows encoded and decoded), then **follow-up** = the
same plus a negative point (the encodings cached). Each row times:

* ``model``: the worker's call (``Session.segment``: prompt checks and the runtime);
* ``click -> layer``: the click to the Labels layer holding the new mask
  (worker start, the call, the hand-back to the UI thread, the layer update);
* ``click -> drawn``: to the canvas rendered with it (``viewer.screenshot``
  renders the scene and reads it back, so this includes a readback of the canvas).

Under Xvfb the canvas is rendered by Mesa's software OpenGL (llvmpipe), so
the drawing part is a CPU cost here; a GPU-backed display draws faster.
Medians, p90 and min of ``--repeat`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
FULL_SIZE_SHAPE = (120, 126, 164)  # a phantom for full size, as benchmarks/serve.py uses


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", choices=("demo", "official"),
                   help="demo: the shipped model; official: full size, random weights (exported once); default both")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def isa() -> list[str]:
    """The SIMD extensions of this CPU that matter for ONNX Runtime (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in ISA_FLAGS if f in flags]


def artifacts_for(config: str) -> Path:
    if config == "demo":
        from segvol_rt.demo.model import shipped_artifacts_dir

        return shipped_artifacts_dir()
    from segvol_rt.export.reference.bench_model import prepare_bench_model

    return prepare_bench_model(config, log=lambda m: print(m, file=sys.stderr)).artifacts


def wait_for(widget: Any, action: Any) -> str:
    """Run ``action`` and spin Qt's event loop until the widget's job is shown."""
    from qtpy.QtCore import QEventLoop

    loop, kinds = QEventLoop(), []

    def done(kind: str) -> None:
        kinds.append(kind)
        loop.quit()

    widget.finished.connect(done)
    try:
        action()
        if not kinds:
            loop.exec()
    finally:
        widget.finished.disconnect(done)
    if kinds[0] == "error":
        raise SystemExit(f"the widget failed: {widget.last_error}")
    return kinds[0]


def click(viewer: Any, widget: Any) -> dict[str, float]:
    """One click on Segment: model, click -> layer, click -> drawn (seconds)."""
    t0 = time.perf_counter()
    wait_for(widget, widget.segment_button.click)
    t_layer = time.perf_counter()
    viewer.screenshot(canvas_only=True, flash=False)
    t_drawn = time.perf_counter()
    return {"model": widget.latency["model_s"], "click_to_layer": t_layer - t0, "click_to_drawn": t_drawn - t0}


def measure(config: str, repeat: int) -> dict[str, Any]:
    """Open a phantom in a fresh viewer with the widget, then ``repeat`` first prompts and follow-ups."""
    import napari

    from segvol_rt.demo.phantom import make_phantom
    from segvol_rt.napari.widget import SegVolWidget

    artifacts = artifacts_for(config)
    ph = make_phantom(0, shape=FULL_SIZE_SHAPE if config == "official" else None)
    viewer = napari.Viewer(show=True)
    widget = SegVolWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SegVol")
    widget.artifacts_edit.setText(str(artifacts))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom.nii.gz"
        ph.save(path)
        t0 = time.perf_counter()
        wait_for(widget, lambda: widget.open_scan(path))
        open_s = time.perf_counter() - t0
    centre = tuple(int(v) for v in np.rint(ph.centroid("liver")))
    widget.target_edit.setText("liver")
    rows: dict[str, list[dict[str, float]]] = {"first prompt": [], "follow-up": []}
    for run in range(repeat + 1):  # the first run warms up
        widget.session.model.clear_caches()
        widget.points_layer.data = np.array([centre], dtype=float)
        first = click(viewer, widget)
        widget.negative_box.setChecked(True)
        widget.points_layer.add(np.array([centre[0] + 6, centre[1], centre[2]], dtype=float))
        widget.negative_box.setChecked(False)
        follow = click(viewer, widget)
        if run:
            rows["first prompt"].append(first)
            rows["follow-up"].append(follow)
    viewer.close()
    return {"config": config, "artifacts": str(artifacts), "scan": list(ph.image.shape), "open_s": open_s,
            "rows": {name: summarise(samples) for name, samples in rows.items()}}


def summarise(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        q = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
        out[key] = {"median_s": statistics.median(values), "p90_s": q[8], "min_s": min(values), "n": len(values)}
    return out


def table(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["| model | scan | prompt | model s | click -> layer s | click -> drawn s (p90) |", "|---|---|---|---:|---:|---:|"]
    for r in results:
        for name, row in r["rows"].items():
            m, layer, drawn = row["model"], row["click_to_layer"], row["click_to_drawn"]
            lines.append(f"| {r['config']} | {'x'.join(map(str, r['scan']))} | {name} | {m['median_s']:.3f} | "
                         f"{layer['median_s']:.3f} | {drawn['median_s']:.3f} ({drawn['p90_s']:.3f}) |")
    opens = ", ".join(f"{r['config']} {r['open_s']:.1f} s" for r in results)
    m = meta["machine"]
    lines.append(f"\nopen (read + model load + preprocess): {opens}")
    lines.append(f"CPU: {m['cpu']}, {m['usable_cores']} usable cores; ISA {' '.join(meta['isa'])}; "
                 f"load average at start {m['load_average_at_start']}; napari {meta['versions'].get('napari', '?')}, "
                 f"Qt binding {meta['qt']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    from qtpy import API_NAME

    from segvol_rt.bench.machine import machine_info, package_versions

    meta = {**machine_info(), "isa": isa(), "qt": API_NAME}
    meta["versions"].update(package_versions(("napari", "vispy", "PyQt6")))
    results = [measure(c, args.repeat) for c in (args.config or ["demo", "official"])]
    print(table(results, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
