"""ONNX rewrite rules of ``passes.onnx``, each on a small hand-built graph: fires where it should, keeps
the numbers, and leaves alone what it must not touch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from passes.onnx import apply_rules


def _integer_gemm_graph(zero_point_shape: list | None = None, row_scale: bool = False) -> onnx.ModelProto:
    """What one bucket's segment lowers to: one per-column scale, then the bias (``row_scale``: a further
    per-row scale in between, as rows in any order take)."""
    rng = np.random.default_rng(2)
    weight = h.make_tensor("w", T.INT8, [6, 4], rng.integers(-127, 128, (6, 4)).astype(np.int8).tobytes(), raw=True)
    scale = h.make_tensor("t", T.FLOAT, [4], rng.random(4, dtype=np.float32) * 0.01)
    bias = h.make_tensor("b", T.FLOAT, [4], rng.standard_normal(4).astype(np.float32))
    inputs = ["a", "w"] + (["zp"] if zero_point_shape is not None else [])
    nodes = [h.make_node("MatMulInteger", inputs, ["acc"]), h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT),
             h.make_node("Mul", ["accf", "t"], ["y0"])]
    nodes += [h.make_node("Mul", ["y0", "s"], ["y1"]), h.make_node("Add", ["y1", "b"], ["y"])] if row_scale else [
        h.make_node("Add", ["y0", "b"], ["y"])]
    zero_point = h.make_tensor("zp", T.UINT8, zero_point_shape or [], [77] * int(np.prod(zero_point_shape or [])))
    inits = [weight, scale, bias] + ([zero_point] if zero_point_shape is not None else [])
    inputs = [h.make_tensor_value_info("a", T.UINT8, ["m", 6])]
    inputs += [h.make_tensor_value_info("s", T.FLOAT, ["m", 1])] if row_scale else []
    graph = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("y", T.FLOAT, ["m", 4])], initializer=inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("zero_point_shape", [None, [], [1]])
def test_fuse_matmul_integer_to_float_takes_scale_and_bias(zero_point_shape):
    model = _integer_gemm_graph(zero_point_shape)
    fused, changes = apply_rules(model, "ort")
    assert [(node.domain, node.op_type) for node in fused.graph.node if node.op_type != "Constant"] == [
        ("com.microsoft", "MatMulIntegerToFloat")]
    assert changes["Add"] == -1 and changes["MatMulIntegerToFloat"] == 1
    feeds = {"a": np.random.default_rng(3).integers(0, 256, (50, 6)).astype(np.uint8)}
    np.testing.assert_array_equal(_run(fused, feeds), _run(model, feeds))  # bit for bit


@pytest.mark.parametrize(("zero_point_shape", "row_scale"), [([5], False), (None, True)])
def test_fuse_leaves_per_row_zero_points_and_scales_alone(zero_point_shape, row_scale):
    fused, changes = apply_rules(_integer_gemm_graph(zero_point_shape, row_scale), "ort")
    assert changes == {} and "MatMulIntegerToFloat" not in {node.op_type for node in fused.graph.node}


@pytest.mark.parametrize("zero_point_shape", [None, []])
def test_integer_gemms_take_uint8_weights_and_are_exact(zero_point_shape):
    """The ``onnx`` rules give every integer GEMM uint8 weights around 128: the exact integer products on every
    CPU (ONNX Runtime's uint8 x int8 kernel saturates pairs of products in int16 where the CPU lacks VNNI), and
    the ``ort`` rules still fuse them into one MatMulIntegerToFloat with the same floats."""
    model = _integer_gemm_graph(zero_point_shape)
    exact, changes = apply_rules(model, "onnx")
    gemm = next(node for node in exact.graph.node if node.op_type == "MatMulInteger")
    assert len(gemm.input) == 4 and changes == {"Constant": 2 + (zero_point_shape is None)}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    rng = np.random.default_rng(4)
    a = np.concatenate([np.full((8, 6), 255, np.uint8), rng.integers(0, 256, (200, 6)).astype(np.uint8)])
    zero_point = 77 if zero_point_shape is not None else 0
    acc = (a.astype(np.int64) - zero_point) @ weights["w"].astype(np.int64)
    want = (acc.astype(np.float32) * weights["t"] + weights["b"]).astype(np.float32)
    got = _run(exact, {"a": a})
    np.testing.assert_array_equal(got, want)
    fused, changes = apply_rules(exact, "ort")
    assert changes["MatMulIntegerToFloat"] == 1 and changes["MatMulInteger"] == -1
    np.testing.assert_array_equal(_run(fused, {"a": a}), got)


def _scatter_graph(index_shape: list) -> onnx.ModelProto:
    nodes = [h.make_node("Shape", ["u"], ["shape"]),
             h.make_node("Expand", ["i", "shape"], ["ix"]),
             h.make_node("ScatterElements", ["d", "ix", "u"], ["y"], axis=0, reduction="add"),
             h.make_node("ScatterElements", ["d", "ix", "u"], ["y2"], axis=0, reduction="add")]  # shares the index
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("d", T.FLOAT, ["n", 3]),
                                      h.make_tensor_value_info("i", T.INT64, index_shape),
                                      h.make_tensor_value_info("u", T.FLOAT, ["e", 3])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["n", 3]),
                          h.make_tensor_value_info("y2", T.FLOAT, ["n", 3])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_scatter_add_rows_becomes_scatter_nd():
    model = _scatter_graph(["e", 1])
    rewritten, changes = apply_rules(model, "onnx")
    assert changes["ScatterND"] == 2 and changes["ScatterElements"] == -2
    rng = np.random.default_rng(0)
    feeds = {"d": rng.random((4, 3), dtype=np.float32), "i": np.array([[0], [3], [0], [0], [2]]),
             "u": rng.random((5, 3), dtype=np.float32)}  # repeated targets must all be summed
    for ours, theirs in zip(ort.InferenceSession(rewritten.SerializeToString()).run(None, feeds),
                            ort.InferenceSession(model.SerializeToString()).run(None, feeds), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_scatter_with_a_per_element_index_is_left_alone():
    _, changes = apply_rules(_scatter_graph(["e", 3]), "onnx")
    assert changes == {}


def _gathered_rows_graph(concat_is_output: bool, rest: bool = True, gather_is_output: bool = False) -> onnx.ModelProto:
    """Two row slices of ``[a[i], a[j], r]`` (what one edge Linear's segments take; ``a`` wider than the rows
    ``narrow_gather_scatter`` takes); without ``r`` when not ``rest``; ``a[j]`` also an output where
    ``gather_is_output``."""
    nodes = [h.make_node("Gather", ["a", "i"], ["ai"], axis=0), h.make_node("Gather", ["a", "j"], ["aj"], axis=0),
             h.make_node("Concat", ["ai", "aj", "r"] if rest else ["ai", "aj"], ["rows"], axis=-1),
             h.make_node("Slice", ["rows", "s0", "e0", "axes"], ["y0"]),
             h.make_node("Slice", ["rows", "s1", "e1", "axes"], ["y1"])]
    inits = [h.make_tensor(name, T.INT64, [1], [v]) for name, v in
             (("s0", 0), ("e0", 3), ("s1", 3), ("e1", 7), ("axes", 0))]
    columns = 13 if rest else 12
    outputs = [h.make_tensor_value_info(name, T.FLOAT, [None, columns]) for name in ("y0", "y1")]
    outputs += [h.make_tensor_value_info("rows", T.FLOAT, ["e", columns])] if concat_is_output else []
    outputs += [h.make_tensor_value_info("aj", T.FLOAT, ["e", 6])] if gather_is_output else []
    inputs = [h.make_tensor_value_info("a", T.FLOAT, ["n", 6]), h.make_tensor_value_info("i", T.INT64, ["e"]),
              h.make_tensor_value_info("j", T.INT64, ["e"])]
    inputs += [h.make_tensor_value_info("r", T.FLOAT, ["e", 1])] if rest else []
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


@pytest.mark.parametrize(("concat_is_output", "rest", "gather_is_output"),
                         [(False, True, False), (True, True, False), (False, False, False), (False, True, True)])
def test_slice_gathered_rows_slices_the_indices(concat_is_output, rest, gather_is_output):
    model = _gathered_rows_graph(concat_is_output, rest, gather_is_output)
    rewritten, changes = apply_rules(model, "onnx")
    ops = Counter(n.op_type for n in rewritten.graph.node)
    if concat_is_output:  # the whole rows are built anyway: left alone
        assert "Gather" not in changes
    elif gather_is_output:  # a[j] is needed whole: its rows are sliced, a[i]'s gathered by sliced indices
        assert changes["Gather"] == 1 and ops["Concat"] == 2
    else:  # each slice gathers its own rows: 4 gathers of 3 and 4 rows, no E-row concatenation
        assert changes["Gather"] == 2 and ops["Concat"] == 2
    rng = np.random.default_rng(4)
    feeds = {"a": rng.standard_normal((6, 6)).astype(np.float32), "i": rng.integers(0, 6, 7),
             "j": rng.integers(0, 6, 7), "r": rng.standard_normal((7, 1)).astype(np.float32)}
    feeds = feeds if rest else {k: v for k, v in feeds.items() if k != "r"}
    for got, want in zip(_run_all(rewritten, feeds), _run_all(model, feeds)):
        np.testing.assert_array_equal(got, want)


def _run_all(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _sqrt_graph(dtype: int) -> onnx.ModelProto:
    nodes = [h.make_node("Cast", ["x"], ["xd"], to=T.DOUBLE), h.make_node("Sqrt", ["xd"], ["rd"]),
             h.make_node("Cast", ["rd"], ["y"], to=T.FLOAT)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dtype, ["n"])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["n"])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_narrow_exact_sqrt_is_the_float64_root_rounded():
    import torch

    rewritten, changes = apply_rules(_sqrt_graph(T.FLOAT), "onnx")
    assert changes == {"Cast": -2}
    x = np.random.default_rng(3).random(200_000, dtype=np.float32) * 10
    expected = torch.from_numpy(x).double().sqrt().float().numpy()  # what the models compute in PyTorch
    np.testing.assert_array_equal(_run(rewritten, {"x": x}), expected)
    np.testing.assert_array_equal(expected, np.sqrt(x))  # the IEEE float32 root


def test_narrow_exact_sqrt_leaves_float64_inputs_alone():
    assert apply_rules(_sqrt_graph(T.DOUBLE), "onnx")[1] == {}


def _scalar_index_graph(index_dims: list | None) -> onnx.ModelProto:
    """Gathers and a scatter of every form the rules take (single values, 3-wide rows), and a gather of 5-wide
    rows they must leave alone; ``index_dims`` None: the index's rank unknown (only the GatherND may fire)."""
    nodes = [h.make_node("Gather", ["v", "i"], ["a"]),  # axis by default
             h.make_node("Gather", ["c", "i"], ["b"], axis=0),
             h.make_node("GatherND", ["v", "j"], ["g"]),
             h.make_node("ScatterND", ["v", "j", "u"], ["s"], reduction="add"),
             h.make_node("Gather", ["m", "i"], ["r"], axis=0),
             h.make_node("Gather", ["w", "i"], ["q"], axis=0)]
    vi = h.make_tensor_value_info
    inputs = [vi("v", T.INT64, ["n"]), vi("c", T.FLOAT, ["n", 1]), vi("m", T.FLOAT, ["n", 3]),
              vi("w", T.FLOAT, ["n", 5]), vi("i", T.INT64, index_dims), vi("j", T.INT64, ["e", 1]),
              vi("u", T.INT64, ["e"])]
    graph = h.make_graph(nodes, "g", inputs,
                         [vi("a", T.INT64, ["e"]), vi("b", T.FLOAT, ["e", 1]), vi("g", T.INT64, ["e"]),
                          vi("s", T.INT64, ["n"]), vi("r", T.FLOAT, ["e", 3]), vi("q", T.FLOAT, ["e", 5])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_narrow_gathers_and_scalar_scatters_become_element_kernels():
    model = _scalar_index_graph(["e"])
    rewritten, changes = apply_rules(model, "onnx")
    assert changes["GatherElements"] == 4 and changes["ScatterElements"] == 1 and changes["Transpose"] == 2
    assert changes["Gather"] == -3 and changes["GatherND"] == -1 and changes["ScatterND"] == -1  # 5 wide: stays
    onnx.checker.check_model(rewritten, full_check=True)
    rng = np.random.default_rng(4)
    n, e = 9, 40
    feeds = {"v": rng.integers(0, 100, n), "c": rng.random((n, 1), dtype=np.float32),
             "m": rng.random((n, 3), dtype=np.float32),
             "w": rng.random((n, 5), dtype=np.float32), "i": rng.integers(-n, n, e),  # negative indices too
             "j": rng.integers(0, n, (e, 1)), "u": rng.integers(0, 5, e)}  # repeated targets: the sums
    got, want = _run_all(rewritten, feeds), _run_all(model, feeds)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_narrow_gathers_need_the_index_rank():
    changes = apply_rules(_scalar_index_graph(None), "onnx")[1]
    assert "Gather" not in changes and changes["GatherElements"] == 1  # the GatherND only: its index is known
