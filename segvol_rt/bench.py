"""Latency benchmarks: timing, the report (markdown table + JSON), the
benchmark model and scans, the stage measurements, and the quick run behind
``segvol-rt bench``. The full side-by-side benchmark is
``benchmarks/bench.py``; it drives the same pieces.

Rules every measurement follows:

* warm-up calls first (``warmup``), then ``repeat`` timed calls; the report
  gives the median (p50), p90 and minimum of the timed calls;
* the GPU is synchronised (CuPy and torch, whichever is loaded) before the
  clock starts and before it stops, so asynchronous work is counted;
* every comparison is a ratio of two rows measured in the same run on the
  same machine; targets are reported, never asserted.

Imports numpy only; torch (benchmark model, official-style reference),
onnxruntime, cupy and nibabel load inside the functions that use them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import spec as S
from ._atomic import atomic_write_text
from ._optional import available, require
from .errors import SegVolError

Log = Callable[[str], None]

# Official demo's preprocessed (crop) size, (D, H, W), for the 32x256x256 window.
DEMO_CROP = (200, 352, 480)
OFFICIAL_WINDOW = (32, 256, 256)
# Target names of the multi-target case (SegVol vocabulary; table lookups).
TARGET_NAMES = ("liver", "spleen", "right kidney", "pancreas", "stomach")

# Coarse-logit blob of the benchmark model, as fractions of the decoder's
# (2d, 2h, 2w) grid along (D, H, W). On the demo-size crop it gives an ROI of
# one window in D, two in H and three in W: 6 zoom-in windows per target.
DEFAULT_BLOB = ((0.44, 0.56), (0.0625, 0.9375), (0.03125, 0.96875))


# -- timing ---------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def synchronize() -> None:
    """Wait for queued GPU work of CuPy and torch, when loaded and on a GPU."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            cupy.cuda.Device().synchronize()
        except Exception:  # noqa: BLE001 - no device: nothing to wait for
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Seconds of the timed calls of one measurement."""

    samples: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def min(self) -> float:
        return float(min(self.samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_ms": round(self.p50 * 1e3, 4),
            "p90_ms": round(self.p90 * 1e3, 4),
            "min_ms": round(self.min * 1e3, 4),
            "n": len(self.samples),
            "samples_ms": [round(s * 1e3, 4) for s in self.samples],
        }


def _time_once(fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
    """Seconds of one ``fn()`` with the GPU synchronised at both ends; ``before`` runs untimed first."""
    if before:
        before()
    synchronize()
    t0 = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t0


def failure_reason(exc: BaseException) -> str:
    """One line (at most 300 characters) naming an exception, for report notes."""
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int, before: Callable[[], Any] | None = None) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed.

    ``before`` runs untimed ahead of every call (e.g. clearing a cache)."""
    if repeat < 1:
        raise SegVolError(f"repeat must be at least 1, got {repeat}")
    for _ in range(max(0, warmup)):
        if before:
            before()
        fn()
    return Timing([_time_once(fn, before) for _ in range(repeat)])


# -- the report -----------------------------------------------------------------


@dataclass
class Row:
    """One measured stage of one backend on one case."""

    case: str
    backend: str
    stage: str
    timing: Timing
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

    def add(self, case: str, backend: str, stage: str, timing: Timing, **extra: Any) -> Row:
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
        return atomic_write_text(p, json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")

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
            for c in self.checks:
                lines.append(f"| {c.name} | {c.value_ms:.2f} | {c.limit_ms:g} | {'yes' if c.met else '**no**'} |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _shape(shape: Any) -> str:
    return "" if shape is None else "x".join(str(int(s)) for s in shape)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


# -- the machine ----------------------------------------------------------------

_VERSION_PACKAGES = (
    "segvol-rt", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "onnx", "nibabel", "tokenizers",
    "isal", "cupy-cuda12x", "cupy-cuda13x", "tensorrt", "scipy",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def gpu_info() -> list[dict[str, str]]:
    """GPUs as nvidia-smi lists them (name, memory, driver); empty without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    query = "name,memory.total,driver_version,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = query.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


def package_versions(names: Iterable[str] = _VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that matter here (metadata only, no imports)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    """CPU model and cores, memory, load, GPUs and package versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "usable_cores": usable,
            "memory_gib": _memory_gib(),
            "os": platform.platform(),
            "load_average_at_start": load,
        },
        "gpu": gpu_info(),
        "versions": package_versions(),
    }


def machine_line(meta: Mapping[str, Any]) -> str:
    m = meta.get("machine", {})
    gpus = meta.get("gpu") or []
    gpu = ", ".join(g.get("name", "?") for g in gpus) or "no GPU"
    v = meta.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "numpy") if k in v)
    return (
        f"Machine: {m.get('cpu', '?')}, {m.get('usable_cores', '?')} cores, {m.get('memory_gib', '?')} GiB; {gpu}; "
        f"load average at start {m.get('load_average_at_start')}; {libs}."
    )


