"""How the graph's non-standard torch ops become ONNX (translations for ``torch.onnx.export``).

- ``amq::bucketed_linear``, rows sorted by bucket (``bucket_counts`` given, DESIGN item 8; or one bucket):
  one segment per bucket (``Slice``), quantized to uint8 by ``QuantizeLinear`` with the bucket's scalar
  scale and zero point, ``sat(round(x / s) + z)``: the integers of the PyTorch op (``amq.bucketed_linear``
  rounds in the same order) once a narrow bucket is clamped by a scalar ``Clip``; then
  ``MatMulInteger(q, W_int, z_k)``, times the bucket's per-column scale ``t * s_k``, plus the bias, which
  the ``ort`` target fuses into one ``MatMulIntegerToFloat`` per bucket; the segments' outputs concatenated.
  Every step is a vectorised kernel: ONNX Runtime runs per-row parameters row by row (a per-row
  ``QuantizeLinear`` of 300k edge rows costs as much at 3 columns as at 64), and its ``MatMulIntegerToFloat``
  with [M, 1] scales is slower and cannot take the bias (measured).
- Rows in any order (``bucket_counts`` not given; export with ``sort_rows=False``) take the per-row way:
  ``QuantizeLinear`` (axis 0) with each row's scale, per-row ``Max``/``Min`` bounds, and every row's
  scales gathered after the GEMM; one shared zero point where the buckets allow (``shared_zero_point``),
  else per-row zero points, corrected in int32 by ``z * colsum(W_int)``.
- ``amq::quantize_rows`` and ``amq::int_linear``, the two halves of the shared-zero-point case (used
  where a layer's rows are gathered node rows, ``BucketedIntLinear.gathered``), lower alike, segment by
  segment where counts are given; ``amq::quantize_bucket`` (the node rows' copy at one bucket) is one
  scalar segment, and ``amq::gather_bucket_rows`` gathers each segment's rows from its bucket's copy (rows in
  any order: from the copies concatenated, at ``bucket * N + index``).
- ``amq::runtime_silu`` (ONNX Runtime's SiLU, emulated in PyTorch) -> ``Mul(x, Sigmoid(x))``, which ONNX
  Runtime fuses into ``QuickGelu``.
- ``amq::greedy_prefix`` (the allocation's sorted prefix) without sorting every step: each step's gain goes
  to one of ``GREEDY_BINS`` bins by a map that never decreases with the gain (divide by the largest, four
  square roots, scale, truncate: every step correctly rounded, so equal gains share a bin and a larger gain
  never lands lower); the steps' costs summed per bin (``ScatterElements`` add) and accumulated from the top
  bin down give the bin in which the budget runs out; the bins above are taken whole, and only that bin's
  steps are sorted (``TopK`` with k its size; ONNX breaks ties by the lower index, as the stable sort does).
  Costs are integers (MACs times bits), so every sum is exact in float64 and the prefix is the sort's.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch
from onnxscript import FLOAT, INT32, INT64, UINT8
from onnxscript import opset18 as op

OPSET = 18
# Bins of the gains in greedy_prefix: u^(1/16) of gains u spanning 10^-8..1 spreads them over about 2,800 bins
GREEDY_BINS = 4096


def _per_row_uint8(values, row_bucket):  # [K] float integers -> [R, 1] uint8
    return op.Unsqueeze(op.Gather(op.Cast(values, to=UINT8.dtype), row_bucket, axis=0), op.Constant(value_ints=[1]))


def _uint8(value):
    return op.Cast(value, to=UINT8.dtype)


def _shared(shared_zero_point: int):
    return _uint8(op.Constant(value_int=shared_zero_point))


def _bucket(values, k: int):  # [K] -> the scalar of bucket k
    return op.Gather(values, op.Constant(value_int=k), axis=0)


def _bucket_count(act_scale) -> int:
    """K, from the static shape of a per-bucket parameter."""
    return int(act_scale.shape[0])


def _split_rows(x, bucket_counts, buckets: int) -> list:
    """Rows sorted by bucket -> one tensor per bucket (``bucket_counts[k]`` rows; one bucket needs no counts).
    Slices, not Split: the exporter's graph builder wants Split's outputs counted by an attribute."""
    if buckets == 1:
        return [x]
    ends = op.CumSum(bucket_counts, op.Constant(value_int=0))
    starts, axes = op.Sub(ends, bucket_counts), op.Constant(value_ints=[0])
    return [op.Slice(x, op.Slice(starts, [k], [k + 1]), op.Slice(ends, [k], [k + 1]), axes) for k in range(buckets)]


def _concat_rows(parts: list):
    return op.Concat(*parts, axis=0) if len(parts) > 1 else parts[0]


def quantize_bucket(x, bucket: int, act_scale, act_zero_point, act_qmax, clip, shared_zero_point: int):
    """Every row of ``x`` quantized at bucket ``bucket`` to uint8 (``Z`` as zero point where shared, else ``z_b``),
    clamped to the bucket's integers (``Z - z_b .. Z - z_b + qmax_b``, or ``0 .. qmax_b``) where ``clip[bucket]``."""
    if shared_zero_point >= 0:
        low = op.Sub(op.Constant(value_float=float(shared_zero_point)), _bucket(act_zero_point, bucket))
        q = op.QuantizeLinear(x, _bucket(act_scale, bucket), _shared(shared_zero_point))
    else:
        low = op.Constant(value_float=0.0)
        q = op.QuantizeLinear(x, _bucket(act_scale, bucket), _uint8(_bucket(act_zero_point, bucket)))
    if clip[bucket]:
        q = op.Clip(q, _uint8(low), _uint8(op.Add(low, _bucket(act_qmax, bucket))))
    return q


