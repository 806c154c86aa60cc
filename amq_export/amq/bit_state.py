"""The state one AMQ model's quantized layers share for a forward/backward pass.

The wrapper writes the per-row bit-widths of every domain into ``bits`` before the main model
runs; each adaptive quantized layer reads the vector of its own domain (its input rows are that
domain's nodes, edges or clusters, in order). With ``collect`` on, each layer adds its rows'
sensitivities ``||dL/dx_r||^2 * range^2`` (DESIGN item 5) into ``sensitivity[domain]`` during
backward, and its total into ``layer_sensitivity[name]`` (for the per-layer baseline).
``layer_bits`` overrides the rows' bits with one bit-width per layer (that baseline's mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DOMAINS = ("node", "edge", "cluster")


@dataclass
class BitState:
    bits: dict[str, torch.Tensor] = field(default_factory=dict)
    layer_bits: dict[str, int] | None = None
    collect: bool = False
    sensitivity: dict[str, torch.Tensor] = field(default_factory=dict)
    layer_sensitivity: dict[str, float] = field(default_factory=dict)
    # (domain, options) -> (the bits tensor, its rows grouped by bucket), shared by that domain's layers
    bucket_cache: dict = field(default_factory=dict, repr=False)

    def reset_sensitivity(self) -> None:
        self.sensitivity = {}
        self.layer_sensitivity = {}

    def add_sensitivity(self, name: str, domain: str, per_row: torch.Tensor) -> None:
        """Accumulate one layer's per-row sensitivities (called from backward hooks)."""
        per_row = per_row.detach()
        if domain in self.sensitivity:
            self.sensitivity[domain] = self.sensitivity[domain] + per_row
        else:
            self.sensitivity[domain] = per_row
        self.layer_sensitivity[name] = self.layer_sensitivity.get(name, 0.0) + float(per_row.sum())
