"""ONNX rewrites for the ``ort`` target with AMQ's kernel library (``runtimes/onnxruntime/kernels``).

Two ops of domain ``amq.ort`` replace what ONNX Runtime's standard kernels copy or race on:

- ``QuantizeRows(x, start, end, scale, zero_point, low, high)``: a bucket segment's quantization,
  written by the lowering as ``[Clip(]QuantizeLinear(Slice(x, start, end, axes=[0]), s, z)[, low, high)]``
  (``exporter/onnx_lowering.py``), in one pass: no float copy of the segment, no second pass for a narrow
  bucket's clip. Check: ``x`` float of rank 2, the ``Slice`` on axis 0 with one bound each and no steps,
  scalar scale, scalar uint8 zero point and bounds. A ``QuantizeLinear`` without ``Slice`` is rewritten only with a
  ``Clip`` (alone it is one pass already). Rewrite: ``QuantizeRows`` with ``start`` 0 / ``end`` int64 max
  where there is no ``Slice``, ``low`` 0 / ``high`` 255 where there is no ``Clip``.
- ``ScatterAddRows(data, index, updates[, source])``: ``ScatterND(data, index [E, 1], updates [E, F],
  reduction="add")``, the message sum; the same additions in the same order, in ``data``'s buffer where
  ONNX Runtime allows it, and correct on intra-op threads (each thread owns a range of target rows). Where
  the updates are rows gathered from a tensor (``Gather(rows, source [E], axis=0)``, used by this sum only:
  the auxiliary GNN's messages are projected node rows), the gather goes into the sum, which then reads
  ``rows[source[e]]`` instead of writing and reading an [E, F] copy.

- Vector scatters, as the in-degree counts and the bucket sort's inverse permutations lower
  (``ScatterElements(data [N], index [M], updates [M], axis=0)``, ONNX Runtime's generic kernel: about 8 ns a
  value): float sums (``reduction="add"``) become ``ScatterAddRows`` on [N, 1] views (free ``Reshape``s),
  int64 writes (no reduction) ``ScatterValues(data, index, updates)``, one plain loop.

The rewritten graph needs the library at run time: ``OrtModel`` registers it for graphs that use the domain.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnxscript.rewriter import pattern

DOMAIN = "amq.ort"
_INT64_MAX = int(np.iinfo(np.int64).max)


def _const_ints(value) -> list[int] | None:
    tensor = value.const_value if value is not None else None
    return None if tensor is None else [int(v) for v in tensor.numpy().reshape(-1)]


def _scalar(value, dtype: int | None = None) -> bool:
    shape = value.shape if value is not None else None
    return (shape is not None and shape.is_static() and math.prod(shape) == 1
            and (dtype is None or value.dtype == dtype))


def _slice_rows(x, start, end, axes) -> bool:
    """A ``Slice`` (no steps) of one range of rows of a float matrix."""
    return (x.dtype == onnx.TensorProto.FLOAT and x.shape is not None and len(x.shape) == 2
            and _const_ints(axes) in ([0], [-2]) and _scalar(start, onnx.TensorProto.INT64)
            and _scalar(end, onnx.TensorProto.INT64))


def _quantize_ok(scale, zero_point) -> bool:
    return _scalar(scale, onnx.TensorProto.FLOAT) and _scalar(zero_point, onnx.TensorProto.UINT8)


def _bounds_ok(low, high) -> bool:
    return _scalar(low, onnx.TensorProto.UINT8) and _scalar(high, onnx.TensorProto.UINT8)


def _quantize_attributes_ok(context) -> bool:
    """The matched ``QuantizeLinear`` saturates to uint8 per tensor (no ``saturate=0``, no block size)."""
    node = next(n for n in context.nodes if n.op_type == "QuantizeLinear")
    saturate, block_size = node.attributes.get("saturate"), node.attributes.get("block_size")
    return (saturate is None or saturate.value == 1) and (block_size is None or block_size.value == 0)


def _uint8(op, value: int):
    return op.Constant(value=onnx.helper.make_tensor("value", onnx.TensorProto.UINT8, [], [value]))


def _int64s(op, values: list[int]):
    return op.Constant(value_ints=values)


# Slice + QuantizeLinear + Clip
def _sliced_clipped(op, x, start, end, axes, scale, zero_point, low, high):
    return op.Clip(op.QuantizeLinear(op.Slice(x, start, end, axes), scale, zero_point), low, high)


def _check_sliced_clipped(context, x, start, end, axes, scale, zero_point, low, high, **_) -> bool:
    return (_slice_rows(x, start, end, axes) and _quantize_ok(scale, zero_point) and _bounds_ok(low, high)
            and _quantize_attributes_ok(context))


def _rewrite_sliced_clipped(op, x, start, end, scale, zero_point, low, high, **_):
    return op.QuantizeRows(x, start, end, scale, zero_point, low, high, _domain=DOMAIN)


# Slice + QuantizeLinear
def _sliced(op, x, start, end, axes, scale, zero_point):
    return op.QuantizeLinear(op.Slice(x, start, end, axes), scale, zero_point)


def _check_sliced(context, x, start, end, axes, scale, zero_point, **_) -> bool:
    return _slice_rows(x, start, end, axes) and _quantize_ok(scale, zero_point) and _quantize_attributes_ok(context)


def _rewrite_sliced(op, x, start, end, scale, zero_point, **_):
    return op.QuantizeRows(x, start, end, scale, zero_point, _uint8(op, 0), _uint8(op, 255), _domain=DOMAIN)


# QuantizeLinear + Clip
def _clipped(op, x, scale, zero_point, low, high):
    return op.Clip(op.QuantizeLinear(x, scale, zero_point), low, high)


def _check_clipped(context, x, scale, zero_point, low, high, **_) -> bool:
    return (x.dtype == onnx.TensorProto.FLOAT and x.shape is not None and len(x.shape) == 2
            and _quantize_ok(scale, zero_point) and _bounds_ok(low, high) and _quantize_attributes_ok(context))


def _rewrite_clipped(op, x, scale, zero_point, low, high, **_):
    return op.QuantizeRows(x, _int64s(op, [0]), _int64s(op, [_INT64_MAX]), scale, zero_point, low, high, _domain=DOMAIN)


def _scatter(op, data, index, updates):
    return op.ScatterND(data, index, updates, reduction="add")


def _one_column(index) -> bool:
    """``index`` is [E, 1]: by its shape, or as a row slice of such an index (shape inference loses the
    columns of a ``Slice`` with run-time bounds: a bucket segment's index)."""
    while True:
        if index.shape is not None and len(index.shape) == 2 and index.shape[1] == 1:
            return True
        node = index.producer()
        if node is None or node.op_type != "Slice" or len(node.inputs) < 4 or _const_ints(node.inputs[3]) != [0]:
            return False
        index = node.inputs[0]


def _check_scatter(context, data, index, updates, **_) -> bool:
    return (all(v.shape is not None and len(v.shape) == 2 for v in (data, updates)) and _one_column(index)
            and data.dtype == updates.dtype == onnx.TensorProto.FLOAT and index.dtype == onnx.TensorProto.INT64)


def _rewrite_scatter(op, data, index, updates, **_):
    return op.ScatterAddRows(data, index, updates, _domain=DOMAIN)


def _gathered_scatter(op, data, index, rows, source):
    return op.ScatterND(data, index, op.Gather(rows, source, axis=0), reduction="add")


def _check_gathered_scatter(context, data, index, rows, source, **_) -> bool:
    return (_check_scatter(context, data, index, rows) and source.dtype == onnx.TensorProto.INT64
            and source.shape is not None and len(source.shape) == 1)


def _rewrite_gathered_scatter(op, data, index, rows, source, **_):
    return op.ScatterAddRows(data, index, rows, source, _domain=DOMAIN)


def _scatter_elements(op, data, index, updates):
    return op.ScatterElements(data, index, updates, _outputs=["out"])


def _vector_scatter(data, index, updates, out, dtype: int, reduction: str) -> bool:
    node = out.producer()
    return (node.attributes.get_int("axis", 0) == 0 and node.attributes.get_string("reduction", "none") == reduction
            and all(v.shape is not None and len(v.shape) == 1 for v in (data, index, updates))
            and data.dtype == updates.dtype == dtype and index.dtype == onnx.TensorProto.INT64)


def _check_vector_sum(context, data, index, updates, out, **_) -> bool:
    return _vector_scatter(data, index, updates, out, onnx.TensorProto.FLOAT, "add")


def _rewrite_vector_sum(op, data, index, updates, **_):
    column = _int64s(op, [-1, 1])
    rows = op.ScatterAddRows(op.Reshape(data, column), op.Reshape(index, column), op.Reshape(updates, column),
                             _domain=DOMAIN)
    return op.Reshape(rows, _int64s(op, [-1]))


def _check_vector_writes(context, data, index, updates, out, **_) -> bool:
    return _vector_scatter(data, index, updates, out, onnx.TensorProto.INT64, "none")


def _rewrite_vector_writes(op, data, index, updates, **_):
    return op.ScatterValues(data, index, updates, _domain=DOMAIN)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes for every value (the checks need ranks; the segment clones of ``skip_segment_concat`` carry none)."""
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


# Shapes first; then one sweep each, the largest pattern first, so that Slice + QuantizeLinear + Clip becomes one op.
STEPS = [infer_shapes,
         [pattern.RewriteRule(_sliced_clipped, _rewrite_sliced_clipped, _check_sliced_clipped,
                              name="QuantizeRowsSlicedClipped"),
          pattern.RewriteRule(_gathered_scatter, _rewrite_gathered_scatter, _check_gathered_scatter,
                              name="ScatterAddGatheredRows")],
         [pattern.RewriteRule(_sliced, _rewrite_sliced, _check_sliced, name="QuantizeRowsSliced")],
         [pattern.RewriteRule(_clipped, _rewrite_clipped, _check_clipped, name="QuantizeRowsClipped"),
          pattern.RewriteRule(_scatter, _rewrite_scatter, _check_scatter, name="ScatterAddRows"),
          pattern.RewriteRule(_scatter_elements, _rewrite_vector_sum, _check_vector_sum, name="ScatterAddValues"),
          pattern.RewriteRule(_scatter_elements, _rewrite_vector_writes, _check_vector_writes, name="ScatterValues")]]
