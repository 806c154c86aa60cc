"""The bucketed integer Linear that an exported AMQ model runs (DESIGN item 8).

Numerics only: every input row ``r`` belongs to bucket ``k_r`` and is quantized with that bucket's
scale, zero point and range, ``q_r = clamp(round(x_r / s_k) + z_k, 0, qmax_k)``: the order of ONNX
``QuantizeLinear``, so that the exported model computes the same integers. (Brevitas' fake quantization,
which QAT trains with, rounds ``x / s + z``: the same integer wherever the float32 sum ``x / s + z`` is
exact, and one step apart where rounding that sum carries ``x / s`` across a half, a few rows in a million;
those few flipped roundings were most of the exported model's difference from PyTorch.) All rows then
share one int8 weight with per-output-channel scales ``t``:

    y_r = ((q_r - z_k) @ W_int^T) * (t * s_k) + bias

computed as one exact integer GEMM of the centered integers ``(q - z) @ W_int^T``, times the bucket's
per-column scale ``t * s_k``, plus the bias. ``torch.ops.amq.bucketed_linear`` is this computation as a custom op,
so that ``torch.export`` keeps it as one node; ``amq_export.export`` lowers that node to ONNX
integer kernels. :class:`BucketedIntLinear` runs a trained ``AdaptiveQuantLinear`` frozen into it (``integer_form``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from amq_export.errors import AMQError
from amq_export.models.gathered_linear import gathered_rows

# Inner-dimension block whose integer GEMM float32 computes exactly: every partial sum is an integer of
# magnitude <= 255 * 128 * columns, below 2^24.
EXACT_FLOAT32_COLUMNS = (2**24 - 1) // (255 * 128)


def _centered(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor,
              act_qmax: Tensor) -> Tensor:
    """The integers ``clamp(round(x / s) + z, 0, qmax) - z`` of every row at its bucket (as floats)."""
    scale = act_scale.index_select(0, row_bucket).unsqueeze(1)
    zero_point = act_zero_point.index_select(0, row_bucket).unsqueeze(1)
    qmax = act_qmax.index_select(0, row_bucket).unsqueeze(1)
    q = x / scale  # then in place: mesh-sized temporaries cost more in page faults than in arithmetic
    q.round_().add_(zero_point).clamp_min_(0.0)
    return torch.minimum(q, qmax, out=q).sub_(zero_point)


def _scaled_gemm(centered: Tensor, row_bucket: Tensor, act_scale: Tensor, weight_int_t: Tensor,
                 weight_scale: Tensor, bias: Tensor) -> Tensor:
    """``(centered @ W_int) * (t * s_row) + bias`` with the integer GEMM exact: float32 on blocks of at most
    ``EXACT_FLOAT32_COLUMNS`` inputs, blocks summed in float64 (exact too) and rounded once. ``t * s_k`` is
    one per-column scale per bucket, the order of ONNX Runtime's ``MatMulIntegerToFloat`` with a scalar
    activation scale, so that each bucket's segment runs as one such kernel, bias included."""
    weight = weight_int_t.float()
    columns = centered.shape[1]
    if columns <= EXACT_FLOAT32_COLUMNS:
        acc = centered @ weight
    else:
        acc = sum((centered[:, i:i + EXACT_FLOAT32_COLUMNS] @ weight[i:i + EXACT_FLOAT32_COLUMNS]).double()
                  for i in range(0, columns, EXACT_FLOAT32_COLUMNS)).float()
    scales = act_scale.unsqueeze(1) * weight_scale  # [K, out]: t * s_k, rounded once
    return acc.mul_(scales[0] if len(scales) == 1 else scales.index_select(0, row_bucket)).add_(bias)


@torch.library.custom_op("amq::bucketed_linear", mutates_args=())
def bucketed_linear(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
                    weight_int_t: Tensor, weight_scale: Tensor, bias: Tensor, clip: Sequence[bool],
                    shared_zero_point: int, bucket_counts: Tensor | None = None) -> Tensor:
    """``x`` [R, in] float, ``row_bucket`` [R] int64 in 0..K-1, per-bucket ``act_*`` [K] float,
    ``weight_int_t`` [in, out] int8 (the transposed integer weight), ``weight_scale`` [out] float,
    ``bias`` [out] -> [R, out].

    The arguments after the tensors tell the lowering what it may leave out or do faster; the numbers do
    not depend on them. ``clip[k]=False`` promises that bucket ``k`` spans the whole uint8 range (8 bits),
    so saturating to 0..255 is its clamp. ``shared_zero_point`` ``Z >= 0`` promises that every bucket's
    integer range, shifted to ``Z``, ``[Z - z_k, Z - z_k + qmax_k]``, fits in 0..255: then all rows
    quantize with the one zero point ``Z`` and the GEMM takes it as a scalar (``-1``: no such ``Z``).
    ``bucket_counts`` [K] promises that the rows are sorted by bucket, bucket ``k`` being the next
    ``bucket_counts[k]`` rows: then each bucket's contiguous segment is quantized and multiplied with
    scalar parameters (vectorised kernels) instead of every row with its own (``None``: rows in any order)."""
    centered = _centered(x, row_bucket, act_scale, act_zero_point, act_qmax)
    return _scaled_gemm(centered, row_bucket, act_scale, weight_int_t, weight_scale, bias)


