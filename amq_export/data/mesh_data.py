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
"""

from __future__ import annotations

from typing import Any

import torch
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


class MeshData(Data):
    """PyG ``Data`` that knows how to batch ``cluster_index``."""

    @property
    def num_clusters(self) -> int:
        return num_clusters(self)

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "cluster_index":
            return torch.tensor([[self.num_nodes], [self.num_clusters]])
        return super().__inc__(key, value, *args, **kwargs)
