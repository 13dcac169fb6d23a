"""The three ONNX graphs: one small torch wrapper per graph, the export, and
the verification of each exported file against torch on ONNX Runtime (CPU).

Graph inputs and outputs are exactly those of :mod:`segvol_rt.io.spec`; the
wrappers only fix the call signature, so the model code stays the one
implementation of the math.

Prompt decoder exactness
------------------------
Official SegVol builds the decoder's sparse tokens from optional points,
box and text (``PromptEncoder.forward``). The ``prompt_decoder`` graph takes
one token sequence (``prompt_coords``, ``prompt_labels``; kinds in
:mod:`segvol_rt.io.spec`) and is *exactly* the official computation when the
runtime lays the tokens out as :func:`segvol_rt.io.spec.decoder_tokens` does:

* order and count are the official ones: ``[points..., pad point iff points
  and no box, box min corner, box max corner, text]``. No token that the
  official model would not see is ever added, so the attention (the only
  place where tokens interact) sees the same set in the same order;
* each token's value comes from selects (``Where``) between exact operands,
  never from arithmetic with masks: a pad (-1) is ``0 + not_a_point_embed``
  (the official zero-then-add), a point/corner (0..3) is ``PE(coords + 0.5,
  official axis normalisation) + point_embeddings[kind]``, the same two
  operands added as officially, and a text token (4) is ``text_embedding``;
* the text-similarity term is ``Where(row has a label-4 token, masks + sim,
  masks)``, i.e. bit-for-bit the official "added iff text is given", per row;
* dense prompt and image PE are the official no-mask embedding and
  ``get_dense_pe()`` grid, constant-folded into the graph.

What remains is floating-point reassociation between kernels (torch vs ONNX
Runtime vs TensorRT), which :func:`verify_decoder` bounds against the
official-style ``SegVol.forward_decoder`` for every prompt combination. The
one deliberate change of evaluation order is :class:`StagedLayerNorm`: the
upscaling LayerNorm's statistics over 3.1 M values (full size) are summed in
two stages, because ONNX Runtime's one-pass float32 sum is off by ~5e-5
relative. (Checked once against the official ``PromptEncoder``/``MaskDecoder``
code itself with the same random full-size weights: ONNX graph within 1.7e-6
rel L2 for every combination, batch 1-2, 1-16 points.)
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig
from segvol_rt.ops.boxes import int_box

MIN_OPSET = 17
DEFAULT_OPSET = 17
# fp32 parity bound of every graph against torch (relative L2 error).
PARITY_TOLERANCE = 1e-5

# Prompt combinations the decoder is verified on (official-style arguments).
PROMPT_COMBOS: tuple[tuple[str, ...], ...] = (
    ("text",),
    ("box",),
    ("points",),
    ("text", "box"),
    ("text", "points"),
    ("box", "points"),
    ("text", "box", "points"),
)


# -- wrappers --------------------------------------------------------------
class ImageEncoderGraph(nn.Module):
    """image (B, 1, D, H, W) float32 in [0, 1] -> image_embedding (B, C, d, h, w)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class TextEncoderGraph(nn.Module):
    """token_ids (B, L) int64 -> text_embedding (B, C): CLIP pooled at the end
    token, then ``dim_align``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(token_ids)


class StagedLayerNorm(nn.Module):
    """``nn.LayerNorm`` over ``(C, d, h, w)`` whose statistics are reduced in
    two stages: over the spatial axes per channel, then over the channels.

    The decoder's upscaling LayerNorm normalises 3.1 M values per sample at
    full size. ONNX Runtime's CPU LayerNormalization / ReduceMean sum them in
    one float32 pass (relative error ~5e-5 against a float64 reference); the
    staged sums stay at ~1e-7, like torch. Same formula (biased variance,
    ``eps`` inside the square root) and the very same parameters.
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.eps = norm.eps
        self.ndim = len(norm.normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = x.ndim - self.ndim
        spatial = tuple(range(channel + 1, x.ndim))
        mean = x.mean(dim=spatial, keepdim=True).mean(dim=channel, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=spatial, keepdim=True).mean(dim=channel, keepdim=True)
        out = centred / torch.sqrt(var + self.eps)
        return out * self.weight + self.bias if self.weight is not None else out


def stage_volume_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose LayerNorms over more than one axis are
    :class:`StagedLayerNorm` (sharing the parameters); ``module`` is untouched."""
    shell = copy.copy(module)
    shell._modules = {}
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm) and len(child.normalized_shape) > 1:
            shell._modules[name] = StagedLayerNorm(child)
        else:
            shell._modules[name] = stage_volume_norms(child)
    return shell


def staged_norm_scopes(module: nn.Module) -> list[str]:
    """Qualified names of the :class:`StagedLayerNorm` modules inside ``module``
    (``["mask_decoder.output_upscaling.1"]`` for the prompt decoder graph)."""
    return [name for name, child in module.named_modules() if isinstance(child, StagedLayerNorm)]


class PromptDecoderGraph(nn.Module):
    """Prompt tokens + image embedding -> low_res_logits (B, 1, 4d, 4h, 4w).

    Inputs (see :mod:`segvol_rt.io.spec`): image_embedding (B, C, d, h, w),
    prompt_coords (B, N, 3) float32 model-window voxel indices in (D, H, W)
    order before the +0.5 shift, prompt_labels (B, N) int32 token kinds,
    text_embedding (B, C) (read only in rows with a label-4 token). The
    trilinear upsampling to the window size is the runtime's.

    The body is ``SegVol.decode_tokens`` on the model's own prompt encoder and
    mask decoder, the latter with :func:`stage_volume_norms` applied.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = stage_volume_norms(model.mask_decoder)

    def forward(
        self,
        image_embedding: torch.Tensor,
        prompt_coords: torch.Tensor,
        prompt_labels: torch.Tensor,
        text_embedding: torch.Tensor,
    ) -> torch.Tensor:
        pe = self.prompt_encoder
        tokens = pe.embed_tokens(prompt_coords, prompt_labels, text_embedding)
        has_text = (prompt_labels == S.LABEL_TEXT).any(dim=1)
        return self.mask_decoder(
            image_embedding, pe.dense_pe(), tokens, pe.dense_embedding(), text_embedding, has_text
        )


GRAPH_MODULES: dict[str, Callable[[nn.Module], nn.Module]] = {
    S.IMAGE_ENCODER: ImageEncoderGraph,
    S.TEXT_ENCODER: TextEncoderGraph,
    S.PROMPT_DECODER: PromptDecoderGraph,
}


def graph_module(model: nn.Module, name: str) -> nn.Module:
    """The eval-mode wrapper of graph ``name`` around ``model``."""
    return GRAPH_MODULES[name](model).eval()


# -- example inputs ----------------------------------------------------------
def random_inputs(spec: S.GraphSpec, config: SegVolConfig, dims: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible random inputs of ``spec`` with dynamic axes ``dims``:
    images in [0, 1], CLIP-shaped token sequences, valid decoder tokens."""
    feeds = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        if t.name == "token_ids":
            feeds[t.name] = random_token_ids(shape[0], config, rng)
        elif t.name == "prompt_labels":
            feeds[t.name] = rng.choice([S.LABEL_NEGATIVE, S.LABEL_POSITIVE, S.LABEL_PAD], size=shape).astype(t.dtype)
            feeds[t.name][:, -1] = S.LABEL_TEXT
        elif t.name == "prompt_coords":
            feeds[t.name] = (rng.random(shape) * np.array(config.spatial_size)).astype(t.dtype)
        elif t.name == "image":
            feeds[t.name] = rng.random(shape, dtype=np.float32)
        else:
            feeds[t.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def random_token_ids(batch: int, config: SegVolConfig, rng: np.random.Generator) -> np.ndarray:
    """(B, L) int64: start token, 1..20 random word ids, end token, padding."""
    text = config.text
    ids = np.full((batch, text.max_length), text.pad_token_id, dtype=np.int64)
    for row in ids:
        n = int(rng.integers(1, 21))
        row[0] = text.bos_token_id
        row[1 : 1 + n] = rng.integers(0, min(text.bos_token_id, text.vocab_size), size=n)
        row[1 + n] = text.eos_token_id
    return ids


# -- export ------------------------------------------------------------------
def export_graph(
    module: nn.Module, spec: S.GraphSpec, example: Mapping[str, np.ndarray], path: str | Path, opset: int = DEFAULT_OPSET
) -> Path:
    """Trace ``module`` with ``example`` and write ``path`` (TorchScript exporter,
    constant folding, dynamic axes from ``spec``); checked with onnx.checker."""
    if opset < MIN_OPSET:
        raise SegVolError(f"opset {opset} is too old: the graphs need opset >= {MIN_OPSET}")
    path = Path(path)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in spec.input_names)
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is legacy, and the tracer warns
        # about Python-int shapes that are constant by construction.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.onnx_dynamic_axes(),
            do_constant_folding=True,
        )
    _stamp_io_shapes(path, spec)
    return path


def _stamp_io_shapes(path: Path, spec: S.GraphSpec) -> None:
    """Write the spec's shapes on the graph's inputs and outputs.

    The tracer leaves some fixed output axes symbolic (even under a wrong
    name, e.g. the decoder's ``4d`` axis as ``B``); consumers such as
    TensorRT and the runtime should see the fixed sizes. The parity checks
    confirm the actual shapes."""
    import onnx

    model = onnx.load(str(path))
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        for value, tensor in zip(values, tensors):
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in tensor.shape:
                dim = dims.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
    # Intermediate shapes inferred from the old output shapes would now conflict.
    del model.graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# -- running -----------------------------------------------------------------
def ort_session(path: str | Path) -> Any:
    """A CPU ONNX Runtime session for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Verification alternates ORT and torch runs; spinning ORT workers would
    # starve torch's threads between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_torch(module: nn.Module, spec: S.GraphSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``module`` on numpy feeds; output name -> numpy array."""
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {name: o.numpy() for name, o in zip(spec.output_names, outs)}


def run_onnx(session: Any, spec: S.GraphSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec.validate_inputs(feeds)
    return dict(zip(spec.output_names, session.run(spec.output_names, dict(feeds))))


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 when both are 0)."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise SegVolError(f"shape {a.shape} differs from the reference {e.shape}")
    denom = float(np.linalg.norm(e))
    diff = float(np.linalg.norm(a - e))
    return diff / denom if denom else diff


# -- verification ------------------------------------------------------------
@dataclass
class Parity:
    """Parity of one graph: one entry per case, the worst relative L2 error."""

    graph: str
    tolerance: float = PARITY_TOLERANCE
    reference: str = "torch fp32 (decoder: official-style forward_decoder)"
    cases: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rel: float, **case: Any) -> None:
        self.cases.append({**case, "rel_l2": float(rel)})

    @property
    def max_rel_l2(self) -> float:
        return max((c["rel_l2"] for c in self.cases), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(math.isfinite(c["rel_l2"]) and c["rel_l2"] <= self.tolerance for c in self.cases)

    def require(self) -> None:
        if not self.ok:
            worst = max(self.cases, key=lambda c: c["rel_l2"] if math.isfinite(c["rel_l2"]) else math.inf)
            raise SegVolError(
                f"{self.graph}: ONNX Runtime differs from {self.reference} beyond rel L2 {self.tolerance:g} "
                f"(worst {worst}); the export is not faithful"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "runtime": "onnxruntime CPUExecutionProvider",
            "metric": "relative L2 error",
            "tolerance": self.tolerance,
            "max_rel_l2": self.max_rel_l2,
            "cases": self.cases,
        }


def verify_encoder(
    session: Any,
    module: nn.Module,
    spec: S.GraphSpec,
    config: SegVolConfig,
    batches: Sequence[int],
    seed: int = 0,
    extra: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Parity:
    """Image or text encoder on ORT vs torch: random inputs for each batch
    size, plus the named ``extra`` feeds (e.g. real prompt token ids)."""
    parity = Parity(spec.name)
    rng = np.random.default_rng(seed)
    cases: list[tuple[dict[str, Any], Mapping[str, np.ndarray]]] = [
        ({"batch": b}, random_inputs(spec, config, {"B": b}, rng)) for b in batches
    ]
    cases += [({"inputs": label, "batch": len(next(iter(f.values())))}, f) for label, f in (extra or {}).items()]
    for case, feeds in cases:
        want = run_torch(module, spec, feeds)
        got = run_onnx(session, spec, feeds)
        parity.add(max(rel_l2(got[n], want[n]) for n in spec.output_names), **case)
    return parity


@dataclass(frozen=True)
class PromptCase:
    """One official-style decoder call for a batch: ``points`` = (coords
    (B, P, 3), labels (B, P)) with labels in {1, 0, -1}, ``boxes`` (B, 6)
    inclusive (d0, h0, w0, d1, h1, w1), ``text`` (B, C); each may be None."""

    combo: tuple[str, ...]
    points: tuple[np.ndarray, np.ndarray] | None
    boxes: np.ndarray | None
    text: np.ndarray | None

    @property
    def batch(self) -> int:
        for x in (self.text, self.boxes, None if self.points is None else self.points[0]):
            if x is not None:
                return len(x)
        raise SegVolError("a prompt case needs at least one prompt")

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """The runtime's token layout of this case, stacked: (B, N, 3), (B, N)."""
        rows = []
        for i in range(self.batch):
            pts = None if self.points is None else _Points(self.points[0][i].reshape(-1, 3), self.points[1][i].reshape(-1))
            box = None if self.boxes is None else int_box(self.boxes[i])
            rows.append(S.decoder_tokens(pts, box, self.text is not None))
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


@dataclass(frozen=True)
class _Points:
    """One row's point prompts: ``coords (N, 3)``, ``labels (N,)`` (:class:`segvol_rt.io.spec.PointPrompts`)."""

    coords: np.ndarray
    labels: np.ndarray


def random_case(
    combo: Sequence[str], batch: int, num_points: int, config: SegVolConfig, rng: np.random.Generator
) -> PromptCase:
    """Random prompts of ``combo`` in the model window (integer voxels, as
    the pipeline gives them); point labels mix 1, 0 and the -1 padding of
    official ``select_points``, with the first point positive."""
    size = np.array(config.spatial_size)
    points = boxes = text = None
    if "points" in combo:
        coords = rng.integers(0, size, size=(batch, num_points, 3)).astype(np.int64)
        labels = rng.choice([1, 0, -1], size=(batch, num_points), p=[0.5, 0.35, 0.15]).astype(np.int64)
        labels[:, 0] = 1
        points = (coords, labels)
    if "box" in combo:
        lo = rng.integers(0, size // 2, size=(batch, 3))
        hi = lo + rng.integers(0, size // 2, size=(batch, 3))
        boxes = np.concatenate([lo, hi], axis=1).astype(np.int64)
    if "text" in combo:
        text = rng.standard_normal((batch, config.embed_dim), dtype=np.float32)
    return PromptCase(tuple(combo), points, boxes, text)


def official_low_res(model: nn.Module, image_embedding: np.ndarray, case: PromptCase) -> np.ndarray:
    """Low-res logits of the official-style call (``forward_decoder`` before
    its upsampling): points/boxes/text arguments, the model's own token assembly."""
    t = torch.from_numpy
    points = None
    if case.points is not None:
        points = (t(case.points[0].astype(np.float32)), t(case.points[1]))
    boxes = None if case.boxes is None else t(case.boxes.astype(np.float32))
    text = None if case.text is None else t(case.text)
    with torch.no_grad():
        out = model.decode_low_res(t(image_embedding), text_embedding=text, boxes=boxes, points=points)
    return out.numpy()


def decoder_feeds(image_embedding: np.ndarray, case: PromptCase, embed_dim: int) -> dict[str, np.ndarray]:
    """The prompt_decoder's inputs for ``case`` (zeros as text when there is none)."""
    coords, labels = case.tokens()
    text = case.text if case.text is not None else np.zeros((case.batch, embed_dim), np.float32)
    return {
        "image_embedding": image_embedding,
        "prompt_coords": coords,
        "prompt_labels": labels,
        "text_embedding": text,
    }


def decoder_cases(
    config: SegVolConfig,
    batches: Sequence[int],
    point_counts: Sequence[int],
    seed: int = 0,
    combos: Sequence[tuple[str, ...]] = PROMPT_COMBOS,
    product: bool = False,
) -> list[PromptCase]:
    """Every combo x batch size. Combos with points take the point counts in
    turn across the batch sizes, or every (batch, count) pair with ``product``."""
    rng = np.random.default_rng(seed)
    cases: list[Any] = []
    for combo in combos:
        for i, b in enumerate(batches):
            if "points" not in combo:
                counts: Sequence[int] = (0,)
            elif product:
                counts = point_counts
            else:
                counts = (point_counts[i % len(point_counts)],)
            cases.extend(random_case(combo, b, p, config, rng) for p in counts)
    return cases


def verify_decoder(
    session: Any,
    model: nn.Module,
    spec: S.GraphSpec,
    config: SegVolConfig,
    cases: Sequence[PromptCase],
    seed: int = 0,
) -> Parity:
    """prompt_decoder on ORT (runtime token layout) vs official-style
    ``forward_decoder`` (points/boxes/text) for every case."""
    parity = Parity(spec.name)
    rng = np.random.default_rng(seed)
    shape = (config.embed_dim, *config.grid_size)
    for case in cases:
        emb = rng.standard_normal((case.batch, *shape), dtype=np.float32)
        feeds = decoder_feeds(emb, case, config.embed_dim)
        got = run_onnx(session, spec, feeds)["low_res_logits"]
        want = official_low_res(model, emb, case)
        n = 0 if case.points is None else case.points[0].shape[1]
        parity.add(rel_l2(got, want), prompts="+".join(case.combo), batch=case.batch, points=n,
                   tokens=int(feeds["prompt_labels"].shape[1]))
    return parity
