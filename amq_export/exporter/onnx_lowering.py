"""How the graph's non-standard torch ops become ONNX (translations for ``torch.onnx.export``).

- ``amq::bucketed_linear`` -> the rows quantized to uint8 by ``QuantizeLinear``, ``sat(round(x / s) + z)``:
  the same integers as Brevitas' ``clamp(round(x / s + z), 0, qmax)`` for integer ``z`` once the range is
  clamped in uint8 (checked bit for bit in ONNX Runtime); one ``MatMulInteger`` against the int8
  weight, then ``acc * t * s_row + bias``. Rows sorted by bucket (``bucket_counts`` given, DESIGN item 8)
  are split into one segment per bucket, each quantized with its bucket's scalar scale and clamped by a
  scalar ``Clip`` only where the bucket is narrow, then concatenated: vectorised kernels, where rows in
  any order take a per-row ``QuantizeLinear`` (axis 0) and per-row ``Max``/``Min`` bounds, which ONNX
  Runtime runs row by row (on a 3-column tensor of 300k edge rows as slowly as on a 64-column one). ONNX Runtime's integer GEMMs take one scalar activation zero point, so
  where the buckets allow (``shared_zero_point``) every row is quantized around the same zero point
  and clamped to its bucket's shifted range in uint8; the GEMM subtracts it and the ``ort`` target
  fuses it all into ``MatMulIntegerToFloat``. Otherwise each row keeps its own zero point and the
  GEMM's int32 result is corrected by ``z * colsum(W_int)`` (exact, but two more passes over it).
- ``amq::quantize_rows`` and ``amq::int_linear``, the two halves of the shared-zero-point case (used
  where a layer's rows are gathered node rows, ``BucketedIntLinear.gathered``), lower alike;
  ``amq::quantize_bucket`` (the node rows' copy at one bucket) is one scalar segment.
- ``aten.sort.stable`` -> ``TopK`` over the whole axis; ONNX breaks ``TopK`` ties by the lower
  index, which is what a stable sort does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from onnxscript import FLOAT, INT32, UINT8
from onnxscript import opset18 as op

OPSET = 18


def _per_row_uint8(values, row_bucket):  # [K] float integers -> [R, 1] uint8
    return op.Unsqueeze(op.Gather(op.Cast(values, to=UINT8.dtype), row_bucket, axis=0), op.Constant(value_ints=[1]))


def _scaled(acc, row_bucket, act_scale, weight_scale, bias):  # int32 [R, out] -> acc * t * s_row + bias
    row_scale = op.Unsqueeze(op.Gather(act_scale, row_bucket, axis=0), op.Constant(value_ints=[1]))
    return op.Add(op.Mul(op.Mul(op.Cast(acc, to=FLOAT.dtype), weight_scale), row_scale), bias)


def _shared(shared_zero_point: int):
    return op.Cast(op.Constant(value_int=shared_zero_point), to=UINT8.dtype)


def _quantize_bucket(x, k: int, act_scale, act_zero_point, act_qmax, clip, shared_zero_point: int):
    """Every row of ``x`` quantized at bucket ``k`` to uint8 (``Z`` as zero point where shared), clamped to
    the bucket's integers (``Z - z_k .. Z - z_k + qmax_k``, or ``0 .. qmax_k``) where ``clip[k]``."""
    index = op.Constant(value_int=k)
    scale, zero_point = op.Gather(act_scale, index, axis=0), op.Gather(act_zero_point, index, axis=0)
    if shared_zero_point >= 0:
        low = op.Sub(op.Constant(value_float=float(shared_zero_point)), zero_point)
        q = op.QuantizeLinear(x, scale, _shared(shared_zero_point))
    else:
        low = op.Constant(value_float=0.0)
        q = op.QuantizeLinear(x, scale, op.Cast(zero_point, to=UINT8.dtype))
    if clip[k]:
        high = op.Add(low, op.Gather(act_qmax, index, axis=0))
        q = op.Clip(q, op.Cast(low, to=UINT8.dtype), op.Cast(high, to=UINT8.dtype))
    return q


def quantize_bucket(x, bucket: int, act_scale, act_zero_point, act_qmax, clip, shared_zero_point: int):
    return _quantize_bucket(x, bucket, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)


