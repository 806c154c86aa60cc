"""Mesh graphs built from grid samples, and the normaliser."""

import numpy as np
import pytest
import torch

from amq_export.data import NODE_BOUNDARY, NODE_INTERIOR, MeshData, Normalizer, mesh_from_grid
from amq_export.data.mesh import grid_edge_count
from amq_export.errors import AMQError


def _sample(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((h, w)).astype(np.float32), rng.random((h, w)).astype(np.float32)


def _check_edges(data: MeshData) -> None:
    e = data.edge_index
    assert e.dtype == torch.int64 and e.shape[0] == 2
    assert not bool((e[0] == e[1]).any()), "self loop"
    keys = e[0] * data.num_nodes + e[1]
    assert keys.unique().numel() == keys.numel(), "duplicate edge"
    reverse = e[1] * data.num_nodes + e[0]
    assert torch.equal(keys.sort().values, reverse.sort().values), "edges not symmetric"
    assert e.unique().numel() == data.num_nodes, "isolated node"


@pytest.mark.parametrize(("h", "w"), [(4, 4), (5, 7), (16, 16)])
def test_full_grid_mesh(h: int, w: int) -> None:
    x, y = _sample(h, w)
    data = mesh_from_grid(x, y)
    assert data.num_nodes == h * w
    _check_edges(data)
    # triangulated grid: rows, columns and one diagonal per cell, both directions
    assert (
        data.edge_index.shape[1]
        == grid_edge_count(h, w)
        == 2 * (h * (w - 1) + (h - 1) * w + (h - 1) * (w - 1))
    )
    i, j = data.grid_id // w, data.grid_id % w
    border = (i == 0) | (i == h - 1) | (j == 0) | (j == w - 1)
    assert torch.equal(data.node_type, torch.where(border, NODE_BOUNDARY, NODE_INTERIOR))
    assert int((data.node_type == NODE_BOUNDARY).sum()) == 2 * (h + w) - 4
    assert data.pos.min() == 0 and data.pos.max() == 1
    torch.testing.assert_close(data.pos, torch.stack([i / (h - 1), j / (w - 1)], 1).float())
    # drawing back on the grid through grid_id reproduces the sample
    grid = torch.zeros(h * w)
    grid[data.grid_id] = data.y[:, 0]
    np.testing.assert_array_equal(grid.view(h, w).numpy(), y)
    assert data.x.shape == (h * w, 1) and data.x.dtype == torch.float32


def test_irregular_mesh_keeps_boundary_and_is_deterministic() -> None:
    h = w = 12
    x, y = _sample(h, w)
    data = mesh_from_grid(x, y, kind="irregular", keep_fraction=0.5, seed=4)
    n_boundary, n_interior = 2 * (h + w) - 4, (h - 2) * (w - 2)
    assert int((data.node_type == NODE_BOUNDARY).sum()) == n_boundary
    assert data.num_nodes == n_boundary + round(0.5 * n_interior)
    _check_edges(data)
    assert torch.equal(data.x[:, 0], torch.from_numpy(x.reshape(-1))[data.grid_id])
    assert torch.equal(data.y[:, 0], torch.from_numpy(y.reshape(-1))[data.grid_id])
    again = mesh_from_grid(x, y, kind="irregular", keep_fraction=0.5, seed=4)
    assert torch.equal(again.grid_id, data.grid_id) and torch.equal(again.edge_index, data.edge_index)
    other = mesh_from_grid(x, y, kind="irregular", keep_fraction=0.5, seed=5)
    assert not torch.equal(other.grid_id, data.grid_id)


def test_mesh_without_solution_and_bad_inputs() -> None:
    x, _ = _sample(6, 6)
    assert getattr(mesh_from_grid(x), "y", None) is None
    with pytest.raises(AMQError, match="kind"):
        mesh_from_grid(x, kind="hex")
    with pytest.raises(AMQError, match="keep_fraction"):
        mesh_from_grid(x, kind="irregular", keep_fraction=0.0)
    with pytest.raises(AMQError, match="shape"):
        mesh_from_grid(x, np.zeros((5, 6)))


def _meshes() -> list[MeshData]:
    out = []
    for seed in range(3):
        x, y = _sample(5, 6, seed)
        data = mesh_from_grid(3 * x + 1, 0.01 * y)
        data.x = torch.cat([data.x, torch.ones_like(data.x)], 1)  # a constant second channel
        out.append(data)
    return out


def test_normalizer_fit_apply_invert() -> None:
    meshes = _meshes()
    norm = Normalizer.fit(meshes)
    xs = torch.cat([norm.apply(m.x, "x") for m in meshes])
    torch.testing.assert_close(xs[:, 0].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(xs[:, 0].std(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert torch.all(xs[:, 1] == 0)  # constant channel: centred, not blown up
    for m in meshes:
        torch.testing.assert_close(norm.invert(norm.apply(m.y, "y"), "y"), m.y)
    normalized = norm.normalize(meshes[0])
    torch.testing.assert_close(normalized.y, norm.apply(meshes[0].y, "y"))
    assert normalized.edge_index is meshes[0].edge_index
    assert not torch.equal(normalized.x, meshes[0].x)  # the original is left alone


def test_normalizer_serialises_to_plain_values(tmp_path) -> None:
    norm = Normalizer.fit(_meshes())
    state = norm.to_dict()
    assert all(isinstance(v, float) for values in state.values() for v in values)
    torch.save({"normalizer": state}, tmp_path / "n.pt")
    loaded = torch.load(tmp_path / "n.pt", weights_only=True)["normalizer"]
    assert Normalizer.from_dict(loaded) == norm
    with pytest.raises(AMQError, match="normalizer"):
        Normalizer.from_dict({"x_mean": [0.0]})
    with pytest.raises(AMQError, match="normalizer"):
        Normalizer.from_dict({**state, "y_std": [0.0]})
    with pytest.raises(AMQError, match="zero meshes"):
        Normalizer.fit([])
