"""TensorRT operator/type check on hand-made graphs (the exported graphs are
checked in test_onnx.py and test_exporter.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segvol_rt.errors import SegVolError
from segvol_rt.export import trt_support as T


def _model(nodes, inputs, outputs, inits=(), opset=17, path=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if path is not None:
        onnx.save(model, str(path))
    return model


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_table_is_parsed():
    assert "MatMul" in T.SUPPORTED and "FP32" in T.SUPPORTED["MatMul"]
    assert "INT64" not in T.SUPPORTED["MatMul"]
    assert "Unique" in T.UNSUPPORTED and "Unique" not in T.SUPPORTED
    assert T.SUPPORTED["ConstantOfShape"] >= {"INT64", "FP32"}  # upstream's "INF64" typo is fixed


def test_supported_graph_passes(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Unsqueeze", ["y", "axes"], ["z"]),
    ]
    path = tmp_path / "ok.onnx"
    _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 4])], [_vi("z", TensorProto.FLOAT, [1, 2, 3])], [w, axes], path=path)
    report = T.check_graph(path)
    assert report.ok, report.problems
    assert report.operators == {"MatMul": 1, "Unsqueeze": 1}
    assert report.opset == 17
    T.require_supported(report)
    assert "MatMul x1" in report.summary()


def test_unsupported_operator_fails(tmp_path):
    nodes = [helper.make_node("Unique", ["x"], ["y"])]
    path = tmp_path / "bad.onnx"
    _model(nodes, [_vi("x", TensorProto.FLOAT, [5])], [_vi("y", TensorProto.FLOAT, [None])], path=path)
    report = T.check_graph(path)
    assert not report.ok
    assert any("Unique" in p and "not supported" in p for p in report.problems)
    with pytest.raises(SegVolError, match="Unique"):
        T.require_supported(report)


def test_wrong_types_fail():
    # MatMul on int64 is outside its supported types; a bool graph output and a
    # float64 tensor are rejected too.
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["c"]),
        helper.make_node("Cast", ["c"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Greater", ["d", "d"], ["e"]),
    ]
    model = _model(
        nodes,
        [_vi("a", TensorProto.INT64, [2, 2]), _vi("b", TensorProto.INT64, [2, 2])],
        [_vi("e", TensorProto.BOOL, [2, 2])],
    )
    problems = "\n".join(T.check_model(model).problems)
    assert "MatMul" in problems and "INT64" in problems
    assert "float64 tensor 'd'" in problems
    assert "graph output 'e' is bool" in problems
    assert "Cast" in problems  # Cast to DOUBLE is not among Cast's types


def test_custom_domain_and_dynamic_axes_fail():
    nodes = [
        helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft"),
        helper.make_node("Unsqueeze", ["y", "axes"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [_vi("x", TensorProto.FLOAT, [2]), _vi("axes", TensorProto.INT64, [1])],
        [_vi("z", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    problems = "\n".join(T.check_model(model).problems)
    assert "custom domain 'com.microsoft'" in problems
    assert "must be a constant" in problems


def test_opset_out_of_range():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT, [2])], opset=21)
    assert any("opset 21" in p for p in T.check_model(model).problems)


def test_unreadable_file(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"not onnx at all")
    with pytest.raises(SegVolError, match="not a readable ONNX file"):
        T.check_graph(path)


def test_if_branches_of_unequal_rank_fail():
    # What the exporter makes of squeeze() on a dynamic axis.
    then = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "axes"], ["t"])], "then", [], [_vi("t", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [_vi("e", TensorProto.FLOAT, [1, 2])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    model = _model(nodes, [_vi("c", TensorProto.BOOL, []), _vi("x", TensorProto.FLOAT, [1, 2])], [_vi("y", TensorProto.FLOAT, None)])
    report = T.check_model(model)
    assert any("rank 1 in then_branch but 2 in else_branch" in p for p in report.problems), report.problems
    assert report.operators == {"If": 1, "Squeeze": 1, "Identity": 1}
