"""``AMQConfig``: every knob of Adaptive Mesh Quantization in one small, serialisable dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from amq_export.amq.allocation import EDGE_RULES, default_bits, validate_bits
from amq_export.amq.bit_state import DOMAINS
from amq_export.errors import AMQError

AUX_TARGETS = ("sensitivity", "gauss-newton", "error", "deviation")
OTHER = "other"  # rows of no domain: the layer stays float
LAYER_DOMAINS = (*DOMAINS, OTHER)


def check_weight_bits(weight_bits: object) -> int:
    """One per-channel weight bit-width for the model: an integer in 2..8."""
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not 2 <= weight_bits <= 8:
        raise AMQError(f"weight_bits must be an integer in 2..8, got {weight_bits!r}")
    return weight_bits


def check_layer_offsets(offsets: dict[str, int], bits: tuple[int, ...]) -> dict[str, int]:
    """Layer name -> integer offset such that every shifted bit option stays in 2..8."""
    bad = {name: o for name, o in offsets.items()
           if isinstance(o, bool) or not isinstance(o, int) or not (2 <= bits[0] + o and bits[-1] + o <= 8)}
    if bad:
        raise AMQError(f"layer offsets {bad} are not integers keeping the bit options {list(bits)} inside 2..8: "
                       f"use offsets in {2 - bits[0]}..{8 - bits[-1]} for these options")
    return offsets


def check_domain_overrides(overrides: dict[str, str]) -> dict[str, str]:
    """Module-name glob -> node|edge|cluster|other."""
    bad = {p: d for p, d in overrides.items() if d not in LAYER_DOMAINS}
    if bad:
        raise AMQError(f"domain overrides {bad} name unknown domains; use one of {list(LAYER_DOMAINS)}")
    return overrides


@dataclass(frozen=True)
class AMQConfig:
    """How a float mesh model is quantized.

    budget: target effective activation bit-width (DESIGN items 3-4), between the lowest and
        highest option. bits: activation options (default: a window around the budget,
        ``default_bits``). weight_bits: one per-channel weight bit-width for the model.
        per_bucket_weight_bits: bucket b also quantizes weights at b bits (a grouped GEMM).
        edge_rule: edges take the bits of their target, source or the max of both.
        aux_*: the auxiliary GNN's size and what it learns to predict (DESIGN item 5): ``sensitivity``
            (the loss gradient's, from the QAT backward itself), ``gauss-newton`` (one Hutchinson probe
            of the prediction per step, one more backward), or the ablations ``error``, ``deviation``.
        domain_overrides: module-name glob -> node|edge|cluster|other, applied after probing.
        layer_offsets: layer name -> bits added to every row of that layer (its bucket k runs at
            ``bits[k] + offset``; see ``choose_layer_offsets``): a static per-layer profile under the per-item
            allocation, as a layer-wise method would give. Every shifted option must stay in 2..8.
    """

    budget: float = 4.0
    bits: tuple[int, ...] | None = None
    weight_bits: int = 8
    per_bucket_weight_bits: bool = False
    edge_rule: str = "target"
    aux_hidden: int = 16
    aux_layers: int = 3
    aux_target: str = "sensitivity"
    domain_overrides: dict[str, str] = field(default_factory=dict)
    layer_offsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.budget, (int, float)) or not math.isfinite(self.budget):
            raise AMQError(f"budget must be a finite number of bits, got {self.budget!r}")
        bits = validate_bits(self.bits) if self.bits is not None else default_bits(self.budget)
        object.__setattr__(self, "bits", bits)
        if not bits[0] <= self.budget <= bits[-1]:
            raise AMQError(
                f"budget {self.budget:g} lies outside the bit options {list(bits)}; choose a budget in "
                f"[{bits[0]}, {bits[-1]}] or options around it, e.g. --bits {','.join(map(str, default_bits(min(max(self.budget, 2), 8))))}"
            )
        check_weight_bits(self.weight_bits)
        if self.edge_rule not in EDGE_RULES:
            raise AMQError(f"edge_rule must be one of {EDGE_RULES}, got {self.edge_rule!r}")
        if self.aux_target not in AUX_TARGETS:
            raise AMQError(f"aux_target must be one of {AUX_TARGETS}, got {self.aux_target!r}")
        check_domain_overrides(self.domain_overrides)
        check_layer_offsets(self.layer_offsets, bits)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bits"] = list(self.bits)
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> AMQConfig:
        try:
            return cls(**{**state, "bits": tuple(state["bits"]) if state.get("bits") is not None else None})
        except TypeError as exc:
            raise AMQError(f"malformed AMQ config ({exc}); re-create the quantized checkpoint") from None