def _segments(x, bucket_counts, act_scale, act_zero_point, act_qmax, clip, shared_zero_point: int):
    """Rows sorted by bucket -> uint8: bucket k's segment (``bucket_counts[k]`` rows) quantized at bucket k."""
    if len(clip) > 1:  # Slice, not Split: the exporter's graph builder wants Split's outputs counted by an attribute
        ends = op.CumSum(bucket_counts, op.Constant(value_int=0))
        starts, axes = op.Sub(ends, bucket_counts), op.Constant(value_ints=[0])
        parts = [op.Slice(x, op.Slice(starts, [k], [k + 1]), op.Slice(ends, [k], [k + 1]), axes)
                 for k in range(len(clip))]
    else:
        parts = [x]
    quantized = [_quantize_bucket(part, k, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)
                 for k, part in enumerate(parts)]
    return op.Concat(*quantized, axis=0) if len(quantized) > 1 else quantized[0]


def quantize_rows(x, row_bucket, act_scale, act_zero_point, act_qmax, clip, shared_zero_point: int,
                  bucket_counts=None):
    if bucket_counts is not None:
        return _segments(x, bucket_counts, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)
    scale = op.Gather(act_scale, row_bucket, axis=0)  # [R]
    q = op.QuantizeLinear(x, scale, op.Expand(_shared(shared_zero_point), op.Shape(scale)), axis=0)
    if any(clip):  # bucket k's integers, shifted to the shared zero point: Z - z_k .. Z - z_k + qmax_k
        low = op.Sub(op.Constant(value_float=float(shared_zero_point)), act_zero_point)
        q = op.Min(op.Max(q, _per_row_uint8(low, row_bucket)), _per_row_uint8(op.Add(low, act_qmax), row_bucket))
    return q


def int_linear(q, row_bucket, act_scale, weight_int_t, weight_scale, bias, shared_zero_point: int):
    acc = op.MatMulInteger(q, weight_int_t, _shared(shared_zero_point))
    return _scaled(acc, row_bucket, act_scale, weight_scale, bias)


def bucketed_linear(x, row_bucket, act_scale, act_zero_point, act_qmax, weight_int_t, weight_scale, bias,
                    clip, shared_zero_point: int, bucket_counts=None):
    if shared_zero_point >= 0:
        q = quantize_rows(x, row_bucket, act_scale, act_zero_point, act_qmax, clip, shared_zero_point, bucket_counts)
        return int_linear(q, row_bucket, act_scale, weight_int_t, weight_scale, bias, shared_zero_point)
    zero_point = op.Gather(op.Cast(act_zero_point, to=UINT8.dtype), row_bucket, axis=0)
    if bucket_counts is not None:
        q = _segments(x, bucket_counts, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)
    else:
        q = op.QuantizeLinear(x, op.Gather(act_scale, row_bucket, axis=0), zero_point, axis=0)
        if any(clip):
            q = op.Min(q, _per_row_uint8(act_qmax, row_bucket))
    colsum = op.ReduceSum(op.Cast(weight_int_t, to=INT32.dtype), op.Constant(value_ints=[0]), keepdims=0)
    zero_point = op.Cast(op.Unsqueeze(zero_point, op.Constant(value_ints=[1])), to=INT32.dtype)
    acc = op.Sub(op.MatMulInteger(q, weight_int_t), op.Mul(zero_point, colsum))
    return _scaled(acc, row_bucket, act_scale, weight_scale, bias)


def sort_stable(x, stable=None, dim=-1, descending=False):
    k = op.Reshape(op.Size(x), op.Constant(value_ints=[1]))
    values, indices = op.TopK(x, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def translation_table() -> dict[Callable, Callable]:
    import amq_export.amq.bucketed_linear  # noqa: F401  (registers torch.ops.amq)

    return {torch.ops.amq.bucketed_linear.default: bucketed_linear, torch.ops.amq.quantize_rows.default: quantize_rows,
            torch.ops.amq.quantize_bucket.default: quantize_bucket,
            torch.ops.amq.int_linear.default: int_linear, torch.ops.aten.sort.stable: sort_stable}