# -- the benchmark model -------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """An exported benchmark model: artifacts directory and the checkpoint it came from."""

    name: str
    artifacts: Path
    checkpoint: Path | None
    info: dict[str, Any]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segvol-rt" / "bench"


def find_clip_tokenizer() -> Path | None:
    """SegVol's CLIP tokenizer files: ``$SEGVOL_RT_CLIP``, or ``clip`` under
    ``$SEGVOL_RT_SHARED`` / the developers' ``../shared`` beside the checkout."""
    candidates = []
    if os.environ.get("SEGVOL_RT_CLIP"):
        candidates.append(Path(os.environ["SEGVOL_RT_CLIP"]))
    repo = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("SEGVOL_RT_SHARED", repo.parent / "shared"))
    candidates.append(shared / "clip")
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "vocab.json").is_file():
            return c
    return None


def _tokenizer_for(config_name: str, work: Path) -> tuple[Path, str]:
    """(tokenizer dir, description): the CLIP files for the official size when
    found, else a small CLIP-style BPE trained on the vocabulary prompts."""
    from .tokenizer import format_prompt, train_bpe
    from .vocabulary import CATEGORIES

    clip = find_clip_tokenizer() if config_name == "official" else None
    if clip is not None:
        return clip, f"CLIP ViT-B/32 tokenizer ({clip})"
    out = work / "tokenizer"
    tok = train_bpe([format_prompt(c) for c in CATEGORIES], 600, out)
    return out, f"CLIP-style BPE trained on the vocabulary prompts ({tok.vocab_size} ids)"


def _config_with_tokenizer(config: Any, tokenizer_dir: Path) -> Any:
    """``config`` with the text ids of the tokenizer (vocabulary size, special ids)."""
    from .tokenizer import ClipTokenizer

    tok = ClipTokenizer.from_dir(tokenizer_dir)
    t = config.text
    if (tok.vocab_size, tok.eos_id) == (t.vocab_size, t.eos_token_id):
        return config
    text = dataclasses.replace(
        t, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
    )
    return dataclasses.replace(config, text=text)


def blob_model(config: Any, seed: int = 0, blob: Sequence[tuple[float, float]] = DEFAULT_BLOB) -> Any:
    """A seeded random SegVol whose mask decoder predicts a box-shaped blob.

    Random weights predict noise (``sigmoid > 0.5`` everywhere), so the
    zoom-in ROI would be the whole crop and the window count would depend on
    the seed. Timing does not depend on the weights, only on the work, so the
    decoder is edited to make the work controlled (the technique of the
    tests' tiny artifacts, on a box given as fractions of the ``(2d, 2h, 2w)``
    grid): the ``output_upscaling`` LayerNorm gets a bias of +2 inside the
    box and -2 outside (weights x0.1), the second transposed convolution
    positive weights and bias -1, mask token 0's hypernetwork a constant
    positive output (weights x0.05) and the text projection x0.05. Every input
    still reaches the output; only its size is damped."""
    from .export.model.segvol import SegVol

    model = SegVol.random(config, seed=seed)
    grid2 = [2 * g for g in config.grid_size]
    box = tuple(slice(*_cells(lo, hi, n)) for (lo, hi), n in zip(blob, grid2))
    shape_decoder_blob(model, box)
    return model.eval()


