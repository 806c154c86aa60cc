"""``AMQModel``: a quantized main model, its auxiliary GNN and the allocator, as one module.

``forward(data, budget, mode)`` scores the mesh, allocates bit-widths to its items (two per node: its
own rows and the rows of the edges it owns; and clusters for GraphViT) under the budget, writes the per-row bits of every domain into the shared
``BitState`` and runs the main model with fake quantization. It returns the prediction, the bits
of every node / edge / cluster, and the cost of that run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from amq_export.amq.allocation import allocate_budget, edge_bits, node_item_costs, random_scores
from amq_export.amq.bit_state import DOMAINS, BitState
from amq_export.amq.config import AMQConfig
from amq_export.amq.cost import LayerCost, aux_bops, bops
from amq_export.data.mesh_data import num_clusters
from amq_export.errors import AMQError

MODES = ("aux", "uniform", "random", "oracle", "layerwise")


@dataclass
class AMQOutput:
    """One AMQ forward pass: prediction [N, out], the bits of every node, edge and cluster row, the auxiliary
    log-scores (node items [N, 2] in ``NODE_ITEMS`` order, cluster items [C]) and the cost."""

    pred: Tensor
    node_bits: Tensor
    edge_bits: Tensor
    cluster_bits: Tensor | None
    cost: dict[str, float]
    aux_node: Tensor | None = None
    aux_cluster: Tensor | None = None


class AMQModel(nn.Module):
    """Main model with adaptive quantized Linears + auxiliary model + allocation (DESIGN items 5-7)."""

    def __init__(
        self,
        main: nn.Module,
        aux: nn.Module,
        state: BitState,
        layers: list[LayerCost],
        float_layers: list[tuple[str, str, int, int]],
        config: AMQConfig,
    ) -> None:
        super().__init__()
        self.main = main
        self.aux = aux
        self.state = state
        self.layers = list(layers)
        self.float_layers = list(float_layers)
        self.amq_config = config
        self.layer_bits: dict[str, int] | None = None  # set by the per-layer baseline
        self.generator = torch.Generator().manual_seed(0)
        self._macs_per_row = {
            d: sum(layer.macs_per_row for layer in self.layers if layer.domain == d) for d in DOMAINS
        }
        # BOPs per row that the layers' offsets add on top of the allocated bits (AMQConfig.layer_offsets)
        self._offset_bops_per_row = {
            d: sum(layer.macs_per_row * layer.weight_bits * layer.offset for layer in self.layers if layer.domain == d)
            for d in DOMAINS
        }

    # ------------------------------------------------------------------ items and their costs
    @property
    def has_cluster_items(self) -> bool:
        return self._macs_per_row["cluster"] > 0

    def item_costs(self, data: Any) -> tuple[Tensor, Tensor | None]:
        """Cost of one activation bit (MACs x weight bits) of the node items [N, 2] (``node_item_costs``) and
        of the cluster items [C]."""
        w = self.amq_config.weight_bits
        nodes = node_item_costs(self._macs_per_row["node"], self._macs_per_row["edge"], data.edge_index,
                                data.num_nodes, w, self.amq_config.edge_rule)
        clusters = None
        if self.has_cluster_items:
            clusters = torch.full((num_clusters(data),), float(self._macs_per_row["cluster"] * w),
                                  dtype=nodes.dtype)
        return nodes, clusters

    def offset_bops(self, data: Any) -> float:
        """BOPs the per-layer offsets add to a run on ``data`` (the same for every allocation): the budget
        pays for them before the items share the rest."""
        rows = row_counts(data)
        return float(sum(self._offset_bops_per_row[d] * rows[d] for d in DOMAINS))

    def aux_macs(self, data: Any) -> int:
        return int(self.aux.macs(data))

    # ------------------------------------------------------------------ allocation
    def allocate(
        self,
        data: Any,
        budget: float,
        mode: str,
        scores: tuple[Tensor, Tensor | None] | None = None,
        aux_scores: tuple[Tensor, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Bits of the node items [N, 2] and the cluster items [C] under ``budget`` for allocation ``mode``;
        ``scores`` / ``aux_scores``: sensitivities / log-scores in the same shapes."""
        if mode not in MODES:
            raise AMQError(f"unknown allocation mode {mode!r}; choose one of {MODES}")
        bits = self.amq_config.bits
        if not bits[0] <= budget <= bits[-1]:
            raise AMQError(f"budget {budget:g} lies outside the bit options {list(bits)}; choose one in range")
        node_cost, cluster_cost = self.item_costs(data)
        costs = _cat(node_cost, cluster_cost)
        fixed = 0.0
        if mode == "aux":
            if aux_scores is None:
                raise AMQError("mode 'aux' needs the auxiliary model's scores")
            item_scores = _cat(*aux_scores).detach().double().exp()
            fixed = float(aux_bops(self.aux_macs(data)))
        elif mode == "oracle":
            if scores is None:
                raise AMQError("mode 'oracle' needs the true sensitivities of the mesh (see amq_export.evaluate)")
            item_scores = _cat(*scores).detach().double()
        elif mode == "random":
            item_scores = random_scores(costs, self.generator)
        else:  # uniform, and layerwise (whose rows all follow their layer's bits; items stay uniform)
            item_scores = costs
        # the offsets' BOPs come off the budget first (in effective bits of the items' total cost)
        item_budget = budget - self.offset_bops(data) / float(costs.sum()) if costs.numel() else budget
        item_bits = allocate_budget(item_scores, costs, bits, item_budget, fixed_cost=fixed)
        n = node_cost.numel()
        return item_bits[:n].view(node_cost.shape), (item_bits[n:] if cluster_cost is not None else None)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        data: Any,
        budget: float | None = None,
        mode: str = "aux",
        scores: tuple[Tensor, Tensor | None] | None = None,
    ) -> AMQOutput:
        budget = self.amq_config.budget if budget is None else float(budget)
        aux_node = aux_cluster = None
        if mode == "aux":
            aux_node, aux_cluster = self.aux(data)
        item_bits, cluster_bits = self.allocate(data, budget, mode, scores, (aux_node, aux_cluster))
        node_bits, e_bits = self.row_bits(data, item_bits)
        self.state.bits = {"node": node_bits, "edge": e_bits}
        if cluster_bits is not None:
            self.state.bits["cluster"] = cluster_bits
        self.state.layer_bits = self.layer_bits if mode == "layerwise" else None
        pred = self.main(data)
        cost = self.cost(data, node_bits, e_bits, cluster_bits, with_aux=mode == "aux")
        return AMQOutput(pred, node_bits, e_bits, cluster_bits, cost, aux_node, aux_cluster)

    def allocation_cost(self, data: Any, budget: float, mode: str) -> dict[str, float]:
        """The cost of a run under ``mode``'s allocation (``aux``, ``uniform`` or ``random``) at ``budget``,
        without running the main model."""
        item_bits, cluster_bits = self.allocate(data, budget, mode, aux_scores=self.aux(data) if mode == "aux" else None)
        return self.cost(data, *self.row_bits(data, item_bits), cluster_bits, with_aux=mode == "aux")

    def row_bits(self, data: Any, item_bits: Tensor) -> tuple[Tensor, Tensor]:
        """The bits of every node row and every edge row from the node items' bits [N, 2] (edges take their
        owner's edge item by the edge rule)."""
        return item_bits[:, 0].contiguous(), edge_bits(item_bits[:, 1], data.edge_index, self.amq_config.edge_rule)

    def cost(self, data: Any, node_bits: Tensor, e_bits: Tensor, cluster_bits: Tensor | None,
             with_aux: bool) -> dict[str, float]:
        """BOPs of one run (DESIGN item 3); ``b_eff`` charges the auxiliary model when it ran."""
        rows = row_counts(data)
        aux_macs = self.aux_macs(data) if with_aux else 0
        if self.state.layer_bits is not None:
            rows_bits = {}
            layers = []
            for layer in self.layers:
                key = f"{layer.domain}:{layer.name}"
                rows_bits[key] = torch.full((rows[layer.domain],), self.state.layer_bits[layer.name])
                layers.append(LayerCost(layer.name, key, layer.in_features, layer.out_features, layer.weight_bits))
        else:
            rows_bits = {"node": node_bits, "edge": e_bits}
            if cluster_bits is not None:
                rows_bits["cluster"] = cluster_bits
            layers = self.layers
        result = bops(layers, rows_bits, self.float_layers, rows=rows, aux_macs=aux_macs)
        result["b_eff_main"] = result["b_eff"]
        result["b_eff"] = result["b_charged"]
        return result


def row_counts(data: Any) -> dict[str, int]:
    """How many rows each domain has in ``data``: its nodes, edges and clusters."""
    return {"node": data.num_nodes, "edge": data.edge_index.shape[1], "cluster": num_clusters(data)}


def _cat(nodes: Tensor, clusters: Tensor | None) -> Tensor:
    """Node items [N, 2] (row-major) then cluster items [C], as one vector of items."""
    nodes = nodes.reshape(-1)
    return nodes if clusters is None else torch.cat([nodes, clusters])

