"""SiLU as ONNX Runtime computes it, so that PyTorch evaluates a quantized model with the artifact's arithmetic.

ONNX Runtime's CPU kernels (``Sigmoid``, and ``QuickGelu``, which its optimizer fuses ``x * Sigmoid(x)`` into)
compute the logistic function with MLAS: the input clamped to [-18, 18], an odd degree-9 polynomial over an
even degree-10 one in ``x^2`` (Eigen's coefficients) evaluated by fused multiply-adds on x86-64 with FMA3,
plus 0.5, clamped to [0, 1]. PyTorch's ``sigmoid`` differs from it in the last bit on most inputs (64% of 6M
normal and uniform samples, measured), and a quantized model turns each ulp that lands on a rounding
boundary of the next layer into a whole quantization step: with PyTorch's SiLU an MP-PDE AMQ model differed
from its ONNX Runtime artifact by 1.9e-3 relative L2, the same model with ReLU in its place not at all.

``runtime_logistic`` evaluates the same operations; each fused multiply-add as an exact float64 product
plus one float64 rounding and one float32 rounding, which equals the single rounding of an FMA except when
the float64 sum falls on a float32 half-way point (about one value in 2^29). On 6M samples it matched ONNX
Runtime 1.32's ``Sigmoid`` on all but one value and its fused SiLU on all. On CPUs without FMA3 ONNX
Runtime uses separate multiplies and adds, and the PyTorch numbers are again an ulp away here and there.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amq_export.amq.quant_linear import on_every_module

LOGISTIC_RANGE = 18.0
NUMERATOR = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
             2.48287947061529e-01)  # x^9, x^7, x^5, x^3, x (in x^2: Horner from the highest power)
DENOMINATOR = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
               1.16817656904453e-01, 9.93151921023180e-01)  # x^10, x^8, ..., 1


def _f32(value: float) -> float:
    """The float32 constant MLAS holds, as a Python float."""
    return float(torch.tensor(value, dtype=torch.float32))


_NUMERATOR32, _DENOMINATOR32 = (tuple(_f32(c) for c in cs) for cs in (NUMERATOR, DENOMINATOR))


def _horner(x2: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """``((c0 x2 + c1) x2 + c2) ...`` in float32, each step one fused multiply-add: the float64 product of
    two float32 values is exact, so the float64 sum rounded once to float32 is the FMA."""
    x2 = x2.double()
    acc = (x2 * coefficients[0]).add_(coefficients[1])
    for c in coefficients[2:]:
        acc = acc.float().double().mul_(x2).add_(c)
    return acc.float()


def runtime_logistic(x: Tensor) -> Tensor:
    """``sigmoid(x)`` (float32) as ONNX Runtime's CPU kernel computes it (module docstring)."""
    v = x.clamp(-LOGISTIC_RANGE, LOGISTIC_RANGE)
    v2 = v * v
    p = _horner(v2, _NUMERATOR32) * v
    q = _horner(v2, _DENOMINATOR32)
    return (p / q + 0.5).clamp(0.0, 1.0)


@torch.library.custom_op("amq::runtime_silu", mutates_args=())
def runtime_silu(x: Tensor) -> Tensor:
    """``x * sigmoid(x)`` with ONNX Runtime's logistic; exported as ``Mul(x, Sigmoid(x))``."""
    return x * runtime_logistic(x)


@runtime_silu.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class RuntimeSiLU(nn.Module):
    """``nn.SiLU`` in a quantized model: PyTorch's SiLU, or ONNX Runtime's inside ``runtime_activations``
    (in evaluation only: under autograd or in training it stays PyTorch's). The emulation costs about 100x
    PyTorch's kernel (float64 steps), twice the evaluation time of an MP-PDE mesh (87 against 38 ms,
    1024 nodes), so it is used where the bits matter: checking an artifact against PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.exact = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.exact or self.training or torch.is_grad_enabled():
            return F.silu(x)
        return torch.ops.amq.runtime_silu(x)


def runtime_activations(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Inside, ``model``'s ``RuntimeSiLU`` modules compute ONNX Runtime's SiLU (evaluation only): with the integer
    Linears, PyTorch then evaluates a quantized model with the arithmetic of its ONNX Runtime artifact."""
    return on_every_module(model, "exact", True, kind=RuntimeSiLU)
