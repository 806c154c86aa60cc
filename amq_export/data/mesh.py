"""Mesh graphs from one grid sample: the full grid, or an irregular subset of its points.

Node ``k`` sits at grid point ``(i, j)`` (row ``i`` of ``H``, column ``j`` of ``W``) with
``pos = (i / (H - 1), j / (W - 1))`` and ``grid_id = i * W + j`` (row-major), so that
``field.view(-1)[data.grid_id] = prediction`` draws a prediction back on the grid. (``grid_id``
has no ``index`` in its name on purpose: PyG would offset such fields when batching.)
Nodes are listed in increasing ``grid_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import Delaunay

from amq_export.data.mesh_data import NODE_BOUNDARY, NODE_INTERIOR, MeshData
from amq_export.errors import AMQError

MESH_KINDS = ("grid", "irregular")


def grid_triangles(h: int, w: int) -> np.ndarray:
    """(2 (H-1)(W-1), 3) triangles of the regular grid: every cell cut along its (i, j)-(i+1, j+1) diagonal."""
    ids = np.arange(h * w).reshape(h, w)
    p00, p01 = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel()
    p10, p11 = ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    return np.concatenate([np.stack([p00, p01, p11], 1), np.stack([p00, p11, p10], 1)])


def edges_from_triangles(triangles: np.ndarray, num_nodes: int) -> torch.Tensor:
    """[2, E] int64 edges of a triangulation: both directions, each once, sorted by (source, target)."""
    t = np.asarray(triangles, dtype=np.int64)
    src = np.concatenate([t[:, 0], t[:, 1], t[:, 2], t[:, 1], t[:, 2], t[:, 0]])
    dst = np.concatenate([t[:, 1], t[:, 2], t[:, 0], t[:, 0], t[:, 1], t[:, 2]])
    keys = np.unique(src * num_nodes + dst)
    return torch.from_numpy(np.stack([keys // num_nodes, keys % num_nodes]))


def grid_edge_count(h: int, w: int) -> int:
    """Directed edge count of the triangulated H x W grid: rows, columns and one diagonal per cell, twice."""
    return 2 * (h * (w - 1) + (h - 1) * w + (h - 1) * (w - 1))


def mesh_from_grid(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    kind: str = "grid",
    keep_fraction: float = 0.7,
    seed: int | Sequence[int] = 0,
) -> MeshData:
    """``MeshData`` of one (H, W) grid sample ``x`` (coefficient) with optional solution ``y``.

    ``kind="grid"``: every grid point, regular triangulation (:func:`grid_triangles`).
    ``kind="irregular"``: every boundary point and a random ``keep_fraction`` of the interior
    points (exactly ``round(keep_fraction * n_interior)``, at least one; chosen by ``seed``, an
    int or a sequence of ints as ``numpy.random.default_rng`` takes), Delaunay-triangulated.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or min(x.shape) < 3:
        raise AMQError(f"a grid sample must have shape (H, W) with H, W >= 3, got {x.shape}")
    if y is not None and np.shape(y) != x.shape:
        raise AMQError(f"grid solution shape {np.shape(y)} does not match the input shape {x.shape}")
    if kind not in MESH_KINDS:
        raise AMQError(f"unknown mesh kind {kind!r}; choose one of {MESH_KINDS}")
    h, w = x.shape
    i, j = np.divmod(np.arange(h * w), w)
    boundary = (i == 0) | (i == h - 1) | (j == 0) | (j == w - 1)

    if kind == "grid":
        grid_id = np.arange(h * w)
    else:
        if not 0.0 < keep_fraction <= 1.0:
            raise AMQError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
        interior = np.flatnonzero(~boundary)
        n_keep = max(1, round(keep_fraction * interior.size))
        kept = np.random.default_rng(seed).choice(interior, size=n_keep, replace=False)
        grid_id = np.sort(np.concatenate([np.flatnonzero(boundary), kept]))
    i, j, boundary = i[grid_id], j[grid_id], boundary[grid_id]
    pos = np.stack([i / (h - 1), j / (w - 1)], axis=1).astype(np.float32)

    if kind == "grid":
        triangles = grid_triangles(h, w)
    else:
        # Qbb/Qc/Qz/Q12 are scipy's defaults; Qt triangulates the cocircular cells of the lattice
        triangles = Delaunay(pos.astype(np.float64), qhull_options="Qbb Qc Qz Q12 Qt").simplices

    data = MeshData(
        x=torch.from_numpy(x.reshape(-1)[grid_id]).unsqueeze(1),
        pos=torch.from_numpy(pos),
        edge_index=edges_from_triangles(triangles, grid_id.size),
        node_type=torch.from_numpy(np.where(boundary, NODE_BOUNDARY, NODE_INTERIOR).astype(np.int64)),
        grid_id=torch.from_numpy(grid_id.astype(np.int64)),
    )
    if y is not None:
        data.y = torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(-1)[grid_id]).unsqueeze(1)
    return data
