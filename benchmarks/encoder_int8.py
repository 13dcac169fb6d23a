#!/usr/bin/env python
"""The image encoder in int8, measured against fp32 and bf16 (issue 21: "int8 if you try it").

    python benchmarks/encoder_int8.py                   # full size, random weights
    python benchmarks/encoder_int8.py --config demo     # the shipped demo model

The fp32 image encoder is quantized statically by ONNX Runtime's quantizer
(QDQ format: int8 weights per output channel, uint8 activations, MatMul and
Conv), calibrated on the encoder inputs the pipeline makes (zoom-out image and
zoom-in windows) of the 512x512x200 raw phantom and of ../shared/data's CT at
its own 3 mm; held out: those of the same CT at 1.5 mm. Then, on the held-out
windows, each contender's seconds per window (median, after a warm-up) and the
relative L2 of its embeddings against ONNX Runtime fp32's: ONNX Runtime and
OpenVINO on the fp32 graph (OpenVINO f32, and bf16 where the CPU offers it)
and on the int8 graph (OpenVINO runs the QDQ pairs as int8 kernels: VNNI or
AMX-INT8; the ops left in float in its inference precision).

A measurement, not a product path: no int8 precision is offered (the report
and issue 21's note say why).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import SHARED_CT, raw_phantom, resampled_ct  # noqa: E402

Run = Callable[[np.ndarray], np.ndarray]
WINDOWS_PER_SCAN = 4  # the zoom-out image and up to 3 zoom-in windows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="official", choices=("official", "tiny", "demo"),
                   help="random weights at full or tiny size, or the shipped demo model")
    p.add_argument("--cache-dir", type=Path, default=None, help="benchmark model cache (default: the bench's)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "segvol-rt-cpu-tier")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def encoder_inputs(scan: Path, window: Sequence[int]) -> list[np.ndarray]:
    """What the pipeline feeds the encoder for ``scan``: its zoom-out image and
    zoom-in windows cut from the foreground crop (zero-padded as the pipeline
    pads), each ``(1, 1, D, H, W)`` float32."""
    import nibabel as nib

    from segvol_rt.pipeline.preprocess import preprocess

    pre = preprocess(np.asarray(nib.load(scan).dataobj, dtype=np.float32), window)
    out = [np.ascontiguousarray(pre.zoom_image, dtype=np.float32)[None, None]]
    crop = np.asarray(pre.image, dtype=np.float32)
    for start in _window_starts(crop.shape, window)[: WINDOWS_PER_SCAN - 1]:
        win = np.zeros((1, 1, *window), dtype=np.float32)
        part = crop[tuple(slice(s, s + w) for s, w in zip(start, window))]
        win[0, 0][tuple(slice(0, n) for n in part.shape)] = part
        out.append(win)
    return out


def _window_starts(shape: Sequence[int], window: Sequence[int]) -> list[tuple[int, ...]]:
    """Window corners at half-window steps, the middle ones first (most foreground)."""
    axes = [list(range(0, max(n - w, 0) + 1, max(w // 2, 1))) for n, w in zip(shape, window)]
    grid = [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]
    centre = [max(n - w, 0) / 2 for n, w in zip(shape, window)]
    return sorted(grid, key=lambda s: sum((x - m) ** 2 for x, m in zip(s, centre)))


def quantize(fp32_graph: Path, calibration: list[np.ndarray], out: Path) -> float:
    """Static QDQ int8 quantization of ``fp32_graph`` into ``out``; returns seconds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"image": item}

    t0 = time.perf_counter()
    prepared = out.with_name(out.stem + ".prepared.onnx")
    quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul", "Conv"], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    prepared.unlink()
    return time.perf_counter() - t0


def onnxruntime_run(graph: Path) -> Run:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def openvino_run(graph: Path, hint: str) -> Run:
    import openvino as ov

    compiled = ov.Core().compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


