"""Auxiliary GNN: shapes, batching, empty meshes, config round trip, MACs, Spearman, loss and learning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from amq_export.amq.allocation import owned_edges
from amq_export.amq.auxiliary import AuxiliaryGNN, regression_loss, spearman
from amq_export.data.clusters import size_capped_kmeans
from amq_export.data.mesh import mesh_from_grid
from amq_export.data.mesh_data import NODE_BOUNDARY, MeshData
from amq_export.errors import AMQError


def _mesh(size: int, seed: int, cluster_size: int | None = None) -> MeshData:
    rng = np.random.default_rng(seed)
    mesh = mesh_from_grid(rng.standard_normal((size, size)).astype(np.float32), kind="irregular",
                          keep_fraction=0.8, seed=seed)
    if cluster_size is not None:
        mesh.cluster_index = size_capped_kmeans(mesh.pos, cluster_size)
    return mesh


def _model(**kwargs) -> AuxiliaryGNN:
    torch.manual_seed(0)
    return AuxiliaryGNN(in_features=1, **kwargs)


def test_shapes_without_clusters() -> None:
    mesh = _mesh(6, 0)
    nodes, clusters = _model()(mesh)
    assert nodes.shape == (mesh.num_nodes, 2) and clusters is None  # a node's rows, its edges' rows
    assert torch.isfinite(nodes).all()


def test_shapes_with_clusters() -> None:
    mesh = _mesh(6, 0, cluster_size=5)
    nodes, clusters = _model(cluster_head=True)(mesh)
    assert nodes.shape == (mesh.num_nodes, 2)
    assert clusters is not None and clusters.shape == (mesh.num_clusters,)
    assert _model(cluster_head=True)(_mesh(6, 0))[1] is None  # head, but a mesh without clusters
    assert _model()(mesh)[1] is None  # clusters, but no head


def test_batch_equals_separate_runs() -> None:
    model = _model(cluster_head=True)
    meshes = [_mesh(5, 1, cluster_size=4), _mesh(7, 2, cluster_size=6)]
    nodes, clusters = model(Batch.from_data_list(meshes))
    separate = [model(m) for m in meshes]
    torch.testing.assert_close(nodes, torch.cat([n for n, _ in separate]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clusters, torch.cat([c for _, c in separate]), rtol=1e-5, atol=1e-6)


def test_counted_in_degrees_give_the_same_scores() -> None:
    """The deployed model counts in-degrees once for the costs and the auxiliary model: the same scores, bit for bit."""
    model, mesh = _model(), _mesh(7, 3)
    in_degree = owned_edges(mesh.edge_index, mesh.num_nodes, "target", torch.float32)
    args = (mesh.x, mesh.pos, mesh.edge_index, mesh.node_type)
    assert torch.equal(model.forward_tensors(*args)[0], model.forward_tensors(*args, in_degree=in_degree)[0])


def test_empty_meshes() -> None:
    model = _model(cluster_head=True)
    empty = MeshData(x=torch.zeros(0, 1), pos=torch.zeros(0, 2), edge_index=torch.zeros(2, 0, dtype=torch.long),
                     node_type=torch.zeros(0, dtype=torch.long), cluster_index=torch.zeros(2, 0, dtype=torch.long))
    nodes, clusters = model(empty)
    assert nodes.shape == (0, 2) and clusters is not None and clusters.shape == (0,)
    assert model.macs(empty) == 3 * 32 * 32  # only the per-graph global Linear, on its one graph row

    no_edges = MeshData(x=torch.randn(5, 1), pos=torch.rand(5, 2), edge_index=torch.zeros(2, 0, dtype=torch.long),
                        node_type=torch.zeros(5, dtype=torch.long))
    nodes, _ = model(no_edges)
    assert nodes.shape == (5, 2) and torch.isfinite(nodes).all()


def test_config_round_trip() -> None:
    model = _model(hidden=8, layers=2, cluster_head=True, num_node_types=3)
    copy = AuxiliaryGNN(**model.config)
    copy.load_state_dict(model.state_dict())
    assert copy.config == model.config
    mesh = _mesh(5, 3, cluster_size=4)
    for ours, theirs in zip(model(mesh), copy(mesh), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_bad_config() -> None:
    with pytest.raises(AMQError):
        AuxiliaryGNN(in_features=0)


def test_macs_hand_count() -> None:
    f, d, t, h, layers = 1, 2, 2, 4, 2
    model = AuxiliaryGNN(in_features=f, spatial_dim=d, num_node_types=t, hidden=h, layers=layers,
                         cluster_head=True)
    batch = Batch.from_data_list([_mesh(5, 4, cluster_size=4), _mesh(6, 5, cluster_size=4)])
    n, c, g = batch.num_nodes, batch.num_clusters, 2
    w = h // 2  # the default message width; edge rows carry no MACs (gathers and sums only)
    per_layer = n * h * w + n * (h + w) * h + g * h * h  # project, update, global
    expected = n * (f + 2 * d + t) * h + layers * per_layer + n * (h * h + 2 * h) + c * (h * h + h)
    assert model.macs(batch) == expected


def test_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randint(0, 6, (200,), generator=g).float()
        b = a + torch.randint(0, 4, (200,), generator=g).float()
        assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    x = torch.randn(50, generator=g)
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(torch.ones(5), x[:5]))


def test_regression_loss() -> None:
    pred = torch.zeros(4, requires_grad=True)
    sens = torch.tensor([0.0, 1.0, 2.0, 5.0])
    loss = regression_loss(pred, sens, eps=0.1)
    expected = torch.log(sens / sens.mean() + 0.1).square().mean()
    torch.testing.assert_close(loss, expected)
    # scale-free: multiplying every sensitivity by a constant changes nothing
    torch.testing.assert_close(regression_loss(pred, 1e-6 * sens, eps=0.1), loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all()

    zero = regression_loss(pred, torch.zeros(4))
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    with pytest.raises(AMQError):
        regression_loss(pred, -sens)
    with pytest.raises(AMQError):
        regression_loss(pred, sens[:3])


def _sensitivity(mesh: MeshData) -> torch.Tensor:
    """A known target per node item: its rows exp(3 * neighbourhood mean of x + 2 * pos_0), exactly 0 on the
    boundary; its edges' rows exp(-2 * pos_1) times the in-degree."""
    x = mesh.x[:, 0]
    src, dst = mesh.edge_index
    n = mesh.num_nodes
    xbar = (scatter(x[src], dst, dim_size=n, reduce="sum") + x) / (torch.bincount(dst, minlength=n) + 1)
    s = torch.exp(3 * xbar + 2 * mesh.pos[:, 0])
    edges = torch.exp(-2 * mesh.pos[:, 1]) * torch.bincount(dst, minlength=n)
    return torch.stack([torch.where(mesh.node_type == NODE_BOUNDARY, torch.zeros_like(s), s), edges], dim=1)


def test_learns_a_smooth_sensitivity() -> None:
    meshes = [_mesh(8 + i % 5, 100 + i) for i in range(64)]
    for mesh in meshes:
        mesh.s = _sensitivity(mesh)
    train, test = meshes[:48], meshes[48:]
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        batch = Batch.from_data_list([train[i] for i in torch.randint(0, len(train), (8,), generator=g)])
        loss = regression_loss(model(batch)[0], batch.s)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        rhos = np.array([[spearman(model(m)[0][:, j], m.s[:, j]) for j in (0, 1)] + [spearman(model(m)[0], m.s)]
                         for m in test]).mean(0)
    assert (rhos > 0.8).all(), rhos


def test_macs_formula_matches_the_rows_each_linear_sees() -> None:
    model = AuxiliaryGNN(in_features=1, spatial_dim=2, num_node_types=2, hidden=6, layers=2, cluster_head=True)
    batch = Batch.from_data_list([_mesh(5, 4, cluster_size=4), _mesh(7, 3, cluster_size=4)])
    counted = 0

    def count(module, inputs, _):
        nonlocal counted
        counted += inputs[0].numel() // module.in_features * module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(batch)
    for handle in handles:
        handle.remove()
    assert model.macs(batch) == counted
