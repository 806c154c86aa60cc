"""Replace every Linear that ``FindDomains`` marked quantized by an ``AdaptiveQuantLinear``, in place."""

from __future__ import annotations

from torch import nn

from amq_export.amq.quant_linear import AdaptiveQuantLinear
from passes.context import PassContext
from passes.find_domains import LINEAR_TYPES


class InsertQuantizers:
    """Swap the marked Linears (setattr on the parent) for adaptive quantized ones sharing ``ctx.state``.

    The model's own forward code is untouched: it calls the new module where it called the Linear.
    """

    name = "insert_quantizers"
    requires = frozenset({"domains"})
    guarantees = frozenset({"quantizers"})

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]:
        changes = []
        for info in ctx.layers:
            if not info.quantized:
                continue
            parent_name, _, attr = info.name.rpartition(".")
            parent = model.get_submodule(parent_name)
            linear = getattr(parent, attr)
            if not isinstance(linear, LINEAR_TYPES):
                raise TypeError(f"{info.name} is a {type(linear).__name__}, not a Linear: run find_domains on "
                                 "the float model right before insert_quantizers")
            layer = AdaptiveQuantLinear(
                linear, name=info.name, domain=info.domain, bits=ctx.bits, state=ctx.state,
                weight_bits=ctx.weight_bits, per_bucket_weight_bits=ctx.per_bucket_weight_bits,
                act_quant=ctx.act_quant, offset=ctx.layer_offsets.get(info.name, 0),
            )
            setattr(parent, attr, layer)
            changes.append(f"{info.name}: {type(linear).__name__}({info.in_features}, {info.out_features}) -> "
                           f"AdaptiveQuantLinear({info.domain}, bits={layer.bank_bits}, {self._weights(ctx)})")
        return changes

    @staticmethod
    def _weights(ctx: PassContext) -> str:
        return "weights at each bucket's bits" if ctx.per_bucket_weight_bits else f"weight_bits={ctx.weight_bits}"
