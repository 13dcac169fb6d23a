"""Does an ONNX graph use only what TensorRT's ONNX parser supports?

The operator table below is TensorRT 10's support matrix, transcribed as
data from onnx-tensorrt ``docs/operators.md`` at the "ONNX-TensorRT 10.1 GA
release" commit (96e7811, June 2024; the page's header reads "TensorRT 10.0
supports operators in the inclusive range of opset 9 to opset 20").
Types use the page's names: FP32, FP16, BF16, INT32, INT64, UINT8, BOOL, and
the quantized INT8/INT4/FP8.

:func:`check_graph` lists the operators of a graph (with counts) and every
violation: an unsupported or unknown operator, an operator from a custom
domain, a tensor type an operator does not take, float64 anywhere, a bool
graph output, a non-constant input TensorRT needs as a build-time constant
(``axes`` of Slice/Squeeze/Unsqueeze/Reduce*), If branches of different
output rank, an opset outside 9..20. The
export fails on any violation, so a graph that passes here parses in
TensorRT 10 without surprises at build time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from segvol_rt.errors import SegVolError

SOURCE = "onnx-tensorrt docs/operators.md @ 96e781103cfc (ONNX-TensorRT 10.1 GA)"
OPSET_RANGE = (9, 20)

_F = "FP32 FP16 BF16"
_FI = f"{_F} INT32 INT64"
_FIB = f"{_FI} BOOL"

# operator -> supported tensor types (TensorRT 10.x).
_SUPPORTED_TABLE = f"""
Abs {_FI}
Acos {_F}
Acosh {_F}
Add {_FI}
And BOOL
ArgMax {_FI}
ArgMin {_FI}
Asin {_F}
Asinh {_F}
Atan {_F}
Atanh {_F}
AveragePool {_F}
BatchNormalization {_F}
Cast {_FIB} UINT8
CastLike {_FIB} UINT8
Ceil {_F}
Celu {_F}
Clip {_F}
Concat {_FIB}
Constant {_FIB}
ConstantOfShape {_FIB}
Conv {_F}
ConvTranspose {_F}
Cos {_F}
Cosh {_F}
CumSum {_F}
DeformConv FP32 FP16
DepthToSpace {_FI}
DequantizeLinear INT8 FP8 INT4
Div {_FI}
Dropout {_F}
Einsum {_F}
Elu {_F}
Equal {_FI}
Erf {_F}
Exp {_F}
Expand {_FIB}
EyeLike {_FIB}
Flatten {_FIB}
Floor {_F}
Gather {_FIB}
GatherElements {_FIB}
GatherND {_FIB}
Gelu {_FI} INT8
Gemm {_F}
GlobalAveragePool {_F}
GlobalLpPool {_F}
GlobalMaxPool {_F}
Greater {_FI}
GreaterOrEqual {_FI}
GridSample FP32 FP16
GroupNormalization {_F}
GRU {_F}
HardSigmoid {_F}
HardSwish {_F}
Hardmax {_F}
Identity {_FIB}
If {_FIB}
ImageScaler {_F}
InstanceNormalization {_F}
IsInf {_F}
IsNaN {_FI}
LayerNormalization {_F}
LeakyRelu {_F}
Less {_FI}
LessOrEqual {_FI}
Log {_F}
LogSoftmax {_F}
Loop {_FIB}
LRN {_F}
LSTM {_F}
LpNormalization {_F}
LpPool {_F}
MatMul {_F}
Max {_FI}
MaxPool {_F}
Mean {_FI} FP8
MeanVarianceNormalization {_F}
Min {_FI}
Mish FP32 FP16
Mod {_FI}
Mul {_FI}
Neg {_FI}
NonMaxSuppression FP32 FP16
NonZero FP32 FP16
Not BOOL
OneHot {_FIB}
Or BOOL
Pad {_FI}
ParametricSoftplus {_F}
Pow {_F}
PRelu {_F}
QuantizeLinear {_F}
RandomNormal {_F}
RandomNormalLike {_F}
RandomUniform {_F}
RandomUniformLike {_F}
Range {_FI}
Reciprocal {_F}
ReduceL1 {_FI}
ReduceL2 {_FI}
ReduceLogSum {_FI}
ReduceLogSumExp {_FI}
ReduceMax {_FI}
ReduceMean {_FI}
ReduceMin {_FI}
ReduceProd {_FI}
ReduceSum {_FI}
ReduceSumSquare {_FI}
Relu {_FI}
Reshape {_FIB}
Resize {_F}
ReverseSequence {_FIB}
RNN {_F}
RoiAlign FP32 FP16
Round {_F}
ScaledTanh {_F}
Scan {_F}
Scatter {_FI}
ScatterElements {_FI}
ScatterND {_FI}
Selu {_F}
Shape {_FIB}
Shrink {_FI}
Sigmoid {_F}
Sign {_FI}
Sin {_F}
Sinh {_F}
Size {_FIB}
Slice {_FIB}
Softmax {_F}
Softplus {_F}
Softsign {_F}
SpaceToDepth {_FI}
Split {_FIB}
Sqrt {_F}
Squeeze {_FIB}
Sub {_FI}
Sum {_FI}
Tan {_F}
Tanh {_F}
ThresholdedRelu {_F}
Tile {_FIB}
TopK {_FI}
Transpose {_FIB}
Trilu {_FIB}
Unsqueeze {_FIB}
Upsample {_F}
Where {_FIB}
Xor BOOL
"""

# Listed with "N" in the same matrix.
UNSUPPORTED = frozenset(
    [
        "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
        "BlackmanWindow", "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT",
        "Det", "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger",
        "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
        "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "STFT",
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
        "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
        "StringSplit", "TfIdfVectorizer", "Unique"
    ]
)

SUPPORTED: dict[str, frozenset[str]] = {
    line.split()[0]: frozenset(line.split()[1:]) for line in _SUPPORTED_TABLE.strip().splitlines()
}

_REDUCE = [op for op in SUPPORTED if op.startswith("Reduce")]

# Inputs that carry shapes, indices, axes or conditions rather than the
# operator's data; their type is fixed by the ONNX op definition, not by the
# support matrix's "Supported Types" column.
_AUX_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "Scatter": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "ScatterND": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "CumSum": frozenset({1}),
    "TopK": frozenset({1}),
    "Pad": frozenset({1, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Split": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Where": frozenset({0}),
    "OneHot": frozenset({0, 1}),
    "Trilu": frozenset({1}),
    "Dropout": frozenset({1, 2}),
    "ReverseSequence": frozenset({1}),
    **{op: frozenset({1}) for op in _REDUCE},
}
# Outputs whose type the op definition fixes (comparisons -> bool, shapes and
# indices -> int64).
_AUX_OUTPUTS: dict[str, frozenset[int]] = {
    **{op: frozenset({0}) for op in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "IsInf", "IsNaN")},
    **{op: frozenset({0}) for op in ("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression")},
    "TopK": frozenset({1}),
    "Dropout": frozenset({1}),
}
# Inputs the parser needs as build-time constants ("must be an initializer").
_CONST_INPUTS: dict[str, frozenset[int]] = {
    "Slice": frozenset({3}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "CumSum": frozenset({1}),
    "TopK": frozenset({1}),
    "Pad": frozenset({3}),
    **{op: frozenset({1}) for op in _REDUCE},
}

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "STRING",
    onnx.TensorProto.INT4: "INT4",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8",
}
# Types TensorRT 10 accepts for network inputs and outputs.
_IO_TYPES = frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"})


@dataclass
class GraphReport:
    """Operators of one graph and what TensorRT 10 would reject.

    ``operators``: op type -> count (subgraphs included), sorted by name;
    ``problems``: one line each, empty when the graph passes.
    """

    path: str
    opset: int
    operators: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"opset": self.opset, "operators": dict(self.operators), "problems": list(self.problems),
                "source": SOURCE}

    def summary(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in self.operators.items())
        status = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{Path(self.path).name}: opset {self.opset}, {sum(self.operators.values())} nodes [{ops}] - {status}"


def check_graph(model_path: str | Path) -> GraphReport:
    """Check one ONNX file against TensorRT 10's ONNX parser support."""
    path = Path(model_path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise SegVolError(f"{path}: not a readable ONNX file ({exc})") from exc
    return check_model(model, str(path))


def check_model(model: onnx.ModelProto, name: str = "<model>") -> GraphReport:
    """:func:`check_graph` on an in-memory model."""
    inferred = onnx.shape_inference.infer_shapes(model)
    opset = _default_opset(inferred)
    graph = inferred.graph
    types = _tensor_types(graph)
    constants = _constant_names(graph)
    problems: list[str] = []
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} outside TensorRT 10's range {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    problems += _io_problems(graph, types)
    problems += [f"float64 tensor '{t}'" for t, ty in sorted(types.items()) if ty == "FP64"]
    counts: Counter[str] = Counter()
    for node, sub_types, sub_constants in _walk(graph, types, constants):
        counts[node.op_type] += 1
        problems += _node_problems(node, sub_types, sub_constants)
    return GraphReport(name, opset, dict(sorted(counts.items())), _dedupe(problems))


