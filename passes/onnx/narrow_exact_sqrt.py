"""ONNX rewrite: a float32 square root taken in float64 -> the float32 ``Sqrt`` it equals.

PyTorch's float32 ``sqrt`` on CPU is not correctly rounded (on this machine's AVX512 build of torch 2.13
about one value in six is an ulp off the IEEE result), while ONNX Runtime's is. The models therefore
take the square roots that feed quantized layers as ``x.double().sqrt().float()``, which is exactly the
IEEE float32 square root (float64 carries more than 2 x 24 + 2 bits, so rounding twice gives the
once-rounded result), and the exported graph would carry that as

    Cast<float>(Sqrt(Cast<double>(x)))

Check: ``x`` is float32. Rewrite: ``Sqrt(x)``: the same floats, without the two casts and the
float64 work.
"""

from __future__ import annotations

import onnx
from onnxscript.rewriter import pattern


def _pattern(op, x):
    return op.Cast(op.Sqrt(op.Cast(x, to=onnx.TensorProto.DOUBLE)), to=onnx.TensorProto.FLOAT)


def _check(context, x, **_) -> bool:
    return x.dtype == onnx.TensorProto.FLOAT


def _rewrite(op, x, **_):
    return op.Sqrt(x)


RULE = pattern.RewriteRule(_pattern, _rewrite, _check, name="NarrowExactSqrt")
