"""How the graph's non-standard torch ops become ONNX (translations for ``torch.onnx.export``).

- ``amq::bucketed_linear`` -> per-row scale, zero point and range gathered from the row's bucket,
  ``q = clamp(round(x / s + z), 0, qmax)`` cast to uint8, one ``MatMulInteger`` against the int8
  weight, then ``acc * t * s - s * z * colsum + bias`` (ONNX Runtime's ``MatMulInteger`` takes
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
                    weight_colsum, bias):
    axis1 = op.Constant(value_ints=[1])
    scale = op.Unsqueeze(op.Gather(act_scale, row_bucket, axis=0), axis1)
    zero_point = op.Unsqueeze(op.Gather(act_zero_point, row_bucket, axis=0), axis1)
    qmax = op.Unsqueeze(op.Gather(act_qmax, row_bucket, axis=0), axis1)
    q = op.Min(op.Max(op.Round(op.Add(op.Div(x, scale), zero_point)), op.Constant(value_float=0.0)), qmax)
    acc = op.MatMulInteger(op.Cast(q, to=UINT8.dtype), weight_int_t)
    y = op.Mul(op.Mul(op.Cast(acc, to=FLOAT.dtype), weight_scale), scale)
    return op.Add(op.Sub(y, op.Mul(op.Mul(scale, zero_point), weight_colsum)), bias)


def sort_stable(x, stable=None, dim=-1, descending=False):
    k = op.Reshape(op.Size(x), op.Constant(value_ints=[1]))
    values, indices = op.TopK(x, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices


def translation_table() -> dict[Callable, Callable]:
    import amq_export.amq.bucketed_linear  # noqa: F401  (registers torch.ops.amq)

    return {torch.ops.amq.bucketed_linear.default: bucketed_linear, torch.ops.aten.sort.stable: sort_stable}
