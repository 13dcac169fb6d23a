"""fp16 variants of the exported graphs (``segvol-rt export --precision fp16``).

The fp32 graphs are always written and stay the reference. Each fp16 graph
is made from its fp32 graph by onnxconverter-common's float16 conversion
(``convert_float_to_float16``), never by rewriting nodes by hand:

* weights and activations become float16;
* ``keep_io_types``: graph inputs and outputs keep their float32 types (Cast
  nodes at the edges), so the runtime feeds both variants the same way and
  the IO specs of :mod:`segvol_rt.io.spec` hold for both;
* ops kept in fp32 (:data:`FP32_OPS`, through explicit Cast nodes the
  converter inserts): the converter's own defaults plus LayerNormalization,
  Softmax, every Reduce*, Sqrt, Pow, Sin and Cos. Normalisers and reductions
  sum thousands to millions of values (fp16 holds 11 significant bits and
  overflows at 65504); Sin/Cos are the prompt encoder's random-Fourier
  positional encoding, whose arguments reach tens of radians;
* nodes kept in fp32 (:func:`fp32_nodes`): every node of the decoder's
  two-stage LayerNorm (:class:`segvol_rt.export.onnx.StagedLayerNorm`: mean
  and variance of 3.1 M values per sample at full size, centring and
  scaling included, so no intermediate is rounded to fp16), and every Cast
  *to* float32. The converter retypes such a Cast's output to float16 but
  leaves its ``to`` attribute, which ONNX Runtime refuses to load ("Type
  Error ... of output arg ... of node /Cast_1"); kept in fp32, the converter
  casts its output to fp16 after it instead.

The measurements behind the choice are in the README (Backends, fp16) and
:func:`verify_fp16` records each export's own fp16-against-fp32 parity in
the manifest.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.export import onnx as O
from segvol_rt.io import spec as S
from segvol_rt.io.config import SegVolConfig

FP16_SUFFIX = ".fp16.onnx"
# fp16 against fp32 on ONNX Runtime CPU, relative L2 of each output. Measured:
# <= 2.2e-3 for the demo model, <= 7.6e-4 at full size with random weights.
FP16_TOLERANCE = 2e-2

_REDUCE_OPS = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
)
# Ours, on top of the converter's DEFAULT_OP_BLOCK_LIST (see the module docstring).
EXTRA_FP32_OPS = ("LayerNormalization", "Softmax", *_REDUCE_OPS, "Sqrt", "Pow", "Sin", "Cos")


def fp32_ops() -> tuple[str, ...]:
    """Every op type the fp16 graphs run in fp32: the converter's defaults and :data:`EXTRA_FP32_OPS`."""
    float16 = _float16()
    return tuple(sorted({*float16.DEFAULT_OP_BLOCK_LIST, *EXTRA_FP32_OPS}))


def fp16_file(file: str) -> str:
    """``image_encoder.onnx`` -> ``image_encoder.fp16.onnx``."""
    if not file.endswith(".onnx"):
        raise SegVolError(f"graph file {file!r} does not end in .onnx")
    return file[: -len(".onnx")] + FP16_SUFFIX


def _float16() -> Any:
    require("onnxconverter_common")
    from onnxconverter_common import float16

    return float16


def converter_version() -> str:
    import onnxconverter_common

    return f"onnxconverter-common {onnxconverter_common.__version__}"


# -- which nodes stay fp32 ---------------------------------------------------------
def scope_prefixes(qualified_name: str) -> list[str]:
    """ONNX node-name prefixes the TorchScript exporter may give the nodes of
    the module at ``qualified_name`` (``mask_decoder.output_upscaling.1``):
    a called container (``nn.Sequential``) is a scope of its own, an uncalled
    one (``nn.ModuleList``) is not, so both spellings are candidates."""
    parts = qualified_name.split(".")
    with_container: list[str] = []
    without: list[str] = []
    for i, part in enumerate(parts):
        if part.isdigit() and i > 0:
            with_container.append(f"{parts[i - 1]}.{part}")
            without[-1] = f"{parts[i - 1]}.{part}"
        else:
            with_container.append(part)
            without.append(part)
    return sorted({"/" + "/".join(p) + "/" for p in (with_container, without)})