def contenders(fp32: Path, int8: Path, skipped: dict[str, str]) -> dict[str, Callable[[], Run]]:
    """Label -> opener, the OpenVINO ones only where OpenVINO runs their precision here
    (bf16 never emulated, none without the openvino extra); ``skipped`` gets, per OpenVINO
    precision left out, the backend's refusal line."""
    from segvol_rt.backends.openvino import HINTS, precision_problem

    every = [("onnxruntime fp32", None, lambda: onnxruntime_run(fp32)),
             ("openvino fp32", "fp32", lambda: openvino_run(fp32, HINTS["fp32"])),
             ("onnxruntime int8", None, lambda: onnxruntime_run(int8)),
             ("openvino int8 (rest f32)", "fp32", lambda: openvino_run(int8, HINTS["fp32"])),
             ("openvino bf16", "bf16", lambda: openvino_run(fp32, HINTS["bf16"])),
             ("openvino int8 (rest bf16)", "bf16", lambda: openvino_run(int8, HINTS["bf16"]))]
    for precision in ("fp32", "bf16"):
        problem = precision_problem(precision)
        if problem is not None:  # the report names it
            skipped[f"openvino {precision}"] = problem
    return {label: opener for label, precision, opener in every
            if precision is None or f"openvino {precision}" not in skipped}


def measure(label: str, opener: Callable[[], Run], held: list[np.ndarray], reference: list[np.ndarray] | None
            ) -> tuple[dict[str, Any], list[np.ndarray]]:
    t0 = time.perf_counter()
    run = opener()
    load = time.perf_counter() - t0
    run(held[0])  # warm-up
    times, outs = [], []
    for x in held:
        t0 = time.perf_counter()
        outs.append(run(x))
        times.append(time.perf_counter() - t0)
    reference = reference or outs
    rel = [float(np.linalg.norm(o.astype(np.float64) - r) / np.linalg.norm(r.astype(np.float64)))
           for o, r in zip(outs, reference)]
    row = {"contender": label, "s_per_window": statistics.median(times), "min_s": min(times),
           "rel_l2_mean": statistics.fmean(rel), "rel_l2_max": max(rel), "load_s": load}
    print(row, file=sys.stderr)
    return row, outs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from segvol_rt.bench.machine import machine_info, machine_line
    from segvol_rt.export.reference.bench_model import prepare_bench_model
    from segvol_rt.io import spec as S
    from segvol_rt.io.artifacts import Artifacts

    args.work.mkdir(parents=True, exist_ok=True)
    bm = prepare_bench_model(args.config, cache_dir=args.cache_dir)
    arts = Artifacts.load(bm.artifacts)
    window = arts.config.spatial_size
    fp32 = arts.graph_path(S.IMAGE_ENCODER)
    calibration = encoder_inputs(raw_phantom(args.work), window) + encoder_inputs(SHARED_CT, window)
    held = encoder_inputs(resampled_ct(args.work), window)
    int8 = args.work / f"image_encoder.int8.{args.config}.onnx"
    quantize_s = quantize(fp32, calibration, int8)
    meta = machine_info()
    rows, reference, skipped = [], None, {}
    for label, opener in contenders(fp32, int8, skipped).items():
        row, outs = measure(label, opener, held, reference)
        reference = reference or outs
        rows.append(row)
    print(f"# segvol-rt image encoder in int8 ({args.config})\n\n{machine_line(meta)}\n")
    print(f"Quantized in {quantize_s:.0f} s on {len(calibration)} calibration windows; "
          f"{len(held)} held-out windows.\n")
    for label, problem in skipped.items():
        print(f"Skipped on this CPU: {label} ({problem}).\n")
    print("| contender | s per window (median) | min | rel L2 vs ORT fp32 (mean) | max | load s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['contender']} | {r['s_per_window']:.3g} | {r['min_s']:.3g} | {r['rel_l2_mean']:.1e} | "
              f"{r['rel_l2_max']:.1e} | {r['load_s']:.2f} |")
    if args.json:
        doc = {"meta": meta, "config": args.config, "quantize_s": quantize_s, "skipped": skipped, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
