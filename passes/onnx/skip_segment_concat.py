"""ONNX graph pass: a bucket segment sliced out of a concatenation of the same segments -> the segment.

Every quantized Linear on rows sorted by bucket lowers to one segment per bucket: ``Slice`` the rows,
quantize, GEMM, then ``Concat`` the segments' outputs (``exporter/onnx_lowering.py``). Where two such
Linears follow each other with row-wise ops between them (an MLP: Linear, SiLU, Linear), the second
slices the first's concatenation back into the same segments. ONNX Runtime copies on every ``Slice``
and ``Concat``; this pass runs the row-wise ops on each segment instead and feeds each segment straight
to the next Linear, so that an MLP pays one split and one concatenation, not one per Linear. Where
the rows end in a scatter-add (message passing sums edge rows into nodes), each segment is added on
its own, in segment order, and the last concatenation goes too.

Pattern::

    Concat(P_0, ..., P_{K-1}, axis=0) -> row-wise ops -> Slice(., start_k, end_k, axes=[0])

Check: ``P_k`` has the rows of segment ``k`` of a counts vector ``c`` (it is computed by row-wise ops,
integer GEMMs, column concatenations and row gathers from a ``Slice`` of some tensor, or of an index,
whose bounds are the cumulative sums of ``c``, as ``_split_rows`` writes them), the ``Slice`` takes
segment ``k`` of the same ``c``, and every value between the ``Concat`` and the slices is used only by
the row-wise ops and the slices (else the full tensor is needed anyway and the rewrite would add work).
Row-wise: element-wise ops whose other operand is a constant of rank <= 1 (it broadcasts along the
columns) or on the same path, ``Cast`` and ``Reshape`` to ``[-1, columns]``.
Rewrite: the row-wise ops cloned per segment on ``P_k``; a ``ScatterND(data, index, ., reduction="add")``
at the end of the path becomes one per segment with the index sliced alike (the same additions in the
same order); the ``Concat`` and the full-size ops become dead and are removed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

# How many ops ``_rows_of`` walks back to a segment slice: an MLP's second Linear is about 25 ops from the
# slice of the index its first Linear's rows were gathered by.
MAX_TRACE = 40
_UNARY = frozenset({"Sigmoid", "Tanh", "Relu", "Erf", "Exp", "Neg", "Identity", "Cast", "Softplus"})
_BINARY = frozenset({"Mul", "Add", "Sub", "Div"})


def _ints(value: ir.Value | None) -> list[int] | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else [int(v) for v in tensor.numpy().reshape(-1)]


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain == "" else None


def _bound(value: ir.Value) -> tuple[str, ir.Value, int] | None:
    """``("end", c, k)`` for ``Slice(CumSum(c), [k], [k+1])``, ``("start", c, k)`` for
    ``Slice(Sub(CumSum(c), c), [k], [k+1])``; else None."""
    pick = _producer(value, "Slice")
    if pick is None or len(pick.inputs) < 3:
        return None
    start, end = _ints(pick.inputs[1]), _ints(pick.inputs[2])
    if start is None or end is None or len(start) != 1 or end != [start[0] + 1]:
        return None
    source = pick.inputs[0]
    cumsum = _producer(source, "CumSum")
    if cumsum is not None:
        return "end", cumsum.inputs[0], start[0]
    sub = _producer(source, "Sub")
    cumsum = _producer(sub.inputs[0], "CumSum") if sub is not None else None
    if cumsum is not None and cumsum.inputs[0] is sub.inputs[1]:
        return "start", sub.inputs[1], start[0]
    return None


def segment_slice(node: ir.Node) -> tuple[ir.Value, int] | None:
    """``(c, k)`` where ``node`` slices rows ``start_k .. end_k`` of the cumulative sums of ``c``."""
    if node.op_type != "Slice" or node.domain != "" or len(node.inputs) < 4 or _ints(node.inputs[3]) != [0]:
        return None
    start, end = _bound(node.inputs[1]), _bound(node.inputs[2])
    if start is None or end is None or start[0] != "start" or end[0] != "end":
        return None
    if start[1] is not end[1] or start[2] != end[2]:
        return None
    return start[1], start[2]


def _constant_columns(value: ir.Value) -> bool:
    """A value that broadcasts along the columns: rank <= 1 with a static shape."""
    return value.shape is not None and value.shape.is_static() and len(value.shape) <= 1


def _row_wise(node: ir.Node) -> bool:
    """Whether ``node`` maps each row of its row-shaped input(s) to the same row of its output (the caller
    checks that those inputs are on the path)."""
    if node.domain != "" or len(node.outputs) != 1:
        return False
    if node.op_type in _UNARY:
        return True
    if node.op_type in _BINARY:
        return all(v is not None for v in node.inputs)
    if node.op_type == "Reshape":
        shape, source = _ints(node.inputs[1]), node.inputs[0]
        return (shape is not None and len(shape) == 2 and shape[0] == -1 and source.shape is not None
                and len(source.shape) == 2 and source.shape[1] == shape[1])
    return False


def _rows_of(value: ir.Value, depth: int = 0) -> tuple[ir.Value, int] | None:
    """``(c, k)`` where ``value``'s rows are segment ``k`` of ``c``: row-wise (or row-preserving GEMM)
    steps back to a segment ``Slice``."""
    node = value.producer()
    if node is None or depth > MAX_TRACE:
        return None
    found = segment_slice(node)
    if found is not None:
        return found
    if node.op_type in ("MatMulInteger", "QuantizeLinear", "Clip", "Reshape") or node.op_type in _UNARY:
        return _rows_of(node.inputs[0], depth + 1)
    if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:  # rows picked by a 1-D index
        return _rows_of(node.inputs[1], depth + 1) if _rank(node.inputs[1]) == 1 else None
    columns = node.op_type == "Concat" and node.attributes.get_int("axis") in (1, -1)
    if node.op_type in _BINARY or columns:  # every row-shaped operand from the same segment
        rows = [_rows_of(v, depth + 1) for v in node.inputs if v is not None and not _constant_columns(v)]
        return rows[0] if rows and all(r is not None and r[0] is rows[0][0] and r[1] == rows[0][1]
                                       for r in rows) else None
    return None


def _rank(value: ir.Value) -> int | None:
    """The rank of ``value``, or of what it slices where a rewrite left its shape unknown."""
    if value.shape is not None:
        return len(value.shape)
    node = value.producer()
    return _rank(node.inputs[0]) if node is not None and node.op_type == "Slice" else None


def _segmented_concat(node: ir.Node) -> ir.Value | None:
    """``c`` where ``node`` concatenates segments 0..K-1 of ``c`` in order, along the rows."""
    if node.op_type != "Concat" or node.domain != "" or node.attributes.get_int("axis") != 0 or len(node.inputs) < 2:
        return None
    rows = [_rows_of(v) for v in node.inputs]
    if any(r is None for r in rows) or any(r[0] is not rows[0][0] for r in rows):
        return None
    return rows[0][0] if [r[1] for r in rows] == list(range(len(rows))) else None


def _rewrite_one(graph: ir.Graph, concat: ir.Node, counts: ir.Value) -> bool:
    """Route every segment slice below ``concat`` to the segment; False where the path is not closed."""
    path, slices, scatters, frontier = {concat.outputs[0]}, [], [], [concat.outputs[0]]
    ops: list[ir.Node] = []
    while frontier:
        value = frontier.pop()
        if value.is_graph_output():
            return False
        for user, _ in value.uses():
            found = segment_slice(user)
            if user.inputs[0] is value and found is not None and found[0] is counts:
                slices.append((user, found[1]))
            elif _scatter_add_of(user, value):
                scatters.append(user)
            elif user not in ops and _row_wise(user):
                ops.append(user)
                path.add(user.outputs[0])
                frontier.append(user.outputs[0])
            elif user not in ops:
                return False
    if not (slices or scatters) or any(v not in path for op in ops for v in op.inputs
                                       if v is not None and not _constant_columns(v)):
        return False
    parts: dict[tuple[ir.Value, int], ir.Value] = {(concat.outputs[0], k): p for k, p in enumerate(concat.inputs)}

    def part(value: ir.Value, k: int, before: ir.Node) -> ir.Value:
        if (value, k) not in parts:
            node = value.producer()
            inputs = [part(v, k, before) if v in path else v for v in node.inputs]
            clone = ir.Node(node.domain, node.op_type, inputs, attributes=list(node.attributes.values()),
                            num_outputs=1, name=f"{node.name}_segment{k}")
            clone.outputs[0].dtype = node.outputs[0].dtype
            graph.insert_before(before, clone)
            parts[value, k] = clone.outputs[0]
        return parts[value, k]

    for node, k in slices:
        _replace(node.outputs[0], part(node.inputs[0], k, node))
    for node in scatters:  # one scatter-add per segment, in segment order: the same sums in the same order
        data, index, updates = node.inputs[:3]
        ends = _insert(graph, node, "CumSum", [counts, _constant(graph, node, 0)])
        starts = _insert(graph, node, "Sub", [ends, counts])
        for k in range(len(concat.inputs)):
            bounds = [_insert(graph, node, "Slice", [v, _constant(graph, node, [k]), _constant(graph, node, [k + 1])])
                      for v in (starts, ends)]
            rows = _insert(graph, node, "Slice", [index, *bounds, _constant(graph, node, [0])])
            data = _insert(graph, node, "ScatterND", [data, rows, part(updates, k, node)],
                           [ir.AttrString("reduction", "add")])
        _replace(node.outputs[0], data)
    return True


def _replace(old: ir.Value, new: ir.Value) -> None:
    """Every use of ``old`` by ``new``; a graph output keeps its name."""
    if old.is_graph_output():
        name, old.name = old.name, f"{old.name}_replaced"
        new.name = name
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)


def _scatter_add_of(node: ir.Node, value: ir.Value) -> bool:
    """Whether ``node`` scatter-adds the rows of ``value`` (its updates; data and index from elsewhere)."""
    return (node.op_type == "ScatterND" and node.domain == "" and len(node.inputs) == 3
            and node.inputs[2] is value and node.inputs[0] is not value and node.inputs[1] is not value
            and node.attributes.get_string("reduction") == "add")


def _insert(graph: ir.Graph, before: ir.Node, op_type: str, inputs: list, attributes: list | None = None) -> ir.Value:
    node = ir.Node("", op_type, inputs, attributes=attributes or [], num_outputs=1)
    graph.insert_before(before, node)
    return node.outputs[0]


def _constant(graph: ir.Graph, before: ir.Node, value: int | list[int]) -> ir.Value:
    node = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", ir.tensor(np.array(value, dtype=np.int64)))],
                   num_outputs=1)
    graph.insert_before(before, node)
    return node.outputs[0]


def skip_segment_concat(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every segment ``Slice`` of a concatenation of the same segments routed to the
    segment (see the module docstring); unchanged where nothing matches."""
    ir_model = ir.from_proto(model)
    changed = False
    for node in list(ir_model.graph):
        counts = _segmented_concat(node)
        if counts is not None:
            changed |= _rewrite_one(ir_model.graph, node, counts)
    if not changed:
        return model
    RemoveUnusedNodesPass()(ir_model)
    return ir.to_proto(ir_model)
