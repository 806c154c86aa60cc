"""ONNX rewrite for the ``ort`` target: an integer GEMM, its dequantizing scale and its bias -> one
ONNX Runtime ``MatMulIntegerToFloat`` kernel.

Pattern (what one bucket's segment of ``amq::bucketed_linear`` lowers to, and ONNX Runtime does not
fuse by itself)::

    Add(Mul(Cast<float>(MatMulInteger(A, B[, a_zero_point[, b_zero_point]])), scale), bias)

Check: ``A`` is uint8 and ``B`` int8 or uint8 (``uint8_weights`` makes every exported weight uint8 around
128), scalar zero points, ``scale`` (the bucket's ``t * s_k``) and ``bias`` 1-D per output column. Rewrite:
``com.microsoft.MatMulIntegerToFloat(A, B, 1, scale, a_zero_point, b_zero_point, bias)``, which computes
``acc * (1 * scale) + bias``: the same floats (measured bit for bit). Scales per row ([M, 1]) are left
alone: ONNX Runtime 1.32 then computes ``(acc * b_scale + bias) * a_scale`` (measured), so the lowering
gives every bucket's segment its own scalar-scaled GEMM instead.
"""

from __future__ import annotations

import math

import onnx
from onnxscript.rewriter import pattern

MS_DOMAIN = "com.microsoft"


def _pattern(op, a, b, scale, bias):
    return op.Add(op.Mul(op.Cast(op.MatMulInteger(a, b), to=onnx.TensorProto.FLOAT), scale), bias)


def _pattern_zero_point(op, a, b, a_zero_point, scale, bias):
    return op.Add(op.Mul(op.Cast(op.MatMulInteger(a, b, a_zero_point), to=onnx.TensorProto.FLOAT), scale), bias)


def _pattern_zero_points(op, a, b, a_zero_point, b_zero_point, scale, bias):
    gemm = op.MatMulInteger(a, b, a_zero_point, b_zero_point)
    return op.Add(op.Mul(op.Cast(gemm, to=onnx.TensorProto.FLOAT), scale), bias)


def _scalar(value) -> bool:
    shape = value.shape
    return shape is not None and shape.is_static() and math.prod(shape) == 1


def _check(context, a, b, scale, bias, a_zero_point=None, b_zero_point=None, **_) -> bool:
    if a.dtype != onnx.TensorProto.UINT8 or b.dtype not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return False
    if any(zp is not None and not _scalar(zp) for zp in (a_zero_point, b_zero_point)):
        return False
    return all(v.shape is not None and len(v.shape) == 1 for v in (scale, bias))


def _rewrite(op, a, b, scale, bias, a_zero_point=None, b_zero_point=None, **_):
    if a_zero_point is None:
        a_zero_point = op.Constant(value=onnx.helper.make_tensor("zero_point", onnx.TensorProto.UINT8, [], [0]))
    return op.MatMulIntegerToFloat(a, b, op.Constant(value_float=1.0), scale, a_zero_point, b_zero_point, bias,
                                   _domain=MS_DOMAIN)


RULES = [pattern.RewriteRule(_pattern, _rewrite, _check, name="FuseMatMulIntegerToFloat"),
         pattern.RewriteRule(_pattern_zero_point, _rewrite, _check, name="FuseMatMulIntegerToFloatZeroPoint"),
         pattern.RewriteRule(_pattern_zero_points, _rewrite, _check, name="FuseMatMulIntegerToFloatZeroPoints")]