def _gemm_bucket(q, k: int, zero_point, act_scale, weight_int_t, weight_scale, bias):
    """uint8 rows of bucket ``k`` around ``zero_point`` -> ``acc * (t * s_k) + bias``: one
    ``MatMulIntegerToFloat`` with the bias once the ``ort`` rules have run."""
    acc = op.Cast(op.MatMulInteger(q, weight_int_t, zero_point), to=FLOAT.dtype)
    return op.Add(op.Mul(acc, op.Mul(weight_scale, _bucket(act_scale, k))), bias)


def _scaled_rows(acc, row_bucket, act_scale, weight_scale, bias):
    """int32 [R, out] of rows in any order -> ``acc * (t * s_row) + bias`` (every row's scales gathered)."""
    scales = op.Mul(op.Unsqueeze(act_scale, op.Constant(value_ints=[1])), weight_scale)  # [K, out]
    return op.Add(op.Mul(op.Cast(acc, to=FLOAT.dtype), op.Gather(scales, row_bucket, axis=0)), bias)


def quantize_rows(x, row_bucket, act_scale, act_zero_point, act_qmax, clip, shared_zero_point: int,
                  bucket_counts=None):
    if bucket_counts is not None or len(clip) == 1:
        return _concat_rows([quantize_bucket(part, k, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)
                             for k, part in enumerate(_split_rows(x, bucket_counts, len(clip)))])
    scale = op.Gather(act_scale, row_bucket, axis=0)  # [R]
    q = op.QuantizeLinear(x, scale, op.Expand(_shared(shared_zero_point), op.Shape(scale)), axis=0)
    if any(clip):  # bucket k's integers, shifted to the shared zero point: Z - z_k .. Z - z_k + qmax_k
        low = op.Sub(op.Constant(value_float=float(shared_zero_point)), act_zero_point)
        q = op.Min(op.Max(q, _per_row_uint8(low, row_bucket)), _per_row_uint8(op.Add(low, act_qmax), row_bucket))
    return q


def gather_bucket_rows(tables, index, row_bucket, bucket_counts=None):
    if len(tables) == 1:
        return op.Gather(tables[0], index, axis=0)
    if bucket_counts is None:  # rows in any order: bucket k's table starts at row k * N of their concatenation
        offset = op.Mul(row_bucket, op.Shape(tables[0], start=0, end=1))
        return op.Gather(op.Concat(*tables, axis=0), op.Add(offset, index), axis=0)
    return _concat_rows([op.Gather(table, part, axis=0)
                         for table, part in zip(tables, _split_rows(index, bucket_counts, len(tables)), strict=True)])


def int_linear(q, row_bucket, act_scale, weight_int_t, weight_scale, bias, shared_zero_point: int,
               bucket_counts=None):
    buckets = _bucket_count(act_scale)
    if bucket_counts is not None or buckets == 1:
        return _concat_rows([_gemm_bucket(part, k, _shared(shared_zero_point), act_scale, weight_int_t, weight_scale, bias)
                             for k, part in enumerate(_split_rows(q, bucket_counts, buckets))])
    acc = op.MatMulInteger(q, weight_int_t, _shared(shared_zero_point))
    return _scaled_rows(acc, row_bucket, act_scale, weight_scale, bias)


