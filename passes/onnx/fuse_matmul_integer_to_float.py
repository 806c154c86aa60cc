"""ONNX rewrite for the ``ort`` target: an integer GEMM followed by its dequantizing scales -> one
ONNX Runtime ``MatMulIntegerToFloat`` kernel.

Pattern (what ``amq::bucketed_linear`` lowers to, and ONNX Runtime does not fuse by itself)::

    Mul(Mul(Cast<float>(MatMulInteger(A, B[, a_zero_point])), b_scale), a_scale)

Check: ``A`` is uint8 and ``B`` int8, at most a scalar zero point for ``A`` (none for ``B``),
``b_scale`` a scalar or 1-D per-output-column vector. ``a_scale`` may be [M, 1] (one scale per row):
``MatMulIntegerToFloat`` takes it so, and multiplies in this order (``b_scale`` first), so the
fused graph computes the same floats as the unfused one. Rewrite: ``com.microsoft.MatMulIntegerToFloat(A, B, a_scale, b_scale[, a_zero_point])``. The kernel's
own bias input is not used: with [M, 1] activation scales ONNX Runtime 1.32 adds it wrongly (measured).
"""

from __future__ import annotations

import math

import onnx
from onnxscript.rewriter import pattern

MS_DOMAIN = "com.microsoft"


def _pattern(op, a, b, a_scale, b_scale):
    return op.Mul(op.Mul(op.Cast(op.MatMulInteger(a, b), to=onnx.TensorProto.FLOAT), b_scale), a_scale)


def _pattern_zero_point(op, a, b, a_zero_point, a_scale, b_scale):
    return op.Mul(op.Mul(op.Cast(op.MatMulInteger(a, b, a_zero_point), to=onnx.TensorProto.FLOAT), b_scale),
                  a_scale)


def _check(context, a, b, a_scale, b_scale, a_zero_point=None, **_) -> bool:
    if a.dtype != onnx.TensorProto.UINT8 or b.dtype != onnx.TensorProto.INT8:
        return False
    if a_zero_point is not None:
        zp_shape = a_zero_point.shape
        if zp_shape is None or not zp_shape.is_static() or math.prod(zp_shape) != 1:
            return False
    shape = b_scale.shape
    return shape is not None and len(shape) <= 1


def _rewrite(op, a, b, a_scale, b_scale, a_zero_point=None, **_):
    extra = [] if a_zero_point is None else [a_zero_point]
    return op.MatMulIntegerToFloat(a, b, a_scale, b_scale, *extra, _domain=MS_DOMAIN)


RULES = [pattern.RewriteRule(_pattern, _rewrite, _check, name="FuseMatMulIntegerToFloat"),
         pattern.RewriteRule(_pattern_zero_point, _rewrite, _check, name="FuseMatMulIntegerToFloatZeroPoint")]
