"""Size-capped k-means clusters for GraphViT."""

import math

import pytest
import torch

from amq_export.data import size_capped_kmeans
from amq_export.errors import AMQError


def _points(n: int, dim: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))


def _check(ci: torch.Tensor, n: int, max_size: int, n_clusters: int) -> torch.Tensor:
    assert ci.dtype == torch.int64 and ci.shape == (2, n)
    assert torch.equal(ci[0].sort().values, torch.arange(n)), "every node exactly once"
    sizes = torch.bincount(ci[1])
    assert sizes.numel() == n_clusters and int(sizes.min()) >= 1 and int(sizes.max()) <= max_size
    assert bool((ci[1][1:] >= ci[1][:-1]).all()), "rows grouped by cluster id"
    return sizes


@pytest.mark.parametrize(("n", "max_size", "dim"), [(1000, 32, 2), (1024, 16, 2), (777, 20, 3), (50, 7, 2)])
def test_sizes_capped_and_every_node_once(n: int, max_size: int, dim: int) -> None:
    ci = size_capped_kmeans(_points(n, dim), max_size)
    sizes = _check(ci, n, max_size, math.ceil(n / max_size))
    assert int(sizes.max() - sizes.min()) <= 2  # balanced


def test_members_ordered_by_distance_to_centre_and_clusters_compact() -> None:
    pos = _points(2000)
    ci = size_capped_kmeans(pos, 25)
    members, cluster = ci
    sizes = torch.bincount(cluster).double()
    centres = torch.zeros(sizes.numel(), 2, dtype=torch.float64).index_add_(0, cluster, pos[members].double())
    centres /= sizes[:, None]
    dist = ((pos[members].double() - centres[cluster]) ** 2).sum(1)
    same = cluster[1:] == cluster[:-1]
    assert bool((dist[1:][same] >= dist[:-1][same]).all())
    # no member far across the domain: a cluster of 25 of 2000 uniform points spans ~0.06
    assert float(dist.sqrt().max()) < 0.15


def test_deterministic() -> None:
    pos = _points(3000)
    assert torch.equal(size_capped_kmeans(pos, 30), size_capped_kmeans(pos.clone(), 30))


def test_small_and_empty_inputs() -> None:
    ci = size_capped_kmeans(_points(5), 10)
    _check(ci, 5, 10, 1)
    assert size_capped_kmeans(torch.zeros(0, 2), 10).shape == (2, 0)
    _check(size_capped_kmeans(torch.zeros(30, 2), 4), 30, 4, 8)  # coincident points
    _check(size_capped_kmeans(_points(40), 8, n_clusters=10), 40, 8, 10)


def test_bad_arguments() -> None:
    with pytest.raises(AMQError, match="cannot hold"):
        size_capped_kmeans(_points(100), 10, n_clusters=5)
    with pytest.raises(AMQError, match="cluster size"):
        size_capped_kmeans(_points(10), 0)


def test_ten_thousand_nodes() -> None:
    """Correct at scale; its speed is measured by benchmarks/cluster_speed.py, not asserted here."""
    _check(size_capped_kmeans(_points(10_000), 20), 10_000, 20, 500)