def shape_decoder_blob(model: Any, box: Sequence[slice]) -> Any:
    """Edit ``model``'s mask decoder in place so it predicts a blob over ``box``
    (slices of the ``(2d, 2h, 2w)`` grid), as :func:`blob_model` describes."""
    torch = require("torch")
    md = model.mask_decoder
    channels = model.config.embed_dim
    with torch.no_grad():
        norm = md.output_upscaling[1]
        pattern = torch.full_like(norm.bias, -2.0)
        pattern[(slice(None), *box)] = 2.0
        norm.weight.mul_(0.1)
        norm.bias.copy_(pattern)
        conv = md.output_upscaling[3]
        conv.weight.mul_(0.1).add_(1.0 / (channels // 4))
        conv.bias.fill_(-1.0)
        last = md.output_hypernetworks_mlps[0].layers[-1]
        last.weight.mul_(0.05)
        last.bias.fill_(1.0 / (channels // 8))
        text = md.txt_align_upscaled_embedding
        text.weight.mul_(0.05)
        text.bias.zero_()
    return model


def _cells(lo: float, hi: float, n: int) -> tuple[int, int]:
    start = min(n - 1, math.floor(lo * n + 0.5))
    return start, max(start + 1, min(n, math.floor(hi * n + 0.5)))


def _named_config(name: str) -> Any:
    from .config import SegVolConfig

    if name == "official":
        return SegVolConfig.official()
    if name == "tiny":
        return SegVolConfig.tiny()
    raise SegVolError(f"no random benchmark model for config {name!r}; choose official or tiny")


def prepare_bench_model(
    config_name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    rebuild: bool = False,
    log: Log | None = None,
) -> BenchModel:
    """The benchmark model of ``config_name``, exported once and reused.

    ``official`` / ``tiny``: :func:`blob_model` at that size with random
    weights, exported into ``cache_dir`` (needs the ``export`` extra the
    first time); ``demo``: the shipped demo model (trained on phantoms, so
    its ROI follows the phantom organs) through :func:`segvol_rt.defaults.demo_artifacts`."""
    say = log or (lambda _m: None)
    if config_name == "demo":
        from .defaults import demo_artifacts
        from .demo_model import demo_checkpoint_dir

        ckpt = demo_checkpoint_dir()
        return BenchModel("demo", demo_artifacts(say), ckpt, {"config": "demo", "weights": "the shipped demo model"})
    config = _named_config(config_name)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    work = cache / f"{config_name}-seed{seed}"
    marker = work / "bench_model.json"
    if marker.is_file() and not rebuild:
        info = json.loads(marker.read_text())
        return BenchModel(config_name, work / "artifacts", work / info["checkpoint"], info)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    require("torch")
    from .export.checkpoint import save_pth
    from .export.exporter import ExportOptions, export_artifacts

    t0 = time.perf_counter()
    tok_dir, tok_text = _tokenizer_for(config_name, work)
    config = _config_with_tokenizer(config, tok_dir)
    say(f"building the {config_name} benchmark model (random weights, seed {seed})")
    ckpt = save_pth(blob_model(config, seed), work / "model.pth")
    say(f"exporting it into {work / 'artifacts'} (parity checks skipped; done once)")
    export_artifacts(ckpt, work / "artifacts", tokenizer=tok_dir, options=ExportOptions(verify=False))
    info = {
        "config": config_name,
        "weights": f"random (seed {seed}), decoder edited to predict a fixed box",
        "blob": DEFAULT_BLOB,
        "seed": seed,
        "tokenizer": tok_text,
        "checkpoint": Path(ckpt).name,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(marker, json.dumps(info, indent=2, default=_json_default))
    return BenchModel(config_name, work / "artifacts", Path(ckpt), info)


# -- scans ----------------------------------------------------------------------------


def scaled_crop(window: Sequence[int], crop: Sequence[int] = DEMO_CROP) -> tuple[int, int, int]:
    """The demo crop scaled from the official window to ``window`` (same window count)."""
    return tuple(max(int(w), round(c * w / o)) for c, w, o in zip(crop, window, OFFICIAL_WINDOW))  # type: ignore[return-value]


def synthetic_scan(scan_shape: Sequence[int], seed: int = 0, fill_air: bool = True) -> tuple[Any, np.ndarray]:
    """A phantom (:class:`segvol_rt.phantom.Phantom`) of ``scan_shape`` (I, J, K)
    and its image, int16 HU, Fortran order.

    With ``fill_air`` the air around the body is replaced by noise around 0 HU
    so the preprocessed crop is the whole volume (the official demo's crop
    size can then be asked for exactly)."""
    from .phantom import make_phantom

    ph = make_phantom(seed, tuple(int(s) for s in scan_shape), spacing=(0.8, 0.8, 1.5))
    image = ph.image
    if fill_air:
        rng = np.random.default_rng([seed, 7])
        air = image < -500
        image = np.asfortranarray(image.copy())
        image[air] = rng.normal(0.0, 40.0, int(air.sum())).astype(np.int16)
    return ph, image


def write_scan(path: str | os.PathLike[str], phantom: Any) -> Path:
    """Write a phantom's image as an int16 NIfTI file, atomically; ``.nii.gz`` is compressed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return phantom.save(p)[0]


def scan_box(scan_shape: Sequence[int], index: int = 0) -> str:
    """A scan-space box prompt ``"i0,j0,k0,i1,j1,k1"`` in the middle of the scan,
    shifted a little per target index."""
    lo, hi = [], []
    for n in scan_shape:
        shift = (index % 3 - 1) * 0.04
        lo.append(int(n * (0.3 + shift)))
        hi.append(max(int(n * (0.7 + shift)), int(n * (0.3 + shift))))
    return ",".join(str(v) for v in lo + hi)


def requests_for(scan_shape: Sequence[int], n_targets: int) -> list[dict[str, Any]]:
    """``n_targets`` text + box targets, as the official demo prompts."""
    return [{"text": TARGET_NAMES[i % len(TARGET_NAMES)], "box": scan_box(scan_shape, i)} for i in range(n_targets)]


# -- stages ---------------------------------------------------------------------------


@dataclass
class Settings:
    """Warm-up and timed calls: ``repeat``/``warmup`` for single graph calls,
    kernels and file IO; the ``heavy_*`` pair (default: the same) for whole
    pipelines and batch-8 encoder calls, which take seconds on a CPU."""

    repeat: int = 5
    warmup: int = 1
    heavy_repeat: int | None = None
    heavy_warmup: int | None = None

    @property
    def pipeline_repeat(self) -> int:
        return self.repeat if self.heavy_repeat is None else self.heavy_repeat

    @property
    def pipeline_warmup(self) -> int:
        return self.warmup if self.heavy_warmup is None else self.heavy_warmup


def bench_graphs(report: Report, case: str, label: str, backend: Any, config: Any, tokenizer: Any,
                 settings: Settings, template: str) -> None:
    """Image encoder (batch 1 and 8), text encoder (tokenize + encode one
    prompt), prompt decoder (one text + box prompt) on one backend.

    Inputs live where the backend's arrays do (``backend.xp``: device memory
    for the GPU backends), so the rows time the engines, not host copies."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    window = tuple(config.spatial_size)
    max_b = int(backend.specs[S.IMAGE_ENCODER].ranges["B"][2])
    for b in sorted({1, min(8, max_b)}):
        x = xp.asarray(rng.random((b, 1, *window), dtype=np.float32))
        # batch 8 takes pipeline-sized time; the batch-1 calls before it warmed the session up
        r, w = (settings.repeat, settings.warmup) if b == 1 else (settings.pipeline_repeat, settings.pipeline_warmup)
        t = time_calls(lambda x=x: backend.encode_image(x), r, w)
        report.add(case, label, f"image encoder, batch {b}", t, batch=b)
        del x
    t = time_calls(lambda: tokenizer.encode_names(["liver"], template), settings.repeat, settings.warmup)
    report.add(case, label, "tokenize one prompt", t)
    t = time_calls(lambda: backend.encode_text(tokenizer.encode_names(["liver"], template)), settings.repeat, settings.warmup)
    report.add(case, label, "text: tokenize + text encoder", t)
    emb = backend.encode_image(xp.asarray(rng.random((1, 1, *window), dtype=np.float32)))
    coords, labels, text = (xp.asarray(a) for a in decoder_feeds(config))
    t = time_calls(lambda: backend.decode(emb, coords, labels, text), settings.repeat, settings.warmup)
    report.add(case, label, "decoder (text + box), batch 1", t)


def bench_box(config: Any) -> tuple[int, ...]:
    """The decoder benchmarks' box prompt: the middle half of the window, (d0, h0, w0, d1, h1, w1)."""
    return tuple(s // 4 for s in config.spatial_size) + tuple(3 * s // 4 for s in config.spatial_size)


def decoder_feeds(config: Any, batch: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt tokens of a text + box target: box corners then the text token."""
    coords = np.array([*np.reshape(bench_box(config), (2, 3)), [0, 0, 0]], np.float32)
    labels = np.array([S.LABEL_BOX_MIN, S.LABEL_BOX_MAX, S.LABEL_TEXT], np.int32)
    text = np.random.default_rng(1).standard_normal((batch, config.embed_dim)).astype(np.float32)
    return np.repeat(coords[None], batch, 0), np.repeat(labels[None], batch, 0), text


def bench_text_lookup(report: Report, case: str, runtime: Any, settings: Settings) -> None:
    """A known target name from the artifacts' embedding table."""
    runtime.text_embeddings(["liver"])  # loads the table once
    t = time_calls(lambda: runtime.text_embeddings(["liver"]), settings.repeat, settings.warmup)
    report.add(case, "runtime", "text: table lookup", t)


def bench_io(report: Report, case: str, path: Path, spatial_size: Sequence[int], settings: Settings,
             out_dir: Path) -> dict[str, Any]:
    """Read (nibabel alone, and segvol-rt's reader), preprocess, read +
    preprocess, and mask writing (.nii.gz) of one scan file."""
    nib = require("nibabel")
    from .nifti import read_scan, write_mask
    from .preprocess import preprocess

    r, w = settings.repeat, settings.warmup
    t = time_calls(lambda: np.asanyarray(nib.load(str(path)).dataobj), r, w)
    nib_row = report.add(case, "numpy", "read: nibabel alone", t)
    t = time_calls(lambda: read_scan(path), r, w)
    read_row = report.add(case, "numpy", "read: segvol-rt read_scan", t)
    scan = read_scan(path)
    t = time_calls(lambda: preprocess(scan.data, spatial_size), r, w)
    pre_row = report.add(case, "numpy", "preprocess", t)
    t = time_calls(lambda: preprocess(read_scan(path).data, spatial_size), r, w)
    both = report.add(case, "numpy", "read + preprocess", t)
    pre = preprocess(scan.data, spatial_size)
    mask = np.zeros(scan.shape, np.uint8, order="F")
    mask[tuple(slice(n // 3, 2 * n // 3) for n in scan.shape)] = 1
    target = out_dir / "bench_mask.nii.gz"
    t = time_calls(lambda: write_mask(target, mask, scan), r, w)
    report.add(case, "numpy", "write mask (.nii.gz)", t)
    report.ratio(f"{case}: preprocess / nibabel read", pre_row, nib_row, at_most=1.5,
                 note="target: preprocessing <= 1.5x just reading the file")
    report.ratio(f"{case}: read + preprocess / nibabel read", both, nib_row)
    report.ratio(f"{case}: preprocess / segvol-rt read", pre_row, read_row)
    return {"scan_shape": list(scan.shape), "crop_shape": list(pre.image.shape)}


def bench_kernels(report: Report, case: str, crop_image: Any, config: Any, settings: Settings, xp_name: str = "numpy") -> None:
    """The array ops of the pipeline on ``crop_image`` (D, H, W): zoom-out
    resize, coarse upsample to the crop, ROI box, window upsample, blending."""
    from . import ops

    xp = np if xp_name == "numpy" else require("cupy")
    img = xp.asarray(crop_image)
    window = tuple(config.spatial_size)
    low = xp.asarray(np.random.default_rng(0).standard_normal(config.low_res_size).astype(np.float32))
    starts = ops.window_starts(img.shape, window, 0.5)[:6]
    padded = [max(a, b) for a, b in zip(img.shape, window)]
    wins = xp.asarray(np.random.default_rng(1).standard_normal((len(starts), *window)).astype(np.float32))
    crop_logits = ops.upsample_then_nearest(low, window, img.shape)
    cases = [
        ("resize crop -> window (nearest-exact)", lambda: ops.resize(img, window, "nearest-exact")),
        ("upsample low-res -> window -> crop", lambda: ops.upsample_then_nearest(low, window, img.shape)),
        ("ROI box of crop logits", lambda: ops.positive_box(crop_logits)),
        ("upsample low-res -> window (trilinear)", lambda: ops.resize(low, window, "trilinear")),
        (f"blend {len(starts)} windows", lambda: ops.blend_windows(wins, starts, padded)),
        ("foreground stats + normalise crop", lambda: ops.normalize_min_max(img, ops.foreground_stats(img))),
    ]
    for name, fn in cases:
        report.add(case, f"kernels ({xp_name})", name, time_calls(fn, settings.repeat, settings.warmup))


_ZOOM_STAGES = ("encode_zoom_out", "decode_zoom_out", "upsample_zoom_out", "plan_windows", "encode_windows",
                "decode_windows", "blend", "postprocess", "text", "prompts")


@dataclass
class Trial:
    """One contender of an interleaved comparison: ``run`` is timed,
    ``before`` runs untimed ahead of every run, ``record`` turns the timing
    into report rows (and returns the main row)."""

    label: str
    run: Callable[[], Any]
    record: Callable[[Report, Timing], Row]
    before: Callable[[], Any] | None = None


def time_interleaved(trials: Sequence[Trial], repeat: int, warmup: int) -> list[Timing | BaseException]:
    """Time the trials in rounds (A, B, C, A, B, C, ...) so that a machine
    whose load changes during the run loads every contender alike. A trial
    that raises is dropped from later rounds; its exception is returned in
    place of its timing."""
    results: list[list[float] | BaseException] = [[] for _ in trials]
    for round_ in range(max(0, warmup) + repeat):
        for i, trial in enumerate(trials):
            if isinstance(results[i], BaseException):
                continue
            try:
                elapsed = _time_once(trial.run, trial.before)
            except Exception as exc:  # noqa: BLE001 - the other contenders still count
                results[i] = exc
                continue
            if round_ >= warmup:
                results[i].append(elapsed)  # type: ignore[union-attr]
    return [r if isinstance(r, BaseException) else Timing(r) for r in results]


def run_trials(report: Report, trials: Sequence[Trial], settings: Settings) -> list[Row | None]:
    """Interleaved pipeline-sized timing of ``trials``; rows for those that
    ran, a note for those that failed."""
    rows: list[Row | None] = []
    for trial, result in zip(trials, time_interleaved(trials, settings.pipeline_repeat, settings.pipeline_warmup)):
        if isinstance(result, BaseException):
            report.note(f"{trial.label} failed: {failure_reason(result)}")
            rows.append(None)
        else:
            rows.append(trial.record(report, result))
    return rows


def pipeline_trial(case: str, label: str, runtime: Any, targets: Sequence[Mapping[str, Any]],
                   shared_windows: bool = True) -> Trial:
    """Zoom-out-zoom-in of ``targets`` on the runtime's current volume, caches
    reset before every run; records one row for the whole call and one per
    stage (the runtime's own stage timers).

    ``shared_windows=False`` runs the targets one call each with the window
    cache cleared in between: what targets whose ROIs share no window cost."""
    stage_samples: dict[str, list[float]] = {}
    info: dict[str, Any] = {}

    def run() -> None:
        calls = [list(targets)] if shared_windows else [[t] for t in targets]
        segs, encoded, stages = [], 0, {}
        for chunk in calls:
            if not shared_windows:
                runtime.clear_window_cache()
            out = runtime.segment_many(chunk)
            encoded += int(runtime.stats.get("windows_encoded") or 0)
            for k, v in out[0].timings.items():  # one timings dict per call
                stages[k] = stages.get(k, 0.0) + v
            segs.extend(out)
        info.update(windows=sum(s.n_windows for s in segs), encoded=encoded, segs=segs)
        for k, v in stages.items():
            stage_samples.setdefault(k, []).append(v)

    def record(report: Report, t: Timing) -> Row:
        n = len(targets)
        what = "zoom-out-zoom-in" + ("" if shared_windows else " (no shared windows)")
        row = report.add(case, label, f"{what}, {n} target{'s' * (n > 1)}", t, windows=info.get("windows"),
                         note=f"{info.get('encoded')} windows encoded")
        for k in _ZOOM_STAGES:
            if k in stage_samples:
                report.add(case, label, f"  {n}-target stage: {k}", Timing(stage_samples[k][-len(t.samples):]))
        if all(s.no_foreground for s in info.get("segs") or []):
            report.note(f"{case}: the coarse pass found no foreground; zoom-in did not run")
        return row

    return Trial(f"{case}: {label}", run, record, before=runtime.clear_caches)


def bench_pipeline(report: Report, case: str, label: str, runtime: Any, targets: Sequence[Mapping[str, Any]],
                   settings: Settings, shared_windows: bool = True) -> Row | None:
    """:func:`pipeline_trial` timed on its own."""
    return run_trials(report, [pipeline_trial(case, label, runtime, targets, shared_windows)], settings)[0]


# -- the official-style torch reference ------------------------------------------------


class OfficialStyleModel:
    """Our torch SegVol called the way the official ``SegVol.forward`` is:
    the text prompt tokenised and re-encoded by the CLIP text encoder on every
    call (the official model takes the text string), inputs moved to the
    model's device and the logits brought back to the host (the official demo
    resizes and blends logits on the CPU). fp32, eager, no_grad."""

    def __init__(self, model: Any, tokenizer: Any, template: str, device: str):
        self.torch = require("torch")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.device = device
        self.phrase: str | None = None
        self.calls = 0

    def __call__(self, image: Any, text_embedding: Any = None, boxes: Any = None, points: Any = None) -> Any:
        torch = self.torch
        dev = self.device
        self.calls += 1
        with torch.no_grad():
            text = None
            if text_embedding is not None and self.phrase is not None:
                ids = torch.from_numpy(self.tokenizer.encode_names([self.phrase], self.template)).to(dev)
                text = self.model.encode_text(ids)
            elif text_embedding is not None:
                text = text_embedding.to(dev)
            boxes = None if boxes is None else boxes.to(dev)
            points = None if points is None else tuple(p.to(dev) for p in points)
            return self.model(image.to(dev), text, boxes, points).cpu()


def official_targets(runtime: Any, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Zoom-out-space prompts of ``targets`` for :func:`run_official` (mapped
    through the runtime's geometry, as the official demo derives them)."""
    from . import prompts as P

    out = []
    for t in targets:
        box = P.parse_box(t["box"]) if t.get("box") is not None else None
        points = P.parse_points(t["points"]) if t.get("points") is not None else None
        mp = P.to_model_space(runtime.geometry, box, points)
        text = runtime.text_embeddings([t["text"]])[0] if t.get("text") else None
        pts = None if mp.points_zoom is None else (mp.points_zoom.coords, mp.points_zoom.labels)
        out.append({"phrase": t.get("text"), "text": text, "box_zoom": mp.box_zoom, "points_zoom": pts})
    return out


def run_official(wrapper: OfficialStyleModel, crop_image: Any, zoom_image: Any, targets: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The official demo's loop: one full zoom-out-zoom-in per target."""
    from .export.reference import official_zoom_out_zoom_in

    out = []
    for t in targets:
        wrapper.phrase = t["phrase"]
        out.append(official_zoom_out_zoom_in(wrapper, crop_image, zoom_image, t["text"], t["box_zoom"], t["points_zoom"]))
    return out


def official_trial(case: str, wrapper: OfficialStyleModel, runtime: Any, targets: Sequence[Mapping[str, Any]]) -> Trial:
    """The official-style flow on the runtime's crop and zoom-out images
    (preprocessing excluded, as in the reference figures)."""
    torch = wrapper.torch
    crop = torch.from_numpy(np.ascontiguousarray(runtime.crop_image))
    zoom = torch.from_numpy(np.ascontiguousarray(runtime.zoom_image))
    prompts = official_targets(runtime, targets)
    calls: list[int] = []
    label = f"torch official-style ({wrapper.device})"

    def run() -> None:
        wrapper.calls = 0
        run_official(wrapper, crop, zoom, prompts)
        calls.append(wrapper.calls)

    def record(report: Report, t: Timing) -> Row:
        n = len(targets)
        return report.add(case, label, f"zoom-out-zoom-in, {n} target{'s' * (n > 1)}", t,
                          windows=calls[-1] - n, note=f"{calls[-1]} full model calls")

    return Trial(f"{case}: {label}", run, record)


def bench_official(report: Report, case: str, wrapper: OfficialStyleModel, runtime: Any,
                   targets: Sequence[Mapping[str, Any]], settings: Settings) -> Row | None:
    """:func:`official_trial` timed on its own."""
    return run_trials(report, [official_trial(case, wrapper, runtime, targets)], settings)[0]


def bench_official_graphs(report: Report, case: str, wrapper: OfficialStyleModel, config: Any, settings: Settings) -> None:
    """The official model's per-window pieces: image encoder (batch 1, the
    official code never batches), text encoder, decoder with the upsample to
    the window (official ``forward_decoder``), one whole window."""
    torch = wrapper.torch
    dev = wrapper.device
    model = wrapper.model
    label = f"torch official-style ({dev})"
    x = torch.rand((1, 1, *config.spatial_size), generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        t = time_calls(lambda: model.encode_image(x), settings.repeat, settings.warmup)
        report.add(case, label, "image encoder, batch 1", t, batch=1)
        emb = model.encode_image(x)
        ids = lambda: torch.from_numpy(wrapper.tokenizer.encode_names(["liver"], wrapper.template)).to(dev)  # noqa: E731
        t = time_calls(lambda: model.encode_text(ids()), settings.repeat, settings.warmup)
        report.add(case, label, "text: tokenize + text encoder", t)
        text = model.encode_text(ids())
        boxes = torch.tensor([bench_box(config)], dtype=torch.float32).to(dev)
        t = time_calls(lambda: model.forward_decoder(emb, text, boxes), settings.repeat, settings.warmup)
        report.add(case, label, "decoder (text + box) + upsample, batch 1", t)
        wrapper.phrase = "liver"
        t = time_calls(lambda: wrapper(x.cpu(), text, boxes.cpu()), settings.repeat, settings.warmup)
        report.add(case, label, "one full window (model call)", t)


# -- the quick run (`segvol-rt bench`) -------------------------------------------------


def _open(artifacts: Any, backend: str, device: str, checkpoint: Any = None, model: Any = None,
          threads: int | None = None) -> tuple[Any, str]:
    """A backend by name, or raise SegVolError saying why it cannot run."""
    if backend == "torch" and model is not None:
        from .backends.torch import TorchBackend

        return TorchBackend(artifacts, device=device, model=model), "torch"
    if backend == "onnxruntime" and device == "cpu" and threads:
        from .backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifacts, device="cpu", threads=threads), "requested"
    from .backends.select import open_backend

    return open_backend(artifacts, backend=backend, device=device, checkpoint=checkpoint)


BACKEND_CHOICES = {
    # label: (backend name, device)
    "ort-cpu": ("onnxruntime", "cpu"),
    "ort-cuda": ("onnxruntime", "cuda"),
    "tensorrt": ("tensorrt", "cuda"),
    "torch-pipeline": ("torch", "auto"),
}


def torch_device(requested: str = "auto") -> str:
    torch = require("torch")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def open_backends(artifacts: Any, labels: Sequence[str], checkpoint: Any, model: Any, log: Log,
                  threads: int | None = None) -> dict[str, Any]:
    """Open each backend of ``labels`` that can run here; log why the others
    cannot. ``threads``: intra-op threads of ONNX Runtime on the CPU (default: all cores)."""
    opened = {}
    for label in labels:
        name, device = BACKEND_CHOICES[label]
        try:
            if name == "torch":
                if model is None and checkpoint is None:
                    raise SegVolError("no checkpoint to build the torch model from")
                device = torch_device(device)
            backend, _ = _open(artifacts, name, device, checkpoint, model, threads)
        except SegVolError as exc:
            log(f"skipping {label}: {exc}")
            continue
        opened[f"{label}" if name != "torch" else f"torch-pipeline ({backend.device})"] = backend
    return opened


def capped_backend(backend: Any, max_windows: int) -> Any:
    """A view of ``backend`` whose image encoder takes at most ``max_windows``
    windows per call: the runtime reads its batch limit from the specs, so
    this times the pipeline with smaller encoder batches on the same sessions."""
    from .backends.base import Backend

    class Capped(Backend):
        name = backend.name
        device = backend.device

        def __init__(self) -> None:
            specs = dict(backend.specs)
            enc = specs[S.IMAGE_ENCODER]
            lo, _, hi = enc.ranges["B"]
            cap = max(lo, min(hi, int(max_windows)))
            specs[S.IMAGE_ENCODER] = dataclasses.replace(enc, ranges={**enc.ranges, "B": (lo, cap, cap)})
            super().__init__(specs)
            self.window_batch = cap

        @property
        def xp(self) -> Any:
            return backend.xp

        def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
            return backend._run(graph, feeds)

        def describe(self) -> str:
            return f"{backend.describe()}, at most {max_windows} window(s) per encoder call"

    return Capped()


def quick_bench(
    artifacts: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    backends: Sequence[str] = ("ort-cpu", "ort-cuda", "tensorrt", "torch-pipeline"),
    repeat: int = 5,
    warmup: int = 1,
    scan_shape: Sequence[int] = (160, 160, 48),
    cache_dir: str | os.PathLike[str] | None = None,
    log: Log | None = None,
    model_name: str = "tiny",
    threads: int | None = None,
) -> Report:
    """A run of seconds on whatever is installed: per-stage latencies of each
    backend that can run, on a small phantom scan, one target.

    The model: ``artifacts`` when given (with ``checkpoint`` for the torch
    rows), else ``model_name``: ``"tiny"`` (the tiny benchmark model, exported
    into the cache once; needs the ``export`` extra) or ``"demo"`` (the
    shipped demo model). ``threads``: CPU threads of ONNX Runtime and torch
    (default: all cores)."""
    import tempfile

    say = log or (lambda _m: None)
    from .artifacts import Artifacts

    model = None
    if threads and available("torch"):
        require("torch").set_num_threads(threads)
    if artifacts is None:
        if model_name == "tiny" and not available("torch"):
            raise SegVolError(
                "segvol-rt bench needs a model: pass --artifacts DIR (from segvol-rt export), use --model demo, "
                "or install the export extra to build the tiny benchmark model: pip install 'segvol-rt[export]'"
            )
        bm = prepare_bench_model(model_name, cache_dir, log=say)
        artifacts, checkpoint = bm.artifacts, bm.checkpoint
    arts = Artifacts.load(artifacts)
    arts.verify()
    config = arts.config
    report = Report("segvol-rt bench (quick)")
    report.meta.update(machine_info())
    report.meta["settings"] = {"repeat": repeat, "warmup": warmup, "artifacts": str(artifacts), "threads": threads}
    report.meta["model"] = {"window": list(config.spatial_size), "embed_dim": config.embed_dim,
                            "encoder_depth": config.encoder_depth}
    settings = Settings(repeat=repeat, warmup=warmup)
    tokenizer = arts.tokenizer()
    with tempfile.TemporaryDirectory(prefix="segvol-rt-bench-") as tmp:
        tmpdir = Path(tmp)
        ph, image = synthetic_scan(scan_shape, fill_air=False)
        path = write_scan(tmpdir / "scan.nii.gz", ph)
        case = "phantom " + "x".join(str(s) for s in scan_shape)
        say(f"read / preprocess / write: {path.name}")
        report.cases[case] = bench_io(report, case, path, config.spatial_size, settings, tmpdir)
        report.cases[case]["window"] = list(config.spatial_size)
        opened = open_backends(arts, backends, checkpoint, model, say, threads)
        if not opened:
            raise SegVolError("no backend can run on this machine")
        from .runtime import SegVolRuntime

        targets = requests_for(image.shape, 1)
        for label, backend in opened.items():
            say(f"{label}: graphs")
            bench_graphs(report, case, label, backend, config, tokenizer, settings, arts.prompt_template)
            rt = SegVolRuntime(arts, backend, label)
            rt.set_volume(path)
            say(f"{label}: zoom-out-zoom-in")
            bench_pipeline(report, case, label, rt, targets, settings)
            if label == next(iter(opened)):
                bench_text_lookup(report, case, rt, settings)
                say("kernels (numpy)")
                bench_kernels(report, case, rt.crop_image, config, settings, "numpy")
                report.cases[case]["crop_shape"] = list(rt.crop_image.shape)
            if label == next(iter(opened)) and checkpoint is not None and available("torch"):
                say("torch official-style reference")
                _quick_official(report, case, rt, checkpoint, tokenizer, arts.prompt_template, targets, settings)
            rt.close()
    _pipeline_ratios(report, case, list(opened))
    return report


def _quick_official(report: Report, case: str, rt: Any, checkpoint: Any, tokenizer: Any, template: str,
                    targets: Sequence[Mapping[str, Any]], settings: Settings) -> None:
    from .export.checkpoint import build_model

    model, _ = build_model(checkpoint)
    device = torch_device()
    wrapper = OfficialStyleModel(model.to(device).eval(), tokenizer, template, device)
    bench_official_graphs(report, case, wrapper, rt.config, settings)
    bench_official(report, case, wrapper, rt, targets, settings)


def _pipeline_ratios(report: Report, case: str, labels: Sequence[str]) -> None:
    """Each backend's 1-target zoom-out-zoom-in against the official-style
    torch flow, and against the first backend."""
    stage = "zoom-out-zoom-in, 1 target"
    official = [r for r in report.rows if r.case == case and r.backend.startswith("torch official") and r.stage == stage]
    for label in labels:
        row = report.find(case, label, stage)
        if official:
            report.ratio(f"{case}: {official[-1].backend} / {label}, {stage}", official[-1], row)
        if label != labels[0]:
            report.ratio(f"{case}: {label} / {labels[0]}, {stage}", row, report.find(case, labels[0], stage))