@bucketed_linear.register_fake
def _(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
      weight_int_t: Tensor, weight_scale: Tensor, bias: Tensor, clip: Sequence[bool],
      shared_zero_point: int, bucket_counts: Tensor | None = None) -> Tensor:
    return x.new_empty(x.shape[0], weight_int_t.shape[1])


@torch.library.custom_op("amq::quantize_rows", mutates_args=())
def quantize_rows(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
                  clip: Sequence[bool], shared_zero_point: int, bucket_counts: Tensor | None = None) -> Tensor:
    """The first half of ``bucketed_linear`` where ``shared_zero_point`` ``Z >= 0``: every row's integers
    shifted to ``Z``, uint8 [R, in]."""
    return (_centered(x, row_bucket, act_scale, act_zero_point, act_qmax) + shared_zero_point).to(torch.uint8)


@quantize_rows.register_fake
def _(x: Tensor, row_bucket: Tensor, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
      clip: Sequence[bool], shared_zero_point: int, bucket_counts: Tensor | None = None) -> Tensor:
    return x.new_empty(x.shape, dtype=torch.uint8)


@torch.library.custom_op("amq::quantize_bucket", mutates_args=())
def quantize_bucket(x: Tensor, bucket: int, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
                    clip: Sequence[bool], shared_zero_point: int) -> Tensor:
    """``quantize_rows`` with every row in bucket ``bucket``: one scale, one range (scalar kernels)."""
    row_bucket = torch.full((x.shape[0],), bucket, dtype=torch.long, device=x.device)
    return quantize_rows(x, row_bucket, act_scale, act_zero_point, act_qmax, clip, shared_zero_point)


@quantize_bucket.register_fake
def _(x: Tensor, bucket: int, act_scale: Tensor, act_zero_point: Tensor, act_qmax: Tensor,
      clip: Sequence[bool], shared_zero_point: int) -> Tensor:
    return x.new_empty(x.shape, dtype=torch.uint8)


@torch.library.custom_op("amq::int_linear", mutates_args=())
def int_linear(q: Tensor, row_bucket: Tensor, act_scale: Tensor, weight_int_t: Tensor, weight_scale: Tensor,
               bias: Tensor, shared_zero_point: int, bucket_counts: Tensor | None = None) -> Tensor:
    """The second half: the GEMM of ``quantize_rows``' uint8 rows around ``Z``, scaled, plus the bias."""
    return _scaled_gemm(q.float().sub_(shared_zero_point), row_bucket, act_scale, weight_int_t, weight_scale, bias)


@int_linear.register_fake
def _(q: Tensor, row_bucket: Tensor, act_scale: Tensor, weight_int_t: Tensor, weight_scale: Tensor,
      bias: Tensor, shared_zero_point: int, bucket_counts: Tensor | None = None) -> Tensor:
    return q.new_empty(q.shape[0], weight_int_t.shape[1], dtype=torch.float32)


@torch.library.custom_op("amq::gather_bucket_rows", mutates_args=())
def gather_bucket_rows(tables: list[Tensor], index: Tensor, row_bucket: Tensor,
                       bucket_counts: Tensor | None = None) -> Tensor:
    """Row ``r`` is ``tables[row_bucket[r]][index[r]]`` (K tables of the same shape [N, F]: the node rows
    quantized at every bucket). ``bucket_counts`` as in ``bucketed_linear``: then segment ``k`` gathers from
    table ``k`` alone, and the tables are never concatenated (here as in the lowering)."""
    if bucket_counts is not None:
        parts = index.split(bucket_counts.tolist())
        return torch.cat([table.index_select(0, part) for table, part in zip(tables, parts, strict=True)])
    return torch.cat(tables).index_select(0, row_bucket * tables[0].shape[0] + index)


@gather_bucket_rows.register_fake
def _(tables: list[Tensor], index: Tensor, row_bucket: Tensor, bucket_counts: Tensor | None = None) -> Tensor:
    return tables[0].new_empty(index.shape[0], *tables[0].shape[1:])


