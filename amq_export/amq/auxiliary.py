"""The auxiliary model of AMQ (DESIGN item 5): a small GNN that predicts log-sensitivities.

It reads the main model's inputs (``x``, ``pos``, ``edge_index``, ``node_type``, optional ``batch``
and ``cluster_index``) and predicts ``log s`` of the two items of every node (its own rows, the rows of
the edges it owns: ``allocation.NODE_ITEMS``) and, with a cluster head, of every cluster. It is
trained jointly with the quantized main model (DESIGN item 7) by :func:`regression_loss` against the
detached sensitivities of the same backward pass; :func:`spearman` scores its ranking.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from amq_export.amq.allocation import NODE_ITEMS
from amq_export.data.mesh_data import NUM_NODE_TYPES, cluster_slots, clusters_of, num_clusters
from amq_export.errors import AMQError


def _head(hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class AuxLayer(MessagePassing):
    """Update ``h + SiLU(U [h, m] + G pool(h))`` with ``m`` the mean over in-neighbours of ``P h_j``.

    The message is a narrow linear projection of the source (``P``: hidden -> ``width`` columns) and
    carries no per-edge nonlinearity, so each layer's edge work is one gather and one scatter of
    ``width`` columns (E/N is about 6 on triangle meshes; in ONNX Runtime an edge-row op costs about
    the same at 4 columns as at 16). The mean divides by the in-degree computed once per forward
    (``inv_degree``). ``G`` maps the per-graph mean of ``h`` (one row per graph), which carries global
    context at negligible cost.
    """

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__(aggr="sum", node_dim=0)
        self.project = nn.Linear(hidden, width, bias=False)
        self.update_lin = nn.Linear(hidden + width, hidden)
        self.global_lin = nn.Linear(hidden, hidden, bias=False)

    def forward(self, h: Tensor, edge_index: Tensor, inv_degree: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        m = self.propagate(edge_index, x=self.project(h), size=(h.size(0), h.size(0))) * inv_degree
        pool = scatter(h, batch, dim=0, dim_size=num_graphs, reduce="mean")
        context = _per_node(self.global_lin(pool), batch, num_graphs)
        return h + F.silu(self.update_lin(torch.cat([h, m], dim=-1)) + context)


class AuxiliaryGNN(nn.Module):
    """Predicts per-node (and per-cluster) log-sensitivities from the main model's inputs.

    Encoder ``SiLU(Linear([x, pos, one_hot(node_type), r]))`` -> ``layers`` x :class:`AuxLayer` ->
    node head (Linear, SiLU, Linear -> one score per node item). ``r`` is the mean of ``pos_i - pos_j`` over
    the in-edges, divided by the graph's mean edge length: the local geometry, from one scatter of the
    edge rows shared with the in-degree. With ``cluster_head``, node embeddings are mean-pooled
    per cluster of ``cluster_index`` and mapped by a second head to one score per cluster.
    ``pos`` is read as is (the meshes of this project live in the unit box).
    """

    def __init__(
        self,
        *,
        in_features: int,
        spatial_dim: int = 2,
        num_node_types: int = NUM_NODE_TYPES,
        hidden: int = 32,
        layers: int = 3,
        message_width: int | None = None,
        cluster_head: bool = False,
    ) -> None:
        super().__init__()
        width = message_width if message_width is not None else max(1, hidden // 2)
        if min(in_features, spatial_dim, hidden, width) < 1 or min(num_node_types, layers) < 0:
            raise AMQError("AuxiliaryGNN needs in_features, spatial_dim, hidden, message_width >= 1 and "
                           "num_node_types, layers >= 0")
        self.config: dict[str, Any] = {
            "in_features": in_features, "spatial_dim": spatial_dim, "num_node_types": num_node_types,
            "hidden": hidden, "layers": layers, "message_width": width, "cluster_head": bool(cluster_head),
        }
        self.num_node_types = num_node_types
        self.encoder = nn.Linear(in_features + 2 * spatial_dim + num_node_types, hidden)
        self.layers = nn.ModuleList(AuxLayer(hidden, width) for _ in range(layers))
        self.node_head = _head(hidden, len(NODE_ITEMS))
        self.cluster_head = _head(hidden, 1) if cluster_head else None

    def forward(self, data: Data) -> tuple[Tensor, Tensor | None]:
        """Log-sensitivity scores: per node item [N, 2], and per cluster [C] (None without a cluster head or clusters)."""
        batch = getattr(data, "batch", None)
        return self.forward_tensors(
            data.x, data.pos, data.edge_index, data.node_type if self.num_node_types else None,
            batch, clusters_of(data) if self.cluster_head is not None else None, _num_graphs(batch),
        )

    def forward_tensors(
        self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor | None = None,
        batch: Tensor | None = None, clusters: Tensor | None = None, num_graphs: int = 1,
        in_degree: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``forward`` on plain tensors (for ``torch.export``): the graph count given, clusters padded
        [C, K] (``padded_clusters``); ``in_degree`` [N] (float, edges into every node) where the caller has
        counted it already."""
        n = x.size(0)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=x.device)
        parts = [x, pos]
        if self.num_node_types:
            classes = torch.arange(self.num_node_types, device=x.device)
            parts.append((node_type.unsqueeze(-1) == classes).to(x.dtype))
        src, dst = edge_index
        delta = pos.index_select(0, dst) - pos.index_select(0, src)
        columns = [delta, delta.norm(dim=-1, keepdim=True)]
        if in_degree is None:  # not ones_like(delta[:, :1]): ONNX Runtime copies the slice
            columns.append(delta.new_ones(delta.size(0), 1))
        # per node: sum of delta, of |delta|, and the in-degree
        sums = scatter(torch.cat(columns, dim=-1), dst, dim=0, dim_size=n, reduce="sum")
        d = delta.size(1)
        lengths = sums[:, d:] if in_degree is None else torch.cat([sums[:, d:], in_degree.unsqueeze(-1)], dim=-1)
        inv_degree = 1.0 / lengths[:, 1:].clamp_min(1.0)
        per_graph = scatter(lengths, batch, dim=0, dim_size=num_graphs, reduce="sum")
        length = per_graph[:, 0] / per_graph[:, 1].clamp_min(1.0)  # the graph's mean edge length (0: no edges)
        length = _per_node(length.clamp_min(torch.finfo(pos.dtype).tiny).unsqueeze(-1), batch, num_graphs)
        parts.append(sums[:, :d] * inv_degree / length)
        h = F.silu(self.encoder(torch.cat(parts, dim=-1)))
        for layer in self.layers:
            h = layer(h, edge_index, inv_degree, batch, num_graphs)

        node_scores = self.node_head(h)
        if self.cluster_head is None or clusters is None:
            return node_scores, None
        slots, sizes = cluster_slots(clusters, n)
        members = torch.cat([h, h.new_zeros(1, h.size(-1))]).index_select(0, slots.reshape(-1))
        pooled = members.view(*clusters.shape, h.size(-1)).sum(1) / sizes.clamp_min(1).to(h.dtype).unsqueeze(-1)
        return node_scores, self.cluster_head(pooled).squeeze(-1)

    def macs(self, data: Data) -> int:
        """Multiply-accumulates of one forward on ``data`` (see :meth:`macs_per_row`)."""
        return macs_from_rows(self.macs_per_row(), nodes=data.num_nodes, edges=data.edge_index.shape[1],
                              graphs=_num_graphs(getattr(data, "batch", None)), clusters=num_clusters(data))

    def macs_per_row(self) -> dict[str, int]:
        """MACs per node, edge, graph and cluster row: ``in x out`` summed over the Linears of each kind
        of row (the cluster head counts only when clusters are given)."""
        h, w = self.config["hidden"], self.config["message_width"]
        head = h * h + h * len(NODE_ITEMS)
        per_layer_node = h * w + (h + w) * h  # project, update ([h, m] -> h)
        node = self.encoder.in_features * h + len(self.layers) * per_layer_node + head
        return {"node": node, "edge": 0, "graph": len(self.layers) * h * h,
                "cluster": h * h + h if self.cluster_head is not None else 0}


