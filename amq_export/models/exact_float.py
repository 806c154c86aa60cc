"""Float computations written so that PyTorch and ONNX Runtime round them alike.

A quantized model turns every last-bit difference between PyTorch's kernels and ONNX Runtime's that lands
on a rounding boundary of the next quantizer into a whole quantization step. Where a float computation
feeds quantized Linears and the two runtimes' kernels disagree often, it is written here in a form both
evaluate to the same float32 (measured; see each function). ``narrow_exact_sqrt`` (``passes/onnx``) and
MP-PDE's instance norm (a float64 root) follow the same idea.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cos_sin(a: Tensor) -> tuple[Tensor, Tensor]:
    """``(cos(a), sin(a))`` taken in float64 and rounded once: float32 ``cos`` / ``sin`` differ between
    PyTorch and ONNX Runtime on 13-17% of GraphViT's positional-code arguments (both a few percent off the
    correctly rounded value); the float64 results round to the same float32 in both (no difference in 1.6M
    arguments)."""
    wide = a.double()
    return torch.cos(wide).to(a.dtype), torch.sin(wide).to(a.dtype)
