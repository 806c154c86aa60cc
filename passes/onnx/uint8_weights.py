"""ONNX rewrite: integer GEMMs with int8 weights -> uint8 weights offset by 128, with weight zero point 128.

ONNX Runtime's CPU kernel for uint8 x int8 (MLAS's U8S8 GEMM) on x86-64 CPUs without VNNI (AVX2, and AVX-512
without VNNI: Zen 1-3, Intel before Cascade Lake) multiplies with ``vpmaddubsw``, which adds each pair of
products in int16 with saturation: 255 * 127 * 2 = 64770 does not fit, and on such a CPU (a Zen 3 EPYC,
ONNX Runtime 1.32) 2885 of 4096 outputs of a 256 x 64 x 16 GEMM of random full-range values were wrong, 40%
off in the exported models' parity tests. Its uint8 x uint8 kernel widens to int16 first and is exact
everywhere (0 of 4096; 96.9 against 80.5 ms for 300k x 128 x 128 on that CPU). ``(w + 128) - 128`` is ``w``,
so the integers of every product are unchanged: the outputs equal the exact int8 GEMM's, bit for bit.

Pattern: ``MatMulInteger(A, B[, a_zero_point])`` with ``A`` uint8 and ``B`` a constant int8 (every exported
weight) without a zero point. Rewrite: ``MatMulInteger(A, B + 128 as uint8, a_zero_point (0 if absent), 128)``,
``B`` converted once here.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

OFFSET = 128


def _uint8(op, value: int):
    return op.Constant(value=onnx.helper.make_tensor("value", onnx.TensorProto.UINT8, [], [value]))


def _gemm(op, a, b):
    return op.MatMulInteger(a, b)


def _gemm_zero_point(op, a, b, a_zero_point):
    return op.MatMulInteger(a, b, a_zero_point)


def _check(context, a, b, **_) -> bool:
    return a.dtype == onnx.TensorProto.UINT8 and b.dtype == onnx.TensorProto.INT8 and b.const_value is not None


def _rewrite(op, a, b, a_zero_point=None, **_):
    if a_zero_point is None:
        a_zero_point = _uint8(op, 0)
    shifted = (b.const_value.numpy().astype(np.int16) + OFFSET).astype(np.uint8)
    return op.MatMulInteger(a, op.Constant(value=ir.tensor(shifted)), a_zero_point, _uint8(op, OFFSET))


RULES = [pattern.RewriteRule(_gemm, _rewrite, _check, name="Uint8Weights"),
         pattern.RewriteRule(_gemm_zero_point, _rewrite, _check, name="Uint8WeightsZeroPoint")]
