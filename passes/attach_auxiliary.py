"""Wrap the quantized main model with the auxiliary GNN and the allocator into an ``AMQModel``."""

from __future__ import annotations

from torch import nn

from amq_export.amq.auxiliary import AuxiliaryGNN
from amq_export.amq.model import AMQModel
from passes.context import PassContext


class AttachAuxiliary:
    """Builds ``ctx.qmodel`` around the model (which stays the same object, now ``qmodel.main``)."""

    name = "attach_auxiliary"
    requires = frozenset({"quantizers"})
    guarantees = frozenset({"auxiliary"})

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]:
        cfg = ctx.amq_config
        has_clusters = any(layer.domain == "cluster" for layer in ctx.layer_costs)
        config = getattr(model, "config", {})
        aux = AuxiliaryGNN(
            in_features=int(config.get("in_features", 1)), spatial_dim=int(config.get("spatial_dim", 2)),
            num_node_types=int(config.get("num_node_types") or 2), hidden=cfg.aux_hidden, layers=cfg.aux_layers,
            cluster_head=has_clusters,
        )
        ctx.qmodel = AMQModel(model, aux, ctx.state, ctx.layer_costs, ctx.float_layers, cfg)
        params = sum(p.numel() for p in aux.parameters())
        items = "nodes and clusters" if has_clusters else "nodes"
        return [(f"auxiliary GNN ({params:,} parameters, hidden {cfg.aux_hidden}) scores {items}; "
                f"budget {cfg.budget:g} bits over options {list(cfg.bits)}, edges follow the {cfg.edge_rule}")]
