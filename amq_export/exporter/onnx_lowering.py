"""How the graph's non-standard torch ops become ONNX (translations for ``torch.onnx.export``).

- ``amq::bucketed_linear`` -> per-row scale, zero point and top gathered from the row's bucket;
  one per-row ``QuantizeLinear`` (axis 0) to uint8, ``sat(round(x / s) + z)``: the same integers
  as Brevitas' ``clamp(round(x / s + z), 0, qmax)`` for integer ``z`` once the top is clamped in
  uint8 (checked bit for bit in ONNX Runtime); one ``MatMulInteger`` against the int8 weight, then ``acc * t * s - s * z * colsum + bias`` (ONNX Runtime's ``MatMulInteger`` takes
  only a scalar activation zero point, so the zero points are corrected after the GEMM).
- ``aten.sort.stable`` -> ``TopK`` over the whole axis; ONNX breaks ``TopK`` ties by the lower
  index, which is what a stable sort does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from onnxscript import FLOAT, UINT8
from onnxscript import opset18 as op

OPSET = 18


def bucketed_linear(x, row_bucket, act_scale, act_zero_point, act_qmax, weight_int_t, weight_scale,
                    weight_colsum, bias, clip: bool = True):
    axis1 = op.Constant(value_ints=[1])
    scale = op.Gather(act_scale, row_bucket, axis=0)  # [R]
    zero_point = op.Gather(op.Cast(act_zero_point, to=UINT8.dtype), row_bucket, axis=0)
    # QuantizeLinear saturates at 0 (every bucket's lower bound) and 255; narrower buckets are
    # clamped to their own top in uint8, a quarter of the memory traffic of a float clamp.
    q = op.QuantizeLinear(x, scale, zero_point, axis=0)
    if clip:
        q = op.Min(q, op.Unsqueeze(op.Gather(op.Cast(act_qmax, to=UINT8.dtype), row_bucket, axis=0), axis1))
    acc = op.MatMulInteger(q, weight_int_t)
    y = op.Mul(op.Mul(op.Cast(acc, to=FLOAT.dtype), weight_scale), op.Unsqueeze(scale, axis1))
    offset = op.Unsqueeze(op.Gather(op.Mul(act_scale, act_zero_point), row_bucket, axis=0), axis1)
    return op.Add(op.Sub(y, op.Mul(offset, weight_colsum)), bias)


def sort_stable(x, stable=None, dim=-1, descending=False):
    k = op.Reshape(op.Size(x), op.Constant(value_ints=[1]))
    values, indices = op.TopK(x, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def translation_table() -> dict[Callable, Callable]:
    import amq_export.amq.bucketed_linear  # noqa: F401  (registers torch.ops.amq)

    return {torch.ops.amq.bucketed_linear.default: bucketed_linear, torch.ops.aten.sort.stable: sort_stable}
