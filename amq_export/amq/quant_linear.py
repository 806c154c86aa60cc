"""The adaptive quantized Linear layer: one weight quantizer, one activation quantizer per bit option.

DESIGN item 2: every input row ``r`` of the layer (a node, edge or cluster of its domain) is quantized
at its own bit-width ``b_r`` with the learned scale (and zero point) of bucket ``b_r``, then all rows
share one per-channel quantized weight: ``Y = Q_{b_r}(x_r) @ Q_w(W)^T + bias``.

The activation quantizers are unsigned with a zero point (Brevitas ``ShiftedUint8ActPerTensorFloat``
at the bucket's bit-width): the inputs are mostly Swish/ReLU outputs (min -0.28 or 0) with some
normalised features and LayerNorm outputs, and a signed symmetric grid wastes most of its negative
half on them. Measured on Swish(2z), z ~ N(0, 1), relative quantization MSE after Brevitas' default
percentile calibration, 3/4/6 bits: unsigned with zero point 0.061/0.026/0.0011, signed symmetric
0.139/0.048/0.0036 (on a standard Gaussian, signed is 20% lower at 3 bits, equal within 6% at 4 and 6). The ``...MSE`` variants of
both calibrate better (0.034/0.012/0.0008 unsigned) but cost ~0.4 s per million calibration values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, NamedTuple

import torch
from brevitas.function.ops import max_int, min_int
from brevitas.graph.calibrate import calibration_mode as brevitas_calibration_mode
from brevitas.nn import QuantIdentity, QuantLinear
from brevitas.quant import Int8WeightPerChannelFloat, ShiftedUint8ActPerTensorFloat
from torch import Tensor, nn

from amq_export.amq.bit_state import DOMAINS, BitState
from amq_export.amq.bucketed_linear import IntegerForm, gathered_int_linear, integer_form
from amq_export.amq.cost import LayerCost
from amq_export.amq.fake_quant import fuse_activation_quant, row_dot, row_fake_quant
from amq_export.models.gathered_linear import gathered_rows

# Unsigned with a zero point, bit-width overridden per bucket (module docstring says why).
DEFAULT_ACT_QUANT: type = ShiftedUint8ActPerTensorFloat


class ActQuantParams(NamedTuple):
    """One bucket's activation quantizer: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``."""

    bit_width: Tensor
    scale: Tensor
    zero_point: Tensor
    qmin: Tensor
    qmax: Tensor


class WeightQuantParams(NamedTuple):
    """The integer weight [out, in] (int8 container) and its per-output-channel scale [out, 1]."""

    bit_width: Tensor
    int_weight: Tensor
    scale: Tensor


class RowBuckets(NamedTuple):
    """A layer's rows grouped by bucket: ``sizes[k]`` rows at ``bits[k]``, listed bucket by bucket in
    ``order`` (``None`` when one bucket holds every row, so the rows stay where they are)."""

    order: Tensor | None
    sizes: list[int]

    def sort(self, x: Tensor) -> Tensor:
        return x if self.order is None else x.index_select(0, self.order)

    def unsort(self, y: Tensor) -> Tensor:
        return y if self.order is None else y.new_empty(y.shape).index_copy(0, self.order, y)