def require_supported(report: GraphReport) -> None:
    """Raise :class:`SegVolError` naming every problem of ``report``."""
    if not report.ok:
        listed = "; ".join(report.problems[:12])
        more = f" (+{len(report.problems) - 12} more)" if len(report.problems) > 12 else ""
        raise SegVolError(f"{Path(report.path).name} would not parse in TensorRT 10: {listed}{more}")


# -- internals ---------------------------------------------------------------
def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _tensor_types(graph: onnx.GraphProto) -> dict[str, str]:
    types: dict[str, str] = {}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        elem = vi.type.tensor_type.elem_type
        if elem:
            types[vi.name] = _TYPE_NAMES.get(elem, f"TYPE{elem}")
    for init in graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, f"TYPE{init.data_type}")
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = _TYPE_NAMES.get(attr.t.data_type, f"TYPE{attr.t.data_type}")
    return types


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {init.name for init in graph.initializer}
    names |= {node.output[0] for node in graph.node if node.op_type == "Constant"}
    return names


def _walk(graph: onnx.GraphProto, types: dict[str, str], constants: set[str]) -> Iterator[tuple[Any, dict, set]]:
    """Every node, subgraphs (If/Loop/Scan bodies) included, with the types
    and constants visible to it."""
    for node in graph.node:
        yield node, types, constants
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _walk(sub, {**types, **_tensor_types(sub)}, constants | _constant_names(sub))


