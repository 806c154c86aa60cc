"""The bucketed integer Linear that an exported AMQ model runs (DESIGN item 8).

Numerics only: every input row ``r`` belongs to bucket ``k_r`` and is quantized with that bucket's
scale, zero point and range, ``q_r = clamp(round(x_r / s_k + z_k), 0, qmax_k)`` (the order of
operations of Brevitas' activation quantizers, so the two agree bit for bit); all rows then share one
int8 weight with per-output-channel scales ``t``:

    y_r = s_k * t * (q_r - z_k) @ W_int^T + bias

computed as one integer GEMM ``q @ W_int^T`` with a per-row scale and a zero-point correction
``s_k z_k * colsum(W_int)``. ``torch.ops.amq.bucketed_linear`` is this computation as a custom op,
so that ``torch.export`` keeps it as one node; ``amq_export.export`` lowers that node to ONNX
integer kernels. :class:`BucketedIntLinear` packs a trained ``AdaptiveQuantLinear`` into it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from amq_export.errors import AMQError


@torch.library.custom_op("amq::bucketed_linear", mutates_args=())
def bucketed_linear(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
                    weight_int_t: Tensor, weight_scale: Tensor, weight_colsum: Tensor, bias: Tensor,
                    clip: bool = True) -> Tensor:
    """``x`` [R, in] float, ``row_bucket`` [R] int64 in 0..K-1, per-bucket ``act_*`` [K] float,
    ``weight_int_t`` [in, out] int8 (the transposed integer weight), ``weight_scale`` [out] float,
    ``weight_colsum`` [out] = ``weight_scale * sum_in W_int`` (for the zero points), ``bias`` [out] -> [R, out].
    ``clip=False`` promises that every bucket spans the whole uint8 range (8 bits), so saturating to
    0..255 is the clamp and the lowered graph needs no clipping pass."""
    scale = act_scale.index_select(0, row_bucket).unsqueeze(1)
    zero_point = act_zero_point.index_select(0, row_bucket).unsqueeze(1)
    qmax = act_qmax.index_select(0, row_bucket).unsqueeze(1)
    q = torch.minimum(torch.round(x / scale + zero_point).clamp_min(0.0), qmax)
    # The integer GEMM emulated in float: every partial sum is an integer of magnitude <= 255 * 128 * in,
    # exact in float32 (any summation order) while that stays below 2^24, and in float64 beyond.
    exact = torch.float32 if 255 * 128 * x.shape[1] < 2**24 else torch.float64
    acc = (q.to(exact) @ weight_int_t.to(exact)).float()
    correction = (scale * zero_point) * weight_colsum
    return acc * weight_scale * scale - correction + bias  # the order of ONNX Runtime's MatMulIntegerToFloat


@bucketed_linear.register_fake
def _(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
      weight_int_t: Tensor, weight_scale: Tensor, weight_colsum: Tensor, bias: Tensor, clip: bool = True) -> Tensor:
    return x.new_empty(x.shape[0], weight_int_t.shape[1])


class IntegerForm(NamedTuple):
    """A trained ``AdaptiveQuantLinear`` as the integers and scales ``bucketed_linear`` takes."""

    act_scale: Tensor  # [K]
    act_zero_point: Tensor  # [K]
    act_qmax: Tensor  # [K]
    weight_int_t: Tensor  # [in, out] int8
    weight_scale: Tensor  # [out]
    weight_colsum: Tensor  # [out]
    bias: Tensor  # [out]

    @property
    def clip(self) -> bool:
        """Whether some bucket is narrower than 8 bits (its top must be clamped below 255)."""
        return bool((self.act_qmax < 255).any())

    def __call__(self, rows: Tensor, row_bucket: Tensor) -> Tensor:
        """``rows`` [R, in] with bucket indices ``row_bucket`` [R] -> [R, out]."""
        return torch.ops.amq.bucketed_linear(rows, row_bucket, *self, self.clip)


def integer_form(layer: Any) -> IntegerForm:
    """Freeze ``layer`` (an ``AdaptiveQuantLinear``) into its integer form; AMQError where that does not exist
    (per-bucket weight bit-widths, signed or wider-than-8-bit activations, non-integer zero points)."""
    if layer.per_bucket_weight_bits:
        raise AMQError(f"layer {layer.name!r} uses per-bucket weight bit-widths (a grouped GEMM), which "
                       "cannot be exported yet: quantize with per_bucket_weight_bits=False")
    params = layer.act_quant_params()
    for p in params:
        if float(p.qmin) != 0.0 or float(p.qmax) > 255:
            raise AMQError(f"layer {layer.name!r}: activation quantizers must be unsigned 2..8 bit "
                           f"(range 0..255), got {float(p.qmin):g}..{float(p.qmax):g}")
        if float(p.zero_point) != round(float(p.zero_point)):
            raise AMQError(f"layer {layer.name!r}: activation zero point {float(p.zero_point)} is not an integer")
    weight = layer.weight_quant_params()
    if float(weight.bit_width) > 8:
        raise AMQError(f"layer {layer.name!r}: weights at {float(weight.bit_width):g} bits do not fit int8")

    def stack(values: Any) -> Tensor:
        return torch.stack([v.reshape(()).float() for v in values])

    weight_int = weight.int_weight.round().to(torch.int8)
    weight_scale = weight.scale.reshape(-1).float().expand(layer.out_features).clone()
    bias = layer.bias
    return IntegerForm(
        stack(p.scale for p in params), stack(p.zero_point for p in params), stack(p.qmax for p in params),
        weight_int.t().contiguous(), weight_scale, weight_int.float().sum(1) * weight_scale,
        bias.detach().float().clone() if bias is not None else torch.zeros(layer.out_features),
    )


class BucketedIntLinear(nn.Module):
    """An ``AdaptiveQuantLinear`` frozen into integer form; reads its rows' buckets from ``buckets[domain]``.

    ``buckets`` is a dict shared by all layers of one model (the inference wrapper fills it before
    the main model runs), so the main model's code stays as it is.
    """

    def __init__(self, layer: Any, buckets: dict[str, Tensor]) -> None:
        super().__init__()
        self.name, self.domain = layer.name, layer.domain
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.buckets = buckets
        form = integer_form(layer)
        for name, value in form._asdict().items():
            self.register_buffer(name, value)
        self.clip = form.clip  # a Python bool now: traced graphs cannot branch on buffer values

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = torch.ops.amq.bucketed_linear(x.reshape(-1, self.in_features), self.buckets[self.domain],
                                          *(getattr(self, name) for name in IntegerForm._fields), self.clip)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.name!r}, domain={self.domain}, in={self.in_features}, out={self.out_features}"
