"""Size-capped k-means over node positions: the clusters GraphViT pools into tokens.

Method (deterministic, no randomness, vectorised over nodes):

1. *Balanced recursive bisection* as the initial partition: a set that must form ``k`` clusters is
   cut across its widest coordinate into ``floor(k/2)`` and ``ceil(k/2)`` clusters' worth of nodes,
   ``round(n * floor(k/2) / k)`` on one side. Leaves hold ``n / k`` nodes up to rounding, so every
   cluster is non-empty and within the cap whenever ``k * max_size >= n``.
2. *Constrained Lloyd iterations*: centres move to their members' mean, then nodes are reassigned
   by swaps between neighbouring clusters (each cluster pair trades its two nodes whose exchange
   lowers the summed squared distance to the centres most; mutually best pairs swap at once). Swaps
   keep every cluster's size, so the cap holds throughout and the k-means objective only falls.

Why not greedy capacitated assignment from k-means++ centres: with ``ceil(N / max_size)`` clusters
the capacity is tight, and the last nodes placed land in whichever cluster still has room, often
across the domain (measured: 10k random points, size 20: farthest member 0.70 from its centre,
against 0.045 here, and 80x slower).

Members of a cluster are listed by increasing squared distance to the cluster's centre (the mean
of its members), ties by node index: the GRU pooling reads them in that order.
"""

from __future__ import annotations

import math

import torch

from amq_export.errors import AMQError

# clusters whose centres are among a cluster's nearest this many are its swap partners
SWAP_NEIGHBOURS = 8


def _bisect(points: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Labels [N] of the balanced recursive bisection into ``n_clusters`` (<= N) clusters."""
    n, dim = points.shape
    seg = torch.zeros(n, dtype=torch.long)  # current part of every node
    want = torch.tensor([n_clusters])  # clusters each part must still become
    while bool((want > 1).any()):
        n_parts = want.numel()
        count = torch.bincount(seg, minlength=n_parts)
        index = seg[:, None].expand(n, dim)
        lo = torch.full((n_parts, dim), math.inf, dtype=points.dtype).scatter_reduce(0, index, points, "amin")
        hi = torch.full((n_parts, dim), -math.inf, dtype=points.dtype).scatter_reduce(
            0, index, points, "amax"
        )
        key = points.gather(1, (hi - lo).argmax(1)[seg][:, None])[:, 0]
        by_key = torch.argsort(key, stable=True)
        order = by_key[torch.argsort(seg[by_key], stable=True)]  # by part, then along its widest axis
        part = seg[order]
        rank = torch.arange(n) - (torch.cumsum(count, 0) - count)[part]
        split = want > 1
        left = want // 2
        n_left = torch.round(count.double() * left / want).long()
        first_id = torch.cumsum(1 + split.long(), 0) - (1 + split.long())
        seg = torch.empty_like(seg)
        seg[order] = first_id[part] + (split[part] & (rank >= n_left[part])).long()
        children = torch.stack([torch.where(split, left, want), want - left], 1)
        want = children[torch.stack([torch.ones_like(split), split], 1)]
    return seg


def _centres(points: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    sums = torch.zeros(n_clusters, points.shape[1], dtype=points.dtype).index_add_(0, labels, points)
    return sums / torch.bincount(labels, minlength=n_clusters).to(points.dtype)[:, None]


def _swap_round(points: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> bool:
    """One constrained Lloyd step in place: recentre, then swap node pairs; False if nothing improved."""
    n = points.shape[0]
    centres = _centres(points, labels, n_clusters)
    k = min(SWAP_NEIGHBOURS, n_clusters - 1)
    centre_dist = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    centre_dist.fill_diagonal_(math.inf)
    partners = centre_dist.topk(k, dim=1, largest=False).indices  # [C, k]

    target = partners[labels]  # [N, k] clusters a node may swap into
    own = ((points - centres[labels]) ** 2).sum(1)
    gain = (((points[:, None, :] - centres[target]) ** 2).sum(-1) - own[:, None]).reshape(-1)
    pair = (labels[:, None] * n_clusters + target).reshape(-1)  # (from, to) as one key
    node = torch.arange(n).repeat_interleave(k)

    keys, inverse = torch.unique(pair, return_inverse=True)
    best = torch.full((keys.numel(),), math.inf, dtype=points.dtype).scatter_reduce(0, inverse, gain, "amin")
    hit = gain == best[inverse]
    who = torch.full((keys.numel(),), n, dtype=torch.long).scatter_reduce(0, inverse[hit], node[hit], "amin")

    # the pair's other direction (to, from), if present among the keys
    src, dst = keys // n_clusters, keys % n_clusters
    back = torch.searchsorted(keys, dst * n_clusters + src).clamp(max=keys.numel() - 1)
    total = torch.where(keys[back] == dst * n_clusters + src, best + best[back], math.inf)
    # each cluster's best partner; mutually best pairs with a real gain swap
    tol = -1e-9 * float(own.mean().clamp(min=torch.finfo(points.dtype).tiny))
    best_total = torch.full((n_clusters,), math.inf, dtype=points.dtype).scatter_reduce(0, src, total, "amin")
    chosen = (total == best_total[src]) & (total < tol)
    choice = torch.full((n_clusters,), n_clusters, dtype=torch.long).scatter_reduce(
        0, src[chosen], dst[chosen], "amin"
    )
    c = torch.arange(n_clusters)
    mutual = (choice < n_clusters) & (choice[choice.clamp(max=n_clusters - 1)] == c) & (c < choice)
    a, b = c[mutual], choice[mutual]
    if a.numel() == 0:
        return False
    i, j = (
        who[torch.searchsorted(keys, a * n_clusters + b)],
        who[torch.searchsorted(keys, b * n_clusters + a)],
    )
    labels[i], labels[j] = b, a
    return True


def size_capped_kmeans(
    pos: torch.Tensor, max_size: int, *, n_clusters: int | None = None, max_iters: int = 20
) -> torch.Tensor:
    """``cluster_index`` [2, N] int64 (row 0: member node, row 1: cluster id) of ``pos`` [N, D].

    Every node belongs to exactly one cluster; C = ``n_clusters`` (default ``ceil(N / max_size)``,
    at most N) clusters, each with 1..``max_size`` members and sizes within about one of ``N / C``.
    Rows are sorted by cluster id, then by distance to the cluster's centre.
    """
    if not isinstance(max_size, int) or max_size < 1:
        raise AMQError(f"cluster size must be a positive integer, got {max_size!r}")
    n = pos.shape[0]
    if n == 0:
        return torch.zeros(2, 0, dtype=torch.long)
    if n_clusters is None:
        n_clusters = math.ceil(n / max_size)
    if n_clusters * max_size < n:
        raise AMQError(
            f"{n_clusters} clusters of at most {max_size} nodes cannot hold {n} nodes; "
            f"use at least {math.ceil(n / max_size)} clusters or a larger cluster size"
        )
    n_clusters = min(n_clusters, n)
    points = pos.detach().to("cpu", torch.float64).reshape(n, -1)

    labels = _bisect(points, n_clusters)
    if n_clusters > 1:
        for _ in range(max_iters):
            if not _swap_round(points, labels, n_clusters):
                break
    centres = _centres(points, labels, n_clusters)
    to_centre = ((points - centres[labels]) ** 2).sum(1)
    by_dist = torch.argsort(to_centre, stable=True)  # node order breaks ties
    order = by_dist[torch.argsort(labels[by_dist], stable=True)]
    return torch.stack([order, labels[order]])