def fp32_nodes(model: onnx.ModelProto, scopes: Sequence[str] = ()) -> list[str]:
    """Names of the nodes kept in fp32 besides :func:`fp32_ops`: those of the
    module ``scopes`` (qualified names, e.g. the two-stage LayerNorms) and
    every Cast to float32. A scope that matches no node is an error: the
    graph is not laid out as this code expects."""
    names = []
    for qualified in scopes:
        prefixes = scope_prefixes(qualified)
        found = [n.name for n in model.graph.node if n.name.startswith(tuple(prefixes))]
        if not found:
            raise SegVolError(f"no node of module {qualified!r} in the graph (looked for {prefixes}); cannot keep it in fp32")
        names += found
    for node in model.graph.node:
        if node.op_type == "Cast" and _cast_to(node) == onnx.TensorProto.FLOAT:
            names.append(node.name)
    return sorted(set(names))


def _cast_to(node: Any) -> int:
    return next(int(a.i) for a in node.attribute if a.name == "to")


# -- conversion ---------------------------------------------------------------------
@dataclass
class Fp16Graph:
    """One converted graph: where it is, and what stayed fp32."""

    path: Path
    fp32_nodes: int
    blocked_ops: tuple[str, ...]

    def conversion(self) -> dict[str, Any]:
        """The manifest's record of how the graph was made."""
        return {
            "tool": converter_version(),
            "keep_io_types": True,
            "fp32_ops": list(self.blocked_ops),
            "fp32_nodes": self.fp32_nodes,
        }


def convert_graph(src: str | Path, dst: str | Path, scopes: Sequence[str] = ()) -> Fp16Graph:
    """Write the fp16 variant of the ONNX graph ``src`` to ``dst`` (see the
    module docstring), checked by ``onnx.checker``."""
    float16 = _float16()
    model = onnx.load(str(src))
    nodes = fp32_nodes(model, scopes)
    ops = fp32_ops()
    with warnings.catch_warnings():
        # "the float32 number ... will be truncated to ...": the converter clamps
        # constants into fp16's range (e.g. -inf attention fills to -1e4), as intended.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(ops), node_block_list=nodes)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(dst))
    return Fp16Graph(Path(dst), len(nodes), ops)


# -- parity -------------------------------------------------------------------------
def fp16_parity(
    fp32_session: Any,
    fp16_session: Any,
    spec: S.GraphSpec,
    cases: Iterable[tuple[Mapping[str, Any], Mapping[str, np.ndarray]]],
) -> O.Parity:
    """The fp16 graph against the fp32 graph on ONNX Runtime CPU: relative L2
    error of every output for each ``(case description, feeds)``."""
    parity = O.Parity(spec.name, tolerance=FP16_TOLERANCE, reference="the fp32 graph on onnxruntime CPUExecutionProvider")
    for case, feeds in cases:
        want = O.run_onnx(fp32_session, spec, feeds)
        got = O.run_onnx(fp16_session, spec, feeds)
        parity.add(max(O.rel_l2(got[n], want[n]) for n in spec.output_names), **case)
    return parity


def parity_cases(
    spec: S.GraphSpec,
    config: SegVolConfig,
    batches: Sequence[int],
    point_counts: Sequence[int],
    seed: int = 0,
    extra: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """(case, feeds) pairs for :func:`fp16_parity`: random inputs per batch
    (the decoder: every prompt combination), plus the named ``extra`` feeds."""
    rng = np.random.default_rng(seed)
    if spec.name == S.PROMPT_DECODER:
        out = []
        for case in O.decoder_cases(config, batches, point_counts, seed=seed):
            emb = rng.standard_normal((case.batch, config.embed_dim, *config.grid_size), dtype=np.float32)
            n = 0 if case.points is None else case.points[0].shape[1]
            out.append(({"prompts": "+".join(case.combo), "batch": case.batch, "points": n},
                        O.decoder_feeds(emb, case, config.embed_dim)))
        return out
    cases: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = [
        ({"batch": b}, O.random_inputs(spec, config, {"B": b}, rng)) for b in batches
    ]
    cases += [({"inputs": label, "batch": len(next(iter(f.values())))}, dict(f)) for label, f in (extra or {}).items()]
    return cases