def _io_problems(graph: onnx.GraphProto, types: dict[str, str]) -> list[str]:
    problems = []
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for vi in values:
            ty = types.get(vi.name, "?")
            if ty not in _IO_TYPES:
                problems.append(f"graph {kind} '{vi.name}' has type {ty}, not a TensorRT network type")
            elif kind == "output" and ty == "BOOL":
                problems.append(f"graph output '{vi.name}' is bool; export it as a number type")
    return problems


def _node_problems(node: Any, types: dict[str, str], constants: set[str]) -> list[str]:
    op = node.op_type
    label = f"{op} node '{node.name or node.output[0]}'"
    if node.domain not in ("", "ai.onnx"):
        return [f"{label}: custom domain '{node.domain}' needs a TensorRT plugin"]
    if op in UNSUPPORTED:
        return [f"{label}: operator {op} is not supported by TensorRT's ONNX parser"]
    if op not in SUPPORTED:
        return [f"{label}: operator {op} is not in TensorRT 10's support matrix"]
    problems = []
    allowed = SUPPORTED[op]
    for role, names, aux in (("input", node.input, _AUX_INPUTS), ("output", node.output, _AUX_OUTPUTS)):
        skip = aux.get(op, frozenset())
        for i, tensor in enumerate(names):
            ty = types.get(tensor)
            if not tensor or i in skip or ty is None:
                continue
            if ty not in allowed:
                problems.append(f"{label}: {role} '{tensor}' is {ty}; {op} supports {sorted(allowed)}")
    for i in sorted(_CONST_INPUTS.get(op, frozenset())):
        if i < len(node.input) and node.input[i] and node.input[i] not in constants:
            problems.append(f"{label}: input {i} ('{node.input[i]}') must be a constant (initializer)")
    if op == "LayerNormalization" and any(node.output[1:]):
        problems.append(f"{label}: only the first output of LayerNormalization is supported")
    if op == "If":
        problems += _if_rank_problems(node, label)
    return problems


def _if_rank_problems(node: Any, label: str) -> list[str]:
    """TensorRT needs both branches of an If to give outputs of the same rank
    (the exporter's Squeeze of a dynamic axis is the usual offender)."""
    branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    then, other = branches.get("then_branch"), branches.get("else_branch")
    if then is None or other is None:
        return []
    problems = []
    for i, (a, b) in enumerate(zip(then.output, other.output)):
        ra, rb = (_rank(v) for v in (a, b))
        if ra is not None and rb is not None and ra != rb:
            problems.append(f"{label}: output {i} has rank {ra} in then_branch but {rb} in else_branch")
    return problems


def _rank(value_info: Any) -> int | None:
    tensor = value_info.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
