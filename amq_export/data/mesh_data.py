"""The one graph container every model, pass and runtime in the project speaks.

A mesh sample is a PyG ``Data`` with these fields (N nodes, E directed edges, M cluster
memberships, C clusters):

- ``x``          [N, F] float32 node input features (normalised), e.g. the Darcy coefficient.
- ``pos``        [N, D] float32 node positions in the unit box.
- ``edge_index`` [2, E] int64, row 0 = source j, row 1 = target i (messages j -> i), both
  directions of every mesh edge.
- ``node_type``  [N] int64, ``NODE_INTERIOR`` or ``NODE_BOUNDARY``.
- ``y``          [N, T] float32 targets (normalised), absent at inference.
- ``cluster_index`` [2, M] int64 (optional, GraphViT): row 0 = member node, row 1 = cluster id;
  members of a cluster are listed in their sequence order (the GRU pooling reads them in
  that order). Every cluster id in 0..C-1 has at least one member.

``cluster_index`` is incremented like ``edge_index`` when samples are batched, by
(num_nodes, num_clusters), so a ``Batch`` of meshes is again a valid mesh.

Models read clusters *padded*: ``clusters`` [C, K] int64, row c the member nodes of cluster c in
sequence order, then -1 up to the largest cluster's size K (the reference GraphViT's layout, and
the one an exported model takes, since its shape carries the cluster count).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

NODE_INTERIOR = 0
NODE_BOUNDARY = 1
NUM_NODE_TYPES = 2


def num_clusters(data: Any) -> int:
    """Clusters of a mesh or batch: one more than the largest id in ``cluster_index`` (0 without clusters).
    Works on any ``Data`` (and on batches of them), not only ``MeshData``."""
    ci = getattr(data, "cluster_index", None)
    if ci is None or ci.numel() == 0:
        return 0
    return int(ci[1].max()) + 1


def padded_clusters(cluster_index: Tensor, count: int) -> Tensor:
    """``cluster_index`` [2, M] (member, cluster id < ``count``) -> ``clusters`` [count, K] padded with -1.

    Members keep their listed order; K is the largest cluster's size (0 without memberships).
    """
    member, cid = cluster_index[0], cluster_index[1]
    m = cid.numel()
    sizes = torch.zeros(count, dtype=torch.long, device=cid.device).index_add(0, cid, torch.ones_like(cid))
    k = int(sizes.max()) if count and m else 0
    position = torch.arange(m, device=cid.device)
    order = torch.argsort(cid * m + position)  # by cluster, then listed order (unique keys)
    cid_sorted = cid.index_select(0, order)
    slot = position - (torch.cumsum(sizes, 0) - sizes).index_select(0, cid_sorted)
    flat = torch.full((count * k,), -1, dtype=torch.long, device=cid.device)
    return flat.index_put((cid_sorted * k + slot,), member.index_select(0, order)).view(count, k)


def cluster_slots(clusters: Tensor, num_nodes: Any) -> tuple[Tensor, Tensor]:
    """Padded ``clusters`` [C, K] -> (``slots`` [C, K] with padding pointing at row ``num_nodes``, sizes [C]).

    Gathering node rows with one zero row appended (index ``num_nodes``) reads padding as zeros, and
    scattering into ``num_nodes + 1`` rows sends it to a row that is dropped: no masks, no
    value-dependent shapes, and no out-of-range index when there are no nodes.
    """
    valid = clusters >= 0
    return torch.where(valid, clusters, num_nodes), valid.sum(1)


def clusters_of(data: Any) -> Tensor | None:
    """The padded clusters [C, K] of any mesh or batch with a ``cluster_index`` (``None`` without one)."""
    cluster_index = getattr(data, "cluster_index", None)
    return None if cluster_index is None else padded_clusters(cluster_index, num_clusters(data))


class MeshData(Data):
    """PyG ``Data`` that knows how to batch ``cluster_index``."""

    @property
    def num_clusters(self) -> int:
        return num_clusters(self)

    @property
    def clusters(self) -> Tensor | None:
        """The clusters padded, [C, K] (``padded_clusters``); ``None`` without ``cluster_index``."""
        return clusters_of(self)

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "cluster_index":
            return torch.tensor([[self.num_nodes], [self.num_clusters]])
        return super().__inc__(key, value, *args, **kwargs)