def _per_node(per_graph: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """The rows of ``per_graph`` [G, F] for every node: ``per_graph[batch]``, or ``per_graph`` itself (it broadcasts
    to every node) for one graph, where the gather would copy the same row N times (a third of a millisecond per
    use on a 50k-node mesh in ONNX Runtime)."""
    return per_graph if num_graphs == 1 else per_graph[batch]


def _num_graphs(batch: Tensor | None) -> int:
    return int(batch.max()) + 1 if batch is not None and batch.numel() else 1


def macs_from_rows(macs_per_row: dict[str, int], *, nodes: Any, edges: Any, graphs: Any = 1, clusters: Any = 0) -> Any:
    """MACs of one auxiliary forward from :meth:`AuxiliaryGNN.macs_per_row` and the row counts (ints,
    or symbolic sizes inside a traced graph)."""
    rows = {"node": nodes, "edge": edges, "graph": graphs, "cluster": clusters}
    return sum(rows[kind] * macs for kind, macs in macs_per_row.items())


def regression_loss(pred_log: Tensor, target_sens: Tensor, eps: float = 1e-3) -> Tensor:
    """MSE between predicted log-sensitivities and ``log(s / mean(s) + eps)`` of the detached targets.

    Allocation depends only on sensitivity ratios, so the targets are taken relative to their mean
    (over the tensor given): the model learns log relative sensitivity, whose scale does not drift
    as the main model trains.

    Sensitivities span orders of magnitude and may be exactly 0, so the floor is relative to the
    mean of ``target_sens`` (over the tensor given: one mesh or one batch). With the default 1e-3
    it resolves items far below the ``4^-4 = 1/256`` sensitivity ratio beyond which an allocation
    over a window of about four bit options no longer tells them apart. Targets that are all zero
    carry no ranking: the loss is then 0 (still attached to ``pred_log``).
    """
    if pred_log.shape != target_sens.shape:
        raise AMQError(f"regression_loss: predictions {tuple(pred_log.shape)} and targets "
                       f"{tuple(target_sens.shape)} differ in shape")
    target = log_relative(target_sens.detach().to(pred_log.dtype), eps)
    if target is None:
        return pred_log.sum() * 0.0
    return F.mse_loss(pred_log, target)


def log_relative(sens: Tensor, eps: float = 1e-3) -> Tensor | None:
    """``log(s / mean(s) + eps)``: what :func:`regression_loss` fits; None when every ``s`` is 0 (no ranking)."""
    if sens.numel() and bool(sens.min() < 0):
        raise AMQError("regression_loss: sensitivities must be >= 0")
    scale = sens.mean() if sens.numel() else sens.new_zeros(())
    if not bool(scale > 0):
        return None
    return torch.log(sens / scale + eps)


def start_at_mean(aux: AuxiliaryGNN, node_targets: list[Tensor], cluster_targets: list[Tensor]) -> None:
    """Set the output biases of the heads to the mean fitted target of each kind of item (the columns of the
    node scores; the clusters), so that fitting starts from the right level instead of spending its first
    steps getting there."""
    heads = [(aux.node_head, node_targets)]
    if aux.cluster_head is not None:
        heads.append((aux.cluster_head, [t.unsqueeze(-1) for t in cluster_targets]))
    with torch.no_grad():
        for head, targets in heads:
            logs = [t for t in (log_relative(t.double()) for t in targets) if t is not None]
            if logs:
                head[-1].bias.copy_(torch.cat(logs).mean(0).to(head[-1].bias.dtype))


def _average_ranks(v: Tensor) -> Tensor:
    """1-based ranks of ``v`` (float64), ties sharing the mean of their ranks."""
    values, order = v.sort()
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    ranks = torch.empty(v.numel(), dtype=torch.float64, device=v.device)
    ranks[order] = (ends - (counts - 1).to(torch.float64) / 2)[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two equally long finite vectors (ties by average rank).

    NaN when either is constant or shorter than 2, as ``scipy.stats.spearmanr``.
    """
    a, b = a.detach().flatten(), b.detach().flatten()
    if a.numel() != b.numel():
        raise AMQError(f"spearman: inputs have {a.numel()} and {b.numel()} elements")
    if a.numel() < 2:
        return float("nan")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")
