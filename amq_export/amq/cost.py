"""The BOPs cost model (DESIGN item 3).

A row at ``b`` activation bits through a layer with ``in x out`` weights at ``w`` bits costs
``in * out * w * b`` bit-operations. Counts are Python ints, so they are exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

FLOAT_BITS = 16
AUX_BITS = 8

FloatLayer = tuple[str, str, int, int]  # (name, domain, in_features, out_features)


@dataclass(frozen=True)
class LayerCost:
    """A quantized Linear layer: its input rows are the rows of ``domain`` (node, edge or cluster); each row
    runs at its allocated bits plus ``offset`` (``AMQConfig.layer_offsets``)."""

    name: str
    domain: str
    in_features: int
    out_features: int
    weight_bits: int
    offset: int = 0

    @property
    def macs_per_row(self) -> int:
        return self.in_features * self.out_features


def aux_bops(macs: int) -> int:
    """BOPs of the auxiliary model, which runs at 8-bit weights and activations."""
    return macs * AUX_BITS * AUX_BITS


def bops(layers: Iterable[LayerCost], rows_bits: Mapping[str, Tensor], float_layers: Iterable[FloatLayer] = (),
         rows: Mapping[str, int] | None = None, aux_macs: int = 0) -> dict[str, float]:
    """Cost of one forward pass.

    ``rows_bits[domain]`` holds the activation bit-width of every row of that domain; ``rows[domain]``
    the row count of domains used by float layers (defaults to the lengths in ``rows_bits``).
    Returns ``quantized_bops`` and ``quantized_macs`` of the quantized layers, ``float_bops`` of the
    float layers (16 x 16 bits, the same for every method), ``aux_bops`` (``aux_macs`` at 8 x 8 bits),
    ``bops`` (the sum of all three) and two effective bit-widths:
    ``b_eff = quantized_bops / sum(weight_bits * MACs)`` over the quantized layers only (float layers
    and the auxiliary model do not enter it, so a uniform b-bit model has ``b_eff == b``), and
    ``b_charged``, the same with ``aux_bops`` added to the numerator: the quantity the budget bounds.
    Both are NaN when no layer is quantized.
    """
    bit_sums = {domain: int(bits.sum()) for domain, bits in rows_bits.items()}
    row_counts = {domain: bits.numel() for domain, bits in rows_bits.items()}
    for domain, count in (rows or {}).items():
        if row_counts.setdefault(domain, count) != count:
            raise ValueError(f"rows[{domain!r}] = {count} but rows_bits[{domain!r}] has {row_counts[domain]} rows")
    quantized_bops = quantized_macs = weighted_macs = 0
    for layer in layers:
        if layer.domain not in bit_sums:
            raise ValueError(f"no row bit-widths for domain {layer.domain!r} of layer {layer.name!r}")
        macs = layer.macs_per_row * row_counts[layer.domain]
        quantized_bops += layer.weight_bits * (layer.macs_per_row * bit_sums[layer.domain] + macs * layer.offset)
        quantized_macs += macs
        weighted_macs += macs * layer.weight_bits
    float_bops = 0
    for name, domain, in_features, out_features in float_layers:
        if domain not in row_counts:
            raise ValueError(f"no row count for domain {domain!r} of float layer {name!r}")
        float_bops += in_features * out_features * row_counts[domain] * FLOAT_BITS * FLOAT_BITS
    extra = aux_bops(aux_macs)
    nan = float("nan")
    return {
        "bops": quantized_bops + float_bops + extra,
        "quantized_bops": quantized_bops,
        "quantized_macs": quantized_macs,
        "float_bops": float_bops,
        "aux_bops": extra,
        "b_eff": quantized_bops / weighted_macs if weighted_macs else nan,
        "b_charged": (quantized_bops + extra) / weighted_macs if weighted_macs else nan,
    }