class _SensitivityTap(torch.autograd.Function):
    """Identity in forward; in backward hands ``dL/dx`` to ``sink`` and passes it through unchanged.

    ``anchor`` is a throw-away tensor that requires grad, so that backward reaches this node even when
    ``x`` does not require grad (the first layer); it gets no gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, anchor: Tensor, sink: Any) -> Tensor:
        ctx.sink = sink
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        ctx.sink(grad)
        return (grad if ctx.needs_input_grad[0] else None), None, None


class AdaptiveQuantLinear(nn.Module):
    """A Linear whose input rows (one ``domain``'s nodes, edges or clusters) carry per-row bit-widths.

    Reads the row bit-widths from ``state.bits[domain]`` (or one bit-width for all rows from
    ``state.layer_bits[name]``) on every forward. With ``state.collect`` on, the backward pass adds
    each row's ``||dL/dx_r||^2 * range^2`` (``x_r`` the quantized input row, ``range`` the input
    range seen in calibration) to ``state.add_sensitivity(name, domain, ...)``.
    ``per_bucket_weight_bits``: bucket ``b`` also uses weights at ``b`` bits (one GEMM per bucket).
    ``offset``: the layer's bucket of rows at option ``b`` quantizes at ``b + offset`` bits (``bank_bits``);
    its rows' sensitivities are weighted by ``4^-offset``, so that the per-item sum stays the first-order loss
    of the item's option (DESIGN item 5).
    """

    def __init__(
        self,
        linear: nn.Module,
        *,
        name: str,
        domain: str,
        bits: tuple[int, ...],
        state: BitState,
        weight_bits: int = 8,
        per_bucket_weight_bits: bool = False,
        act_quant: type = DEFAULT_ACT_QUANT,
        offset: int = 0,
    ) -> None:
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"layer {name!r}: domain {domain!r} is not one of {DOMAINS}")
        if not bits or list(bits) != sorted(set(bits)):
            raise ValueError(f"layer {name!r}: bit options {bits} must be non-empty, sorted and unique")
        weight = linear.weight
        self.out_features, self.in_features = weight.shape
        self.name, self.domain, self.bits, self.state = name, domain, tuple(bits), state
        self.weight_bits, self.per_bucket_weight_bits = weight_bits, per_bucket_weight_bits
        self.offset = int(offset)
        self.bank_bits = tuple(b + self.offset for b in bits)
        if not 2 <= self.bank_bits[0] <= self.bank_bits[-1] <= 8:
            raise ValueError(f"layer {name!r}: options {bits} shifted by {offset} leave 2..8")
        has_bias = linear.bias is not None

        def quant_linear(w_bits: int) -> QuantLinear:
            return QuantLinear(self.in_features, self.out_features, bias=has_bias,
                               weight_quant=Int8WeightPerChannelFloat, weight_bit_width=w_bits)

        first = quant_linear(self.bank_bits[0] if per_bucket_weight_bits else weight_bits)
        with torch.no_grad():
            first.weight.copy_(weight)
            if has_bias:
                first.bias.copy_(linear.bias)
        self.linears = nn.ModuleList([first])
        if per_bucket_weight_bits:
            for b in self.bank_bits[1:]:
                extra = quant_linear(b)
                extra.weight, extra.bias = first.weight, first.bias  # one float weight, K quantizers
                self.linears.append(extra)
        self.act_quants = nn.ModuleList(
            QuantIdentity(act_quant=act_quant, bit_width=b, return_quant_tensor=False) for b in self.bank_bits
        )
        for quant in self.act_quants:  # the same values and gradients in fewer passes (fake_quant.py)
            fuse_activation_quant(quant)
        self.register_buffer("input_min", torch.tensor(float("inf")))
        self.register_buffer("input_max", torch.tensor(float("-inf")))
        self.calibrating = False
        # Eval-mode forwards without autograd use the integer arithmetic of the exported model, where it
        # exists (unsigned activations of <= 8 bits, one weight bit-width): ``integer_eval`` below.
        self.integer_eval = not per_bucket_weight_bits and _unsigned(act_quant)
        self._integer_cache: tuple | None = None
        self.ulp_noise: torch.Generator | None = None  # see ``input_ulp_noise``
        self.to(weight.device)

    @property
    def weight(self) -> Tensor:
        return self.linears[0].weight

    @property
    def bias(self) -> Tensor | None:
        return self.linears[0].bias

    @property
    def macs_per_row(self) -> int:
        return self.in_features * self.out_features

    @property
    def input_range(self) -> Tensor:
        """max - min of the inputs seen during calibration (inf before calibration)."""
        return self.input_max - self.input_min

    def cost(self) -> LayerCost:
        return LayerCost(self.name, self.domain, self.in_features, self.out_features, self.weight_bits, self.offset)

    def extra_repr(self) -> str:
        weights = "per bucket" if self.per_bucket_weight_bits else str(self.weight_bits)
        return (f"{self.name!r}, domain={self.domain}, in={self.in_features}, out={self.out_features}, "
                f"bits={self.bank_bits}, weight_bits={weights}")

    def act_quant_params(self) -> list[ActQuantParams]:
        """Per bucket (in the order of ``bits``): bit-width, scale, zero point, qmin, qmax (detached)."""
        params = []
        for quant in self.act_quants:
            proxy = quant.act_quant
            bit_width = proxy.bit_width().detach()
            signed, narrow = bool(proxy.is_signed), bool(proxy.is_narrow_range)
            params.append(ActQuantParams(
                bit_width, proxy.scale().detach(), proxy.zero_point().detach(),
                min_int(signed, narrow, bit_width), max_int(signed, narrow, bit_width),
            ))
        return params

    def weight_quant_params(self, bucket: int = 0) -> WeightQuantParams:
        """The quantized weight (of ``bucket`` when weights are per bucket)."""
        quant = self.linears[bucket].quant_weight()
        return WeightQuantParams(quant.bit_width.detach(), quant.int().detach(), quant.scale.detach())

    def row_buckets(self, rows: int) -> RowBuckets:
        """Group the ``rows`` input rows by bit-width (``state.layer_bits[name]`` or ``state.bits[domain]``)."""
        layer_bit = self._layer_bit()
        if layer_bit is not None:
            return RowBuckets(None, [rows if option == layer_bit else 0 for option in self.bits])
        bits = self._domain_bits(rows)
        # Every layer of a domain sees the same bits tensor in one forward: group its rows once.
        key = (self.domain, self.bits)
        cached = self.state.bucket_cache.get(key)
        if cached is not None and cached[0] is bits:
            return cached[1]
        indices = [(bits == option).nonzero().squeeze(1) for option in self.bits]
        sizes = [index.numel() for index in indices]
        if sum(sizes) != rows:
            raise ValueError(f"layer {self.name!r}: state.bits[{self.domain!r}] holds values outside the "
                             f"options {self.bits}")
        buckets = RowBuckets(None if rows in sizes else torch.cat(indices), sizes)
        self.state.bucket_cache[key] = (bits, buckets)
        return buckets

    def _layer_bit(self) -> int | None:
        """The one bit-width ``state.layer_bits`` gives this layer, checked (None: rows carry their own)."""
        layer_bits = self.state.layer_bits or {}
        if self.name not in layer_bits:
            return None
        b = layer_bits[self.name]
        if b not in self.bits:
            raise ValueError(f"layer {self.name!r}: layer_bits {b} is not one of its options {self.bits}")
        return b

    def _domain_bits(self, rows: int) -> Tensor:
        """``state.bits[domain]``, checked to hold one bit-width per input row."""
        bits = self.state.bits.get(self.domain)
        if bits is None:
            raise ValueError(f"layer {self.name!r}: state.bits has no row bit-widths for domain {self.domain!r}")
        if bits.dim() != 1 or bits.numel() != rows:
            raise ValueError(f"layer {self.name!r}: state.bits[{self.domain!r}] has shape {tuple(bits.shape)} "
                             f"but the layer's input has {rows} rows")
        return bits

    def quantize_input(self, x: Tensor) -> Tensor:
        """Fake-quantize the rows of ``x`` [R, in], each row with its bucket's quantizer."""
        return row_fake_quant(self.act_quants, x, self.row_bucket_index(x.size(0)))

    def row_bucket_index(self, rows: int) -> Tensor:
        """Bucket index (position in ``bits``) of each of the ``rows`` input rows, int64 [rows]."""
        layer_bit = self._layer_bit()
        if layer_bit is not None:
            return torch.full((rows,), self.bits.index(layer_bit), dtype=torch.int64)
        bits = self._domain_bits(rows)
        key = (self.domain, self.bits, "index")  # every layer of a domain shares it, like row_buckets
        cached = self.state.bucket_cache.get(key)
        if cached is None or cached[0] is not bits:
            options = torch.tensor(self.bits, device=bits.device, dtype=bits.dtype)
            index = torch.searchsorted(options, bits).clamp_max(len(self.bits) - 1)
            if not torch.equal(options.index_select(0, index), bits):
                raise ValueError(f"layer {self.name!r}: state.bits[{self.domain!r}] holds values outside the "
                                 f"options {self.bits}")
            cached = (bits, index)
            self.state.bucket_cache[key] = cached
        return cached[1]

    def integer_form(self) -> tuple[IntegerForm, tuple[bool, int]]:
        """The layer's integer form and its flags (``IntegerForm.flags``), rebuilt only when a parameter or buffer changed
        (an in-place update, an optimizer step or ``load_state_dict``, bumps a tensor's version; a replaced
        tensor has another identity)."""
        version = tuple((id(t), t._version) for t in (*self.parameters(), *self.buffers()))
        if self._integer_cache is None or self._integer_cache[0] != version:
            form = integer_form(self)
            self._integer_cache = (version, form, form.flags())
        return self._integer_cache[1], self._integer_cache[2]

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        if self.calibrating:
            return self._calibration_forward(x).reshape(*lead, self.out_features)
        x = self._nudge(x)
        if self.integer_eval and not self.training and not torch.is_grad_enabled():
            # Evaluation runs the deployed arithmetic (bucketed_linear), not float fake quantization.
            form, flags = self.integer_form()
            y = torch.ops.amq.bucketed_linear(x, self.row_bucket_index(x.size(0)), *form, *flags)
            return y.reshape(*lead, self.out_features)
        if len(self.linears) == 1:  # one weight: every row quantized at its bucket in place, one GEMM
            return self._linear_on_quantized(self.quantize_input(x)).reshape(*lead, self.out_features)
        # Weights per bucket: rows sorted by bucket into contiguous segments, one GEMM each, then unsorted.
        buckets = self.row_buckets(x.size(0))
        xq = _per_chunk(self.act_quants, buckets.sort(x), buckets.sizes)
        if self.state.collect and torch.is_grad_enabled():
            xq = self._tap(xq, buckets)
        return buckets.unsort(_per_chunk(self.linears, xq, buckets.sizes)).reshape(*lead, self.out_features)

    def gathered(self, h: Tensor, indices: Sequence[Tensor], rest: Tensor | None) -> Tensor:
        """``self(cat([h[i] for i in indices] + [rest], -1))`` (``models.gathered_linear``) for QAT: the N node
        rows are fake-quantized once per bucket and every edge row takes its bucket's copies, the same
        values and gradient sums with a K*N-row instead of an E-row quantization of the gathered columns.
        Integer evaluation runs ``gathered_int_linear``; calibration and per-bucket weights take the plain way."""
        if self.calibrating or len(self.linears) > 1:
            return self(gathered_rows(h, indices, rest))
        h, rest = self._nudge(h), (self._nudge(rest) if rest is not None else None)
        row_bucket = self.row_bucket_index(indices[0].numel())
        if self.integer_eval and not self.training and not torch.is_grad_enabled():
            return gathered_int_linear(*self.integer_form(), row_bucket, h, indices, rest)
        n, k = h.size(0), len(self.bits)
        node_bucket = torch.arange(k, device=h.device).repeat_interleave(n)
        per_bucket = row_fake_quant(self.act_quants, h.repeat(k, 1), node_bucket)  # bucket j's rows at j * N
        rest = row_fake_quant(self.act_quants, rest, row_bucket) if rest is not None else None
        return self._linear_on_quantized(gathered_rows(per_bucket, [row_bucket * n + i for i in indices], rest))

    def _nudge(self, x: Tensor) -> Tensor:
        """``x`` with every element one ulp up or down at random while ``ulp_noise`` is set, else ``x``."""
        if self.ulp_noise is None:
            return x
        up = torch.rand(x.shape, generator=self.ulp_noise, device=x.device) < 0.5
        return torch.where(up, torch.nextafter(x, x.new_full((), math.inf)), torch.nextafter(x, x.new_full((), -math.inf)))

    def _linear_on_quantized(self, xq: Tensor) -> Tensor:
        """The (one) quantized weight's GEMM on quantized rows in their own order, tapped for sensitivities."""
        if self.state.collect and torch.is_grad_enabled():
            xq = self._tap(xq, None)
        return self.linears[0](xq)

    def _tap(self, xq: Tensor, buckets: RowBuckets | None) -> Tensor:
        """``xq`` with a backward hook adding its rows' sensitivities (``buckets``: the order ``xq``'s rows are in)."""
        range_sq = float(self.input_range) ** 2 * 4.0 ** -self.offset
        if not math.isfinite(range_sq):
            raise RuntimeError(f"layer {self.name!r} has no calibrated input range; run a few batches "
                               "under calibration_mode(model) before collecting sensitivities")

        def sink(grad: Tensor) -> None:
            if not self.state.collect:  # this backward pass is not the one collecting
                return
            per_row = row_dot(grad, grad).unsqueeze(1) * range_sq
            per_row = (per_row if buckets is None else buckets.unsort(per_row)).squeeze(1)
            self.state.add_sensitivity(self.name, self.domain, per_row)

        anchor = torch.zeros((), device=xq.device, requires_grad=True)
        return _SensitivityTap.apply(xq, anchor, sink)

    def _calibration_forward(self, x: Tensor) -> Tensor:
        """Record the input range and feed every bucket's quantizer all rows (Brevitas observes them)."""
        if x.numel():
            with torch.no_grad():
                self.input_min.copy_(torch.minimum(self.input_min, x.min()))
                self.input_max.copy_(torch.maximum(self.input_max, x.max()))
            for quant in self.act_quants:
                quant(x)
        return self.linears[0](x)


