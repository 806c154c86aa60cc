"""MP-PDE: shapes, graph symmetries, empty inputs, config round trip and the reference importer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from amq_export.data.mesh_data import MeshData
from amq_export.errors import AMQError
from amq_export.models.mppde import MPPDE, from_reference, reference_comparisons

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("AMQ_REFERENCE_DIR", REPO.parent / "shared" / "reference"))

REFERENCE_CONFIG = {
    "time_window": 25, "hidden_features": 128, "hidden_layer": 2, "eq_variables": {"alpha": 3.0},
    "eq_variable_order": ["alpha"], "n_variables": 2, "tmax": 4.0, "L": 16.0, "dt": 0.016,
}


def _mesh(n: int, spatial_dim: int = 2, features: int = 1, n_variables: int = 0, seed: int = 0) -> MeshData:
    """A random graph: 3 random neighbours per node, both edge directions, random node types."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, spatial_dim, generator=g)
    src = torch.arange(n).repeat_interleave(3)
    dst = torch.randint(0, n, (3 * n,), generator=g)
    keep = src != dst
    edge_index = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
    data = MeshData(x=torch.randn(n, features, generator=g), pos=pos, edge_index=edge_index,
                    node_type=torch.randint(0, 2, (n,), generator=g))
    if n_variables:
        data.variables = torch.randn(n, n_variables, generator=g)
    return data


def _small(**kwargs) -> MPPDE:
    torch.manual_seed(0)
    return MPPDE(**{"in_features": 1, "hidden": 16, "layers": 2, **kwargs}).eval()


def _reference_state_dict(model: MPPDE) -> dict[str, torch.Tensor]:
    """Our state_dict under the reference's names (the inverse of the importer's renaming), in float64."""
    layer_names = {"message_mlp.0": "message_net_1.0", "message_mlp.2": "message_net_2.0",
                   "update_mlp.0": "update_net_1.0", "update_mlp.2": "update_net_2.0"}
    top_names = {"encoder": "embedding_mlp", "decoder": "output_mlp"}
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers":
            key = f"gnn_layers.{parts[1]}.{layer_names[parts[2] + '.' + parts[3]]}.{parts[4]}"
        else:
            key = ".".join([top_names[parts[0]], *parts[1:]])
        out[key] = value.double()  # the reference trains in float64
    return out


def test_steady_shapes_2d():
    model = _small(out_features=3)
    data = _mesh(12)
    assert model(data).shape == (12, 3)
    assert model.config["num_node_types"] == 2 and model.config["n_variables"] == 0


@pytest.mark.parametrize("spatial_dim", [1, 3])
def test_spatial_dims(spatial_dim: int):
    model = _small(spatial_dim=spatial_dim, n_variables=2, variable_scales=[2.0, 0.5], in_features=4)
    out = model(_mesh(10, spatial_dim=spatial_dim, features=4, n_variables=2))
    assert out.shape == (10, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("tw", [20, 25, 50])
def test_unsteady_time_windows_and_bundling(tw: int):
    model = MPPDE(in_features=tw, spatial_dim=1, n_variables=1, layers=1, mode="unsteady", dt=0.5).eval()
    data = _mesh(7, spatial_dim=1, features=tw, n_variables=1)
    assert model(data).shape == (7, tw)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.zero_()
        model.decoder[-1].bias.fill_(1.0)  # d = 1: out[:, k] = u_last + (k + 1) * dt
    expected = data.x[:, -1:] + 0.5 * torch.arange(1, tw + 1)
    torch.testing.assert_close(model(data), expected)


def test_unsteady_rejects_bad_config():
    with pytest.raises(AMQError, match="time windows"):
        MPPDE(in_features=10, mode="unsteady")
    with pytest.raises(AMQError, match="hidden 128"):
        MPPDE(in_features=25, hidden=64, mode="unsteady")
    with pytest.raises(AMQError, match="must equal"):
        MPPDE(in_features=25, out_features=5, mode="unsteady")
    with pytest.raises(AMQError, match="variable_scales"):
        MPPDE(in_features=1, n_variables=2, variable_scales=[1.0])


def test_batch_equals_separate_graphs():
    model = _small(n_variables=1)
    graphs = [_mesh(9, n_variables=1, seed=1), _mesh(14, n_variables=1, seed=2)]
    with torch.no_grad():
        batched = model(Batch.from_data_list(graphs))
        separate = torch.cat([model(g) for g in graphs])
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)


def test_permutation_equivariance():
    model = _small(n_variables=1)
    data = _mesh(15, n_variables=1)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(15)
    permuted = MeshData(x=data.x[perm], pos=data.pos[perm], node_type=data.node_type[perm],
                        variables=data.variables[perm], edge_index=inverse[data.edge_index])
    with torch.no_grad():
        torch.testing.assert_close(model(permuted), model(data)[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["steady", "unsteady"])
def test_empty_nodes_and_edges(mode: str):
    features = 25 if mode == "unsteady" else 1
    model = MPPDE(in_features=features, mode=mode, layers=1).eval()
    empty = MeshData(x=torch.zeros(0, features), pos=torch.zeros(0, 2), edge_index=torch.zeros(2, 0, dtype=torch.long),
                     node_type=torch.zeros(0, dtype=torch.long))
    assert model(empty).shape == (0, features)
    no_edges = _mesh(6, features=features)
    no_edges.edge_index = torch.zeros(2, 0, dtype=torch.long)
    out = model(no_edges)
    assert out.shape == (6, features) and torch.isfinite(out).all()


def test_config_round_trip():
    model = _small(spatial_dim=3, n_variables=2, variable_scales=[3.0, 0.4], out_features=2, pos_scale=2.0)
    rebuilt = MPPDE(**model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    data = _mesh(8, spatial_dim=3, n_variables=2)
    torch.testing.assert_close(rebuilt(data), model(data), atol=0, rtol=0)


def _reference_model() -> MPPDE:
    torch.manual_seed(0)
    return MPPDE(in_features=25, spatial_dim=1, n_variables=2, hidden=128, layers=2, mode="unsteady", dt=0.016,
                 pos_scale=16.0, variable_scales=[4.0, 3.0]).eval()


def test_from_reference_renames_and_casts():
    source = _reference_model()
    model = from_reference(_reference_state_dict(source), REFERENCE_CONFIG).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config == source.config
    data = _mesh(6, spatial_dim=1, features=25, n_variables=2)
    torch.testing.assert_close(model(data), source(data), atol=0, rtol=0)


def test_from_reference_lists_key_and_shape_problems():
    state_dict = _reference_state_dict(_reference_model())
    del state_dict["gnn_layers.1.update_net_2.0.bias"]
    state_dict["gnn_layers.0.norm.extra"] = torch.zeros(1)
    state_dict["embedding_mlp.0.weight"] = torch.zeros(128, 30)
    with pytest.raises(AMQError) as info:
        from_reference(state_dict, REFERENCE_CONFIG)
    message = str(info.value)
    assert "layers.1.update_mlp.2.bias" in message
    assert "gnn_layers.0.norm.extra" in message
    assert "encoder.0.weight" in message and "(128, 30)" in message


def test_reference_fixture_e1():
    path = REFERENCE_DIR / "mppde_ce_E1_tw25.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set AMQ_REFERENCE_DIR to the folder holding it)")
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    model = from_reference(fixture["state_dict"], fixture["config"]).eval()
    with torch.no_grad():
        ours, ref = reference_comparisons(model, fixture)["output"]
    assert ours.shape == ref.shape
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-5
