"""``segvol-rt export``: checkpoint -> artifacts directory.

Stages, each reported through ``progress``:

1. load the checkpoint (strict, ``weights_only``) and its tokenizer files;
2. per graph: export (opset >= 17, dynamic axes from :mod:`segvol_rt.io.spec`),
   TensorRT operator/type check, parity against torch on ONNX Runtime CPU;
3. the text-embedding table of the vocabulary (torch text encoder);
4. manifest.json (:mod:`segvol_rt.io.artifacts`).

With ``precision="fp16"`` each graph also gets an fp16 variant beside it
(:mod:`segvol_rt.export.fp16`), TensorRT-checked like the fp32 one and
verified against it on ONNX Runtime CPU; the manifest lists it under the
graph's ``variants`` (the fp32 graph stays the reference and is always written).

Everything is written into a temporary directory beside ``out`` and renamed
into place at the end, so ``out`` is never half-written. An existing ``out``
is refused unless ``force``; then it is replaced only if it is empty or an
artifacts directory (never an arbitrary directory), by swapping the new
directory in and deleting the old one afterwards.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segvol_rt._version import __version__
from segvol_rt.errors import SegVolError
from segvol_rt.export import fp16 as F
from segvol_rt.export import onnx as O
from segvol_rt.export import trt_support
from segvol_rt.export.checkpoint import TOKENIZER_FILES, Checkpoint, build_model
from segvol_rt.io import artifacts as A
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.io.digests import sha256_file

if TYPE_CHECKING:
    from segvol_rt.export.model.segvol import SegVol
    from segvol_rt.io.tokenizer import ClipTokenizer

Progress = Callable[[str], None]
# Example sizes the graphs are traced with: not 1, so no axis is specialised.
_TRACE_DIMS = {"B": 2, "N": 5}
_TEXT_BATCH = 16


@dataclass(frozen=True)
class ExportOptions:
    """Knobs of :func:`export_artifacts`; the verify_* fields set how much
    parity checking runs (each point count is used at least once)."""

    opset: int = O.DEFAULT_OPSET
    max_batch: int = S.DEFAULT_MAX_BATCH
    max_points: int = S.DEFAULT_MAX_POINTS
    verify: bool = True
    image_batches: tuple[int, ...] = (1, 2)
    text_batches: tuple[int, ...] = (1, 3)
    decoder_batches: tuple[int, ...] = (1, 2, 3, 4)
    point_counts: tuple[int, ...] = (1, 16, 5, 9)
    seed: int = 0
    precision: str = "fp32"  # "fp16": also write fp16 variants of the graphs
    # axis codes of the voxel order the model was trained on (manifest voxel_orientation); None: the checkpoint's
    # config.json declaration if any, else none (the runtime keeps each scan's stored order, as SegVol)
    voxel_orientation: str | None = None

    def check(self) -> None:
        if self.precision not in A.GRAPH_VARIANTS:
            raise SegVolError(f"--precision must be one of {', '.join(A.GRAPH_VARIANTS)}, got {self.precision!r}")
        if self.opset < O.MIN_OPSET:
            raise SegVolError(f"--opset {self.opset} is too old: the graphs need opset >= {O.MIN_OPSET}")
        if not 1 <= self.max_batch <= 64:
            raise SegVolError(f"--max-batch must be in 1..64, got {self.max_batch}")
        if not 1 <= self.max_points <= 256:
            raise SegVolError(f"--max-points must be in 1..256, got {self.max_points}")
        if self.voxel_orientation is not None:
            A.check_orientation(self.voxel_orientation)


@dataclass
class VariantResult:
    """An fp16 variant of a graph: its file, what stayed fp32, its parity against the fp32 graph."""

    precision: str
    file: str
    sha256: str
    bytes: int
    operators: dict[str, int]
    parity: O.Parity | None
    conversion: dict[str, Any]

    def to_manifest(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "operators": self.operators,
            "tensorrt_check": {"source": trt_support.SOURCE, "problems": []},
            "parity": None if self.parity is None else self.parity.to_dict(),
            "conversion": self.conversion,
        }


@dataclass
class GraphResult:
    name: str
    file: str
    sha256: str
    bytes: int
    operators: dict[str, int]
    parity: O.Parity | None
    seconds: float
    variants: dict[str, VariantResult] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What was written: the directory, its manifest and per-stage figures."""

    out: Path
    manifest: dict[str, Any]
    graphs: list[GraphResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def table(self) -> list[tuple[str, str, str, str]]:
        """(file, size, operators, parity) rows for the CLI summary."""
        rows = []
        for g in self.graphs:
            ops = f"{sum(g.operators.values())} nodes, {len(g.operators)} op types"
            parity = "skipped" if g.parity is None else f"rel L2 <= {g.parity.max_rel_l2:.1e} ({len(g.parity.cases)} cases)"
            rows.append((g.file, _size(g.bytes), ops, parity))
            for v in g.variants.values():
                kept = v.conversion
                ops = f"{sum(v.operators.values())} nodes; fp32: {len(kept['fp32_ops'])} op types, {kept['fp32_nodes']} nodes"
                parity = "skipped" if v.parity is None else f"vs fp32: rel L2 <= {v.parity.max_rel_l2:.1e} ({len(v.parity.cases)} cases)"
                rows.append((v.file, _size(v.bytes), ops, parity))
        for rel in (A.TEXT_TABLE, *(f"{A.TOKENIZER_DIR}/{n}" for n in self.manifest["tokenizer"]["files"])):
            rows.append((rel, _size((self.out / rel).stat().st_size), "", ""))
        return rows


def export_artifacts(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    options: ExportOptions = ExportOptions(),
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``checkpoint`` (a SegVol ``.pth`` or a Hugging Face directory)
    into the artifacts directory ``out``; ``tokenizer`` is a directory of CLIP
    tokenizer files (needed when the checkpoint carries none)."""
    say = progress or (lambda _msg: None)
    options.check()
    given = Path(out)
    out = Path(os.path.abspath(given))  # normalises "." and ".." without following links
    _check_target(out, force)
    work = _make_workdir(out)  # before the slow parts: an unwritable --out fails at once
    try:
        t0 = time.perf_counter()
        say(f"loading checkpoint {checkpoint}")
        model, ckpt = build_model(checkpoint)
        timings = {"load": time.perf_counter() - t0}
        result = _export_into(work, model, ckpt, tokenizer, options, say, timings)
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result.out = given
    return result


# -- stages --------------------------------------------------------------------
def _export_into(
    work: Path, model: SegVol, ckpt: Checkpoint, tokenizer: str | os.PathLike[str] | None, options: ExportOptions, say: Progress,
    timings: dict[str, float],
) -> ExportResult:
    config = ckpt.config
    t = time.perf_counter()
    tok, tok_files = _copy_tokenizer(work, ckpt, tokenizer, config)
    specs = S.graph_specs(config, options.max_batch, options.max_points)
    vocab_ids = _vocabulary_ids(tok, config)
    timings["tokenizer"] = time.perf_counter() - t

    graphs = []
    for name in S.GRAPH_NAMES:
        t = time.perf_counter()
        extra = {"vocabulary prompts": {"token_ids": vocab_ids[:_TEXT_BATCH]}} if name == S.TEXT_ENCODER else None
        graphs.append(export_graph(work, model, specs[name], config, options, say, extra))
        timings[name] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"text table: {len(vocab_ids)} vocabulary prompts through the text encoder")
    table = _write_text_table(work, model, vocab_ids)
    timings["text_table"] = time.perf_counter() - t

    manifest = _manifest(ckpt, config, specs, options, graphs, tok_files, table)
    A.write_manifest(work, manifest)
    return ExportResult(work, manifest, graphs, timings)


def export_graph(
    work: Path,
    model: SegVol,
    spec: S.GraphSpec,
    config: SegVolConfig,
    options: ExportOptions = ExportOptions(),
    say: Progress | None = None,
    extra: dict[str, dict[str, np.ndarray]] | None = None,
) -> GraphResult:
    """Export one graph of ``model`` into ``work/<spec.file>``, check it
    against TensorRT's parser support and (``options.verify``) its parity with
    torch; a failed check raises :class:`SegVolError`."""
    say = say or (lambda _msg: None)
    t = time.perf_counter()
    path = work / spec.file
    module = O.graph_module(model, spec.name)
    example = O.random_inputs(spec, config, _TRACE_DIMS, np.random.default_rng(options.seed))
    say(f"{spec.name}: exporting (opset {options.opset})")
    O.export_graph(module, spec, example, path, options.opset)
    report = trt_support.check_graph(path)
    say(f"{spec.name}: TensorRT check - {report.summary()}")
    trt_support.require_supported(report)
    parity = None
    if options.verify:
        say(f"{spec.name}: verifying on ONNX Runtime against torch")
        parity = _verify(path, module, model, spec, config, options, extra)
        say(f"{spec.name}: max rel L2 {parity.max_rel_l2:.2e} over {len(parity.cases)} cases")
        parity.require()
    variants = {}
    if options.precision == "fp16":
        variants["fp16"] = export_fp16_variant(work, module, spec, config, options, say, extra)
    return GraphResult(
        spec.name, spec.file, sha256_file(path), path.stat().st_size, report.operators, parity, time.perf_counter() - t,
        variants,
    )


def export_fp16_variant(
    work: Path,
    module: Any,
    spec: S.GraphSpec,
    config: SegVolConfig,
    options: ExportOptions,
    say: Progress,
    extra: dict[str, dict[str, np.ndarray]] | None = None,
) -> VariantResult:
    """The fp16 variant of ``work/<spec.file>`` beside it
    (:func:`segvol_rt.export.fp16.convert_graph`), TensorRT-checked and
    (``options.verify``) within :data:`segvol_rt.export.fp16.FP16_TOLERANCE`
    of the fp32 graph on ONNX Runtime CPU."""
    src = work / spec.file
    dst = work / F.fp16_file(spec.file)
    say(f"{spec.name}: fp16 variant ({F.converter_version()}, keep_io_types)")
    converted = F.convert_graph(src, dst, O.staged_norm_scopes(module))
    report = trt_support.check_graph(dst)
    say(f"{spec.name} fp16: TensorRT check - {report.summary()}")
    trt_support.require_supported(report)
    parity = None
    if options.verify:
        batches = options.decoder_batches if spec.name == S.PROMPT_DECODER else (
            options.image_batches if spec.name == S.IMAGE_ENCODER else options.text_batches)
        cases = F.parity_cases(spec, config, _within(batches, spec.ranges["B"]), _points_within(options), options.seed, extra)
        parity = F.fp16_parity(O.ort_session(src), O.ort_session(dst), spec, cases)
        say(f"{spec.name} fp16: max rel L2 {parity.max_rel_l2:.2e} against fp32 over {len(parity.cases)} cases")
        parity.require()
    return VariantResult("fp16", dst.name, sha256_file(dst), dst.stat().st_size, report.operators, parity,
                         converted.conversion())


def _verify(
    path: Path, module: Any, model: SegVol, spec: S.GraphSpec, config: SegVolConfig, options: ExportOptions,
    extra: dict[str, dict[str, np.ndarray]] | None,
) -> O.Parity:
    session = O.ort_session(path)
    if spec.name == S.PROMPT_DECODER:
        cases = O.decoder_cases(
            config, _within(options.decoder_batches, spec.ranges["B"]), _points_within(options), seed=options.seed
        )
        return O.verify_decoder(session, model, spec, config, cases, seed=options.seed)
    batches = options.image_batches if spec.name == S.IMAGE_ENCODER else options.text_batches
    return O.verify_encoder(session, module, spec, config, _within(batches, spec.ranges["B"]), options.seed, extra)


def _within(values: tuple[int, ...], rng: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(v for v in values if rng[0] <= v <= rng[2]) or (rng[0],)


def _points_within(options: ExportOptions) -> tuple[int, ...]:
    return tuple(p for p in options.point_counts if 1 <= p <= options.max_points) or (1,)


def _copy_tokenizer(work: Path, ckpt: Checkpoint, given: Any, config: SegVolConfig) -> tuple[Any, dict[str, str]]:
    """Copy the CLIP tokenizer files into ``work/tokenizer``; returns the
    loaded tokenizer and {file name: sha256}."""
    from segvol_rt.io.tokenizer import ClipTokenizer

    source = Path(given) if given is not None else ckpt.tokenizer_dir
    if source is None:
        raise SegVolError(
            f"{ckpt.path.name} carries no CLIP tokenizer files (a GitHub .pth has none): pass --tokenizer DIR, "
            "e.g. the official SegVol repository's config/clip directory"
        )
    if not source.is_dir():
        raise SegVolError(f"tokenizer directory {source} does not exist")
    files = [source / n for n in TOKENIZER_FILES if (source / n).is_file()]
    if not files:
        raise SegVolError(f"{source} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    target = work / A.TOKENIZER_DIR
    target.mkdir()
    for f in files:
        shutil.copyfile(f, target / f.name)
    tok = ClipTokenizer.from_dir(target)
    _check_tokenizer(tok, config, source)
    return tok, {f.name: sha256_file(target / f.name) for f in files}


def _check_tokenizer(tok: ClipTokenizer, config: SegVolConfig, source: Path) -> None:
    """The tokenizer must fit the text encoder: ids inside its table, the end
    token where the encoder pools, the same context length."""
    text = config.text
    problems = []
    if tok.vocab_size > text.vocab_size:
        problems.append(f"{tok.vocab_size} ids but the text encoder has {text.vocab_size} embeddings")
    if tok.eos_id != text.eos_token_id:
        problems.append(f"end token id {tok.eos_id} but the text encoder pools at id {text.eos_token_id}")
    if tok.max_length != text.max_length:
        problems.append(f"context length {tok.max_length} but the text encoder takes {text.max_length}")
    if problems:
        raise SegVolError(f"tokenizer {source} does not fit this checkpoint: {'; '.join(problems)}")


def _vocabulary_ids(tok: ClipTokenizer, config: SegVolConfig) -> np.ndarray:
    from segvol_rt.io.vocabulary import CATEGORIES

    return tok.encode_names(CATEGORIES, template=config.prompt_template)


def _write_text_table(work: Path, model: SegVol, ids: np.ndarray) -> dict[str, Any]:
    from segvol_rt.io.vocabulary import CATEGORIES

    chunks = []
    with torch.no_grad():
        for i in range(0, len(ids), _TEXT_BATCH):
            chunks.append(model.text_encoder(torch.from_numpy(ids[i : i + _TEXT_BATCH])).float().numpy())
    embeddings = np.concatenate(chunks).astype(np.float32)
    path = work / A.TEXT_TABLE
    with open(path, "wb") as f:
        np.savez(f, names=np.array(CATEGORIES, dtype=str), embeddings=embeddings)
    return {"file": A.TEXT_TABLE, "sha256": sha256_file(path), "count": len(CATEGORIES)}


def _manifest(
    ckpt: Checkpoint, config: SegVolConfig, specs: dict[str, S.GraphSpec], options: ExportOptions,
    graphs: list[GraphResult], tok_files: dict[str, str], table: dict[str, Any],
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "format_version": A.FORMAT_VERSION,
        "segvol_rt_version": __version__,
        "checkpoint": {"name": ckpt.path.name, "sha256": ckpt.sha256, "format": ckpt.format},
        "config": config.to_dict(),
        "prompt_template": config.prompt_template,
        "opset": options.opset,
        "graphs": {
            g.name: {
                "file": g.file,
                "sha256": g.sha256,
                "spec": specs[g.name].to_dict(),
                "operators": g.operators,
                "tensorrt_check": {"source": trt_support.SOURCE, "problems": []},
                "parity": None if g.parity is None else g.parity.to_dict(),
                **({"variants": {p: v.to_manifest() for p, v in g.variants.items()}} if g.variants else {}),
            }
            for g in graphs
        },
        "tokenizer": {"dir": A.TOKENIZER_DIR, "files": tok_files},
        "text_table": table,
        **_orientation(options.voxel_orientation or ckpt.voxel_orientation),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            **({"onnxconverter_common": F.converter_version().split()[-1]} if options.precision == "fp16" else {}),
        },
        "engines": {},
    }


def _orientation(codes: str | None) -> dict[str, str]:
    """The manifest's ``voxel_orientation`` field (absent when the model declares none)."""
    return {} if codes is None else {"voxel_orientation": A.check_orientation(codes)}


# -- the output directory ------------------------------------------------------
def _check_target(out: Path, force: bool) -> None:
    """Refuse to touch an existing ``out`` unless ``force``, and even then only
    an empty directory or an artifacts directory."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise SegVolError(f"{out} already exists; pass --force to replace it")
    if not out.is_dir() or out.is_symlink():
        raise SegVolError(f"{out} exists and is not a directory; refusing to replace it")
    if any(out.iterdir()) and not (out / A.MANIFEST).is_file():
        raise SegVolError(f"{out} is not empty and holds no {A.MANIFEST}; refusing to replace a directory "
                          "that is not an artifacts directory")


def _make_workdir(out: Path) -> Path:
    """A fresh temporary directory beside ``out`` (same file system, so the
    final rename is atomic)."""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise SegVolError(f"cannot write the output directory {out}: {exc.strerror or exc}") from exc


def _swap_into_place(work: Path, out: Path) -> None:
    """Rename ``work`` to ``out``; an existing ``out`` is moved aside first and
    deleted only once the new directory is in place."""
    os.chmod(work, 0o755)  # mkdtemp makes it private
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
        os.rename(out, old / out.name)
    try:
        os.rename(work, out)
    except OSError:
        if old is not None:
            os.rename(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def export_demo_model(checkpoint: Path, target: Path, say: Callable[[str], None] | None = None) -> Path:
    """Export the demo checkpoint ``checkpoint`` (the caller finds it:
    :func:`segvol_rt.demo.model.demo_checkpoint_dir`, a layer above this one)
    into ``target``, replacing a damaged copy."""
    say = say or (lambda _msg: None)
    # A light parity check: the shipped model was verified when it was made;
    # this only guards against a broken local torch / onnxruntime pair.
    options = ExportOptions(image_batches=(1,), text_batches=(1,), decoder_batches=(1, 2), point_counts=(1, 5), precision="fp16")
    say(f"exporting the demo model into {target} (once; later runs reuse it)")
    export_artifacts(checkpoint, target, options=options, force=True, progress=say)
    return target