def _unsigned(act_quant: type) -> bool:
    return not getattr(act_quant, "signed", True)


def _per_chunk(modules: nn.ModuleList, x: Tensor, sizes: list[int]) -> Tensor:
    """``modules[k]`` on the k-th segment (``sizes[k]`` rows) of ``x``, concatenated; empty segments skipped."""
    parts = [module(chunk) for module, chunk in zip(modules, x.split(sizes), strict=True) if chunk.size(0)]
    if not parts:
        return modules[0](x)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@contextmanager
def on_every_module(model: nn.Module, attribute: str, value: Any,
                    kind: type[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Inside, every module of ``kind`` (default ``AdaptiveQuantLinear``) in ``model`` has ``attribute`` set to
    ``value``; restored on exit."""
    kind = kind or AdaptiveQuantLinear
    layers = [m for m in model.modules() if isinstance(m, kind)]
    saved = [getattr(layer, attribute) for layer in layers]
    try:
        for layer in layers:
            setattr(layer, attribute, value)
        yield model
    finally:
        for layer, old in zip(layers, saved, strict=True):
            setattr(layer, attribute, old)


def fake_quant_eval(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Inside, evaluation runs the training numerics (float fake quantization) instead of the integer ones."""
    return on_every_module(model, "integer_eval", False)


def input_ulp_noise(model: nn.Module, seed: int = 0) -> AbstractContextManager[nn.Module]:
    """Inside, every quantized layer's input elements are one ulp off, up or down at random.

    Two correct float implementations of the same network (PyTorch's kernels, a runtime's) differ by
    about that much before each quantizer; the prediction's change under this noise is the floor
    against which the exported model's parity with PyTorch can be read (low-bit roundings amplify it).
    """
    return on_every_module(model, "ulp_noise", torch.Generator().manual_seed(seed))


@contextmanager
def calibration_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Forward passes inside run the float model while every ``AdaptiveQuantLinear`` collects statistics.

    On exit each bucket's activation scale and zero point are initialised from the statistics of
    all the layer's rows (averaged over the batches) and become learnable parameters; each layer's
    input range (min/max over all batches) is kept for the sensitivities.
    """
    layers = [m for m in model.modules() if isinstance(m, AdaptiveQuantLinear)]
    with ExitStack() as stack:
        stack.enter_context(brevitas_calibration_mode(model))
        for layer in layers:
            layer.calibrating = True
            stack.callback(setattr, layer, "calibrating", False)
        yield model
