"""The deployable form of an AMQ model: plain tensors in, prediction and per-node bit-widths out.

``AMQInferenceModel`` is what ``amq_export.export`` traces into ONNX (DESIGN item 8), and it runs in
PyTorch as well. One forward:

1. the auxiliary GNN scores the two items of every node (its rows, the rows of the edges it owns), and
   every cluster of models with cluster-domain layers (GraphViT) (mode ``aux``; ``uniform`` scores
   items by their cost);
2. the allocation of DESIGN item 6 picks every item's bit option under the run-time ``budget`` (an
   input, so one artifact serves every budget), charging the auxiliary model's BOPs, as a literal
   one-sort greedy with no data-dependent shapes (``allocate_levels_traceable``);
3. the mesh is permuted once so that nodes, then edges (and clusters) are sorted by bit-width, by a
   counting sort (``bucket_order``; edges take the edge-item bits of their target, source or the max,
   as in training; cluster members are renumbered); every quantized Linear then sees contiguous row
   segments, one per bit-width, and runs one integer GEMM per segment (``BucketedIntLinear``);
4. the prediction is permuted back.

With a single bit option the allocation, the auxiliary model and the sort drop out (uniform
quantization). The quantized layers are frozen from the trained ``AdaptiveQuantLinear`` modules.
A budget outside the bit options is not an error inside the graph (it saturates at the lowest or
highest option); callers check it first.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from amq_export.amq.allocation import allocate_levels_traceable, edge_bits, node_item_costs, owned_edges
from amq_export.amq.auxiliary import macs_from_rows
from amq_export.amq.bucketed_linear import BucketedIntLinear, counts_key, integer_form
from amq_export.amq.cost import aux_bops
from amq_export.amq.model import AMQModel
from amq_export.amq.quant_linear import AdaptiveQuantLinear
from amq_export.data.mesh_data import cluster_slots
from amq_export.errors import AMQError

EXPORT_MODES = ("aux", "uniform")


MESH_INPUTS = ("x", "pos", "edge_index", "node_type", "variables", "clusters")
INTEGER_INPUTS = frozenset({"edge_index", "node_type", "clusters"})


def mesh_inputs(mesh: Any, names: list[str]) -> tuple[Tensor | None, ...]:
    """The mesh fields of ``MESH_INPUTS`` order as the deployed model takes them (``None`` where not in
    ``names``); ``clusters`` is ``MeshData.clusters``, the padded form of ``cluster_index``."""
    return tuple(None if name not in names else getattr(mesh, name).long() if name in INTEGER_INPUTS
                 else getattr(mesh, name).float() for name in MESH_INPUTS)


def input_names(main: nn.Module) -> list[str]:
    """The mesh inputs the deployed model reads, in order (``budget`` follows them)."""
    arch = getattr(main, "arch", None)
    if arch == "graphvit":
        return ["x", "pos", "edge_index", "node_type", "clusters"]
    if arch != "mppde":
        raise AMQError(f"export supports MP-PDE and GraphViT models, not {arch or type(main).__name__!r}")
    config = main.config
    names = ["x", "pos", "edge_index"]
    if config.get("num_node_types"):
        names.append("node_type")
    if config.get("n_variables"):
        names.append("variables")
    return names


class AMQInferenceModel(nn.Module):
    """``forward(x, pos, edge_index, [node_type], [variables], [clusters], budget)
    -> (pred [N, out], node_bits [N], edge_bits [E], [cluster_bits [C]])``: the bits of every node's and
    edge's rows (``cluster_bits`` for models with cluster-domain layers: clusters are allocation items of
    their own, DESIGN item 4)."""

    def __init__(self, qmodel: AMQModel, mode: str = "aux", sort_rows: bool = True) -> None:
        super().__init__()
        if mode not in EXPORT_MODES:
            raise AMQError(f"mode {mode!r} cannot be deployed; choose one of {EXPORT_MODES}")
        config = qmodel.amq_config
        self.names = input_names(qmodel.main)
        self.options = tuple(config.bits)
        self.mode = mode if len(self.options) > 1 else "uniform"
        self.edge_rule = config.edge_rule
        self.sort_rows = sort_rows and len(self.options) > 1
        self.weight_bits = config.weight_bits
        self.buckets: dict[str, Tensor] = {}
        self.main = _freeze(qmodel.main, self.buckets)
        self.aux = copy.deepcopy(qmodel.aux) if self.mode == "aux" else None
        macs = qmodel._macs_per_row
        self.node_macs, self.edge_macs, self.cluster_macs = (float(macs[d]) for d in ("node", "edge", "cluster"))
        self.offset_bops = {d: float(v) for d, v in qmodel._offset_bops_per_row.items()}
        self.has_clusters = qmodel.has_cluster_items
        self.output_names = ["pred", "node_bits", "edge_bits"] + (["cluster_bits"] if self.has_clusters else [])
        self.aux_macs = self.aux.macs_per_row() if self.aux is not None else None
        self.register_buffer("bit_options", torch.tensor(self.options, dtype=torch.int64))
        self.eval()

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor | None = None,
                variables: Tensor | None = None, clusters: Tensor | None = None,
                budget: Tensor | None = None) -> tuple[Tensor, ...]:
        n = x.shape[0]
        levels = self.allocate(x, pos, edge_index, node_type, clusters, budget)
        # items: the two of every node (row-major [N, 2]: its rows, its edges' rows), then the clusters
        node_levels, owner_levels, cluster_levels = levels[0:2 * n:2], levels[1:2 * n:2], levels[2 * n:]
        sorted_cluster_levels = cluster_levels
        unsorted_edge_levels = edge_bits(owner_levels, edge_index, self.edge_rule)
        if self.sort_rows:
            buckets, counts = len(self.options), {}
            perm, inverse, counts["node"] = bucket_order(node_levels, buckets)
            x, pos = x.index_select(0, perm), pos.index_select(0, perm)
            node_type = node_type.index_select(0, perm) if node_type is not None else None
            variables = variables.index_select(0, perm) if variables is not None else None
            edge_index = inverse.index_select(0, edge_index.reshape(-1)).reshape(2, -1)
            if clusters is not None:  # renumber members (padding stays -1), then sort clusters by bits
                renumber = torch.cat([inverse, inverse.new_full((1,), -1)])
                clusters = renumber.index_select(0, cluster_slots(clusters, n)[0].reshape(-1)).view(clusters.shape)
                if self.has_clusters:
                    cluster_order, _, counts["cluster"] = bucket_order(cluster_levels, buckets)
                    clusters = clusters.index_select(0, cluster_order)
                    sorted_cluster_levels = cluster_levels.index_select(0, cluster_order)
            sorted_levels = node_levels.index_select(0, perm)
            edge_order, _, counts["edge"] = bucket_order(unsorted_edge_levels, buckets)
            edge_index = take_columns(edge_index, edge_order)
            edge_levels = unsorted_edge_levels.index_select(0, edge_order)
        else:
            sorted_levels, edge_levels = node_levels, unsorted_edge_levels
        self.buckets.update(node=sorted_levels, edge=edge_levels, cluster=sorted_cluster_levels)
        if self.sort_rows:  # each domain's rows are now one contiguous segment per bucket: their sizes
            if "cluster" not in counts:
                counts["cluster"] = bucket_order(sorted_cluster_levels, buckets)[2]
            self.buckets.update({counts_key(domain): c for domain, c in counts.items()})
        extra = {"clusters": clusters} if clusters is not None else {}
        pred = self.main.forward_tensors(x, pos, edge_index, None, variables, node_type, **extra)
        if self.sort_rows:
            pred = pred.index_select(0, inverse)
        outputs = (pred, *(self.bit_options.index_select(0, levels) for levels in (node_levels, unsorted_edge_levels)))
        if self.has_clusters:
            return (*outputs, self.bit_options.index_select(0, cluster_levels))
        return outputs

    def allocate(self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor | None,
                 clusters: Tensor | None, budget: Tensor | None) -> Tensor:
        """Option index (0..K-1) of the two items of every node (row-major [N, 2], flattened), then of every
        cluster (models with cluster-domain layers), under ``budget`` (DESIGN items 4-6)."""
        n, e = x.shape[0], edge_index.shape[1]
        c = clusters.shape[0] if self.has_clusters else 0
        if len(self.options) == 1:
            return torch.zeros(2 * n + c, dtype=torch.int64, device=x.device)
        if budget is None:
            raise AMQError("the deployed model needs a budget input")
        # the auxiliary model reads in-degrees, which are the owned edges' counts under the target rule: count once
        in_degree = (owned_edges(edge_index, n, dtype=x.dtype) if self.aux is not None and self.edge_rule == "target"
                     else None)
        costs = node_item_costs(self.node_macs, self.edge_macs, edge_index, n, self.weight_bits,
                                self.edge_rule, owned=in_degree).reshape(-1)
        if self.has_clusters:
            costs = torch.cat([costs, costs.new_full((c,), self.cluster_macs * self.weight_bits)])
        capacity = budget.to(torch.float64).reshape(()) * costs.sum()
        if any(self.offset_bops.values()):  # what the per-layer offsets add, paid before the items share the rest
            capacity = capacity - (self.offset_bops["node"] * n + self.offset_bops["edge"] * e
                                   + self.offset_bops["cluster"] * c)
        if self.aux is not None:
            node_scores, cluster_scores = self.aux.forward_tensors(
                x, pos, edge_index, node_type, clusters=clusters if self.has_clusters else None, in_degree=in_degree)
            node_scores = node_scores.reshape(-1)
            scores = (torch.cat([node_scores, cluster_scores]) if self.has_clusters else node_scores).double().exp()
            capacity = capacity - aux_bops(macs_from_rows(self.aux_macs, nodes=n, edges=e, clusters=c))
        else:
            scores = costs
        return allocate_levels_traceable(scores, costs, self.options, capacity)

    def example_inputs(self, mesh: Any, budget: float) -> tuple[Tensor | None, ...]:
        """The positional inputs of ``forward`` for one ``MeshData`` (budget as a float32 scalar)."""
        return (*mesh_inputs(mesh, self.names), torch.tensor(float(budget), dtype=torch.float32))


def bucket_order(levels: Tensor, buckets: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(order, position, counts)`` of the stable sort of ``levels`` (ints in ``0..buckets-1``) by counting:
    ``levels[order]`` is sorted, ties in index order, ``position`` is its inverse (``order[position[i]] = i``)
    and ``counts[k]`` the number of rows in bucket k.

    A bucket's rows keep their order, so each row's place is the bucket's start plus the number of
    earlier rows in the same bucket: a running count over a [buckets, M] one-hot (``CumSum`` in ONNX), where
    a comparison sort (``TopK`` over all M) costs several times as much at the mesh sizes of deployment.
    The one-hot is laid out bucket-major so that every op runs over M contiguous values (ONNX Runtime's
    ``Equal`` of [M, 1] against [buckets] took 3.4 ms on 300k edge rows, bucket-major 0.9 ms), and counted
    in int32 (exact below 2^31 rows; ONNX Runtime's int64 ``ReduceSum`` over [2, 300k] took 2.0 ms, int32 0.5).
    """
    onehot = (torch.arange(buckets, device=levels.device).unsqueeze(1) == levels.unsqueeze(0)).int()
    running = onehot.cumsum(1, dtype=torch.int32)  # [k, i]: how many of rows 0..i are in bucket k
    counts = onehot.sum(1, dtype=torch.int32)
    starts = counts.cumsum(0, dtype=torch.int32) - counts
    position = (running + (starts - 1).unsqueeze(1)).gather(0, levels.unsqueeze(0)).squeeze(0).long()
    order = torch.zeros_like(position).index_put((position,), torch.arange(levels.numel(), device=levels.device))
    return order, position, counts.long()


def take_columns(t: Tensor, order: Tensor) -> Tensor:
    """``t[:, order]`` for a [R, M] tensor, as one gather of single values from the flattened tensor: ONNX
    Runtime's ``Gather`` along axis 1 copies value by value (7.4 ms for [2, 300k]), ``GatherElements`` on a
    vector runs a typed loop (``passes/onnx/narrow_gather_scatter.py``)."""
    rows, m = t.shape
    flat = torch.cat([order + r * m for r in range(rows)])
    return t.reshape(-1).index_select(0, flat).reshape(rows, -1)


def _freeze(main: nn.Module, buckets: dict[str, Tensor]) -> nn.Module:
    """A copy of ``main`` with every ``AdaptiveQuantLinear`` replaced by its integer form."""
    frozen = copy.deepcopy(main)
    for name, module in list(frozen.named_modules()):
        if isinstance(module, AdaptiveQuantLinear):
            parent_name, _, child = name.rpartition(".")
            parent = frozen.get_submodule(parent_name) if parent_name else frozen
            setattr(parent, child, BucketedIntLinear(integer_form(module), buckets, module.name, module.domain))
    return frozen