class IntegerForm(NamedTuple):
    """A trained ``AdaptiveQuantLinear`` as the integers and scales ``bucketed_linear`` takes."""

    act_scale: Tensor  # [K]
    act_zero_point: Tensor  # [K]
    act_qmax: Tensor  # [K]
    weight_int_t: Tensor  # [in, out] int8
    weight_scale: Tensor  # [out]
    bias: Tensor  # [out]

    @property
    def clip(self) -> tuple[bool, ...]:
        """Which buckets are narrower than 8 bits (their ranges must be clamped inside 0..255)."""
        return tuple(bool(q < 255) for q in self.act_qmax)

    @property
    def shared_zero_point(self) -> int:
        """The one uint8 zero point every bucket can be shifted to (see ``bucketed_linear``), or -1.

        The widest zero point is the only candidate (no bucket may start below 0); it fails only where
        a narrow bucket's range, shifted up to it, would pass 255."""
        shared = int(self.act_zero_point.max())
        fits = (shared - self.act_zero_point + self.act_qmax <= 255).all()
        return shared if bool(fits) else -1

    def flags(self) -> tuple[tuple[bool, ...], int]:
        """``(clip, shared_zero_point)``: the arguments ``bucketed_linear`` takes after the tensors."""
        return self.clip, self.shared_zero_point

    def __call__(self, rows: Tensor, row_bucket: Tensor) -> Tensor:
        """``rows`` [R, in] with bucket indices ``row_bucket`` [R] -> [R, out]."""
        return torch.ops.amq.bucketed_linear(rows, row_bucket, *self, *self.flags())


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
        weight_int.t().contiguous(), weight_scale,
        bias.detach().float().clone() if bias is not None else torch.zeros(layer.out_features),
    )


def gathered_int_linear(form: IntegerForm, flags: tuple[tuple[bool, ...], int], row_bucket: Tensor, h: Tensor,
                        indices: Sequence[Tensor], rest: Tensor | None, bucket_counts: Tensor | None = None) -> Tensor:
    """``form`` on the rows ``cat([h[i] for i in indices] + [rest], -1)`` (bucket ``row_bucket[r]``), the same
    numbers computed in another order: ``h``'s N rows are quantized once per bucket and every row takes its
    bucket's copy of ``h[i]``, so the E-row gathers and the concatenation move uint8 instead of floats.
    Needs one shared zero point (``flags``; else the plain way). ``bucket_counts`` as in ``bucketed_linear``."""
    clip, shared = flags
    if shared < 0:
        return torch.ops.amq.bucketed_linear(gathered_rows(h, indices, rest), row_bucket, *form, *flags,
                                             bucket_counts=bucket_counts)
    act = (form.act_scale, form.act_zero_point, form.act_qmax)
    tables = [torch.ops.amq.quantize_bucket(h, k, *act, clip, shared) for k in range(form.act_scale.shape[0])]
    parts = [torch.ops.amq.gather_bucket_rows(tables, index, row_bucket, bucket_counts) for index in indices]
    if rest is not None:
        parts.append(torch.ops.amq.quantize_rows(rest, row_bucket, *act, clip, shared, bucket_counts=bucket_counts))
    rows = torch.cat(parts, dim=-1)
    return torch.ops.amq.int_linear(rows, row_bucket, form.act_scale, form.weight_int_t, form.weight_scale,
                                    form.bias, shared, bucket_counts=bucket_counts)


def counts_key(domain: str) -> str:
    """Where ``BucketedIntLinear``'s ``buckets`` dict holds a domain's bucket sizes (rows sorted by bucket)."""
    return f"{domain}_counts"


class BucketedIntLinear(nn.Module):
    """A Linear in integer form (an ``AdaptiveQuantLinear`` frozen by ``integer_form``); reads its rows'
    buckets from ``buckets[domain]``, and, where the rows are sorted by bucket, the bucket sizes from
    ``buckets[counts_key(domain)]``.

    ``buckets`` is a dict shared by all layers of one model (the inference wrapper fills it before
    the main model runs), so the main model's code stays as it is.
    """

    def __init__(self, form: IntegerForm, buckets: dict[str, Tensor], name: str, domain: str) -> None:
        super().__init__()
        self.name, self.domain = name, domain
        self.in_features, self.out_features = form.weight_int_t.shape
        self.buckets = buckets
        for field, value in form._asdict().items():
            self.register_buffer(field, value)
        self.flags = form.flags()  # Python values now: traced graphs cannot branch on buffer values

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = torch.ops.amq.bucketed_linear(x.reshape(-1, self.in_features), self.buckets[self.domain],
                                          *(getattr(self, name) for name in IntegerForm._fields), *self.flags,
                                          bucket_counts=self.buckets.get(counts_key(self.domain)))
        return y.reshape(*lead, self.out_features)

    def gathered(self, h: Tensor, indices: Sequence[Tensor], rest: Tensor | None) -> Tensor:
        """``self(cat([h[i] for i in indices] + [rest], -1))`` (``models.gathered_linear``): ``gathered_int_linear``."""
        form = IntegerForm(*(getattr(self, name) for name in IntegerForm._fields))
        return gathered_int_linear(form, self.flags, self.buckets[self.domain], h, indices, rest,
                                   self.buckets.get(counts_key(self.domain)))

    def extra_repr(self) -> str:
        return f"{self.name!r}, domain={self.domain}, in={self.in_features}, out={self.out_features}"