def bucketed_linear(x, row_bucket, act_scale, act_zero_point, act_qmax, weight_int_t, weight_scale, bias,
                    clip, shared_zero_point: int, bucket_counts=None):
    if bucket_counts is not None or len(clip) == 1:  # per segment: each bucket with its own zero point
        return _concat_rows([
            _gemm_bucket(quantize_bucket(part, k, act_scale, act_zero_point, act_qmax, clip, -1), k,
                         _uint8(_bucket(act_zero_point, k)), act_scale, weight_int_t, weight_scale, bias)
            for k, part in enumerate(_split_rows(x, bucket_counts, len(clip)))])
    if shared_zero_point >= 0:
        q = quantize_rows(x, row_bucket, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)
        return int_linear(q, row_bucket, act_scale, weight_int_t, weight_scale, bias, shared_zero_point)
    zero_point = op.Gather(_uint8(act_zero_point), row_bucket, axis=0)
    q = op.QuantizeLinear(x, op.Gather(act_scale, row_bucket, axis=0), zero_point, axis=0)
    if any(clip):
        q = op.Min(q, _per_row_uint8(act_qmax, row_bucket))
    colsum = op.ReduceSum(op.Cast(weight_int_t, to=INT32.dtype), op.Constant(value_ints=[0]), keepdims=0)
    zero_point = op.Cast(op.Unsqueeze(zero_point, op.Constant(value_ints=[1])), to=INT32.dtype)
    acc = op.Sub(op.MatMulInteger(q, weight_int_t), op.Mul(zero_point, colsum))
    return _scaled_rows(acc, row_bucket, act_scale, weight_scale, bias)


def runtime_silu(x):
    return op.Mul(x, op.Sigmoid(x))


def greedy_prefix(gain, cost, spare):
    largest = op.Constant(value_float=float(torch.finfo(torch.float32).max))
    g = op.Min(op.Cast(gain, to=FLOAT.dtype), largest)  # float32 keys; an infinite gain becomes the largest
    top = op.ReduceMax(op.Concat(g, op.Constant(value_floats=[float(torch.finfo(torch.float32).tiny)]), axis=0),
                       keepdims=0)  # > 0, also with no steps or all gains 0
    root = op.Div(g, top)
    for _ in range(4):
        root = op.Sqrt(root)  # (g / top)^(1/16) in [0, 1]
    bins = op.Cast(op.Mul(root, op.Constant(value_float=float(GREEDY_BINS - 1))), to=INT64.dtype)
    zero = op.Constant(value_int=0)
    bin_cost = op.ScatterElements(op.ConstantOfShape(op.Constant(value_ints=[GREEDY_BINS]),
                                                     value=_double_tensor(0.0)), bins, cost, axis=0, reduction="add")
    above = op.CumSum(bin_cost, zero, exclusive=1, reverse=1)  # cost of the bins above each bin
    # the bin the budget runs out in (the highest whose steps and those above do not all fit; -1: all fit)
    over = op.Greater(op.Add(above, bin_cost), spare)
    cut = op.ReduceMax(op.Where(over, op.Range(zero, op.Constant(value_int=GREEDY_BINS), op.Constant(value_int=1)),
                                op.Constant(value_int=-1)), keepdims=0)
    in_cut = op.Equal(bins, cut)
    k = op.ReduceSum(op.Cast(in_cut, to=INT64.dtype), keepdims=1)
    _, order = op.TopK(op.Where(in_cut, gain, op.Constant(value=_double_tensor(-1.0))), k, axis=0, largest=1, sorted=1)
    left = op.Sub(spare, op.Gather(above, op.Max(cut, zero), axis=0))
    taken_in_cut = op.Cast(op.LessOrEqual(op.CumSum(op.Gather(cost, order, axis=0), zero), left), to=INT64.dtype)
    return op.ScatterElements(op.Cast(op.Greater(bins, cut), to=INT64.dtype), order, taken_in_cut, axis=0)


def _double_tensor(value: float) -> onnx.TensorProto:
    return onnx.helper.make_tensor("value", onnx.TensorProto.DOUBLE, [1], [value])


def translation_table() -> dict[Callable, Callable]:
    # importing these modules registers their ops under torch.ops.amq
    import amq_export.amq.bucketed_linear
    import amq_export.amq.greedy_prefix
    import amq_export.amq.runtime_silu  # noqa: F401

    return {torch.ops.amq.bucketed_linear.default: bucketed_linear, torch.ops.amq.quantize_rows.default: quantize_rows,
            torch.ops.amq.quantize_bucket.default: quantize_bucket,
            torch.ops.amq.gather_bucket_rows.default: gather_bucket_rows,
            torch.ops.amq.int_linear.default: int_linear, torch.ops.amq.runtime_silu.default: runtime_silu,
            torch.ops.amq.greedy_prefix.default: greedy_prefix}
