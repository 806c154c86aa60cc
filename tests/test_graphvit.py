"""GraphViT: shapes, batching, equivariance, config round trip, reference import errors, reference fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from amq_export.data.mesh_data import NODE_BOUNDARY, NODE_INTERIOR, MeshData
from amq_export.errors import AMQError
from amq_export.models import build_model
from amq_export.models.graphvit import (
    GraphViT,
    _reference_model_config,
    _reference_name,
    from_reference,
    reference_comparisons,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("AMQ_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
SMALL = {"hidden": 16, "w_size": 32, "n_attention": 2, "nb_gn": 2, "n_heads": 4}


def grid_mesh(n: int, block: int, seed: int = 0) -> MeshData:
    """n x n triangulated grid on the unit square; clusters are block x block squares, members row-major."""
    g = torch.Generator().manual_seed(seed)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.flatten(), j.flatten()
    node = i * n + j
    pairs = []
    for di, dj in ((0, 1), (1, 0), (1, 1)):
        ok = (i + di < n) & (j + dj < n)
        pairs.append(torch.stack([node[ok], node[ok] + di * n + dj]))
    und = torch.cat(pairs, dim=1)
    cluster = (i // block) * ((n + block - 1) // block) + j // block
    order = torch.argsort(cluster * n * n + node)
    boundary = (i == 0) | (j == 0) | (i == n - 1) | (j == n - 1)
    return MeshData(
        x=torch.rand(n * n, 1, generator=g),
        pos=torch.stack([i, j], dim=-1).float() / (n - 1) + 0.01 * torch.rand(n * n, 2, generator=g),
        edge_index=torch.cat([und, und.flip(0)], dim=1),
        node_type=torch.where(boundary, NODE_BOUNDARY, NODE_INTERIOR),
        cluster_index=torch.stack([node[order], cluster[order]]),
    )


def small_model(**overrides) -> GraphViT:
    torch.manual_seed(0)
    return GraphViT(**{**SMALL, **overrides}).eval()


def test_steady_shapes_and_gradients():
    model = GraphViT(**SMALL)
    data = grid_mesh(9, 3)
    out = model(data)
    assert out.shape == (81, 1) and out.isfinite().all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_batch_equals_separate_runs():
    model = small_model()
    graphs = [grid_mesh(8, 3, seed=1), grid_mesh(6, 2, seed=2)]
    with torch.no_grad():
        batched = model(Batch.from_data_list(graphs))
        separate = torch.cat([model(g) for g in graphs])
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-6)


def test_node_permutation_equivariance():
    model = small_model()
    data = grid_mesh(8, 3, seed=3)
    n = data.num_nodes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    inv = torch.argsort(perm)
    member, cid = data.cluster_index
    # Relabel clusters too and list memberships round-robin across clusters (each cluster's order kept).
    cluster_perm = torch.randperm(int(cid.max()) + 1, generator=torch.Generator().manual_seed(1))
    slot = torch.tensor([int((cid[:k] == cid[k]).sum()) for k in range(cid.numel())])
    columns = torch.argsort(slot * n + cluster_perm[cid])
    permuted = MeshData(
        x=data.x[perm],
        pos=data.pos[perm],
        node_type=data.node_type[perm],
        edge_index=inv[data.edge_index],
        cluster_index=torch.stack([inv[member[columns]], cluster_perm[cid[columns]]]),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(permuted), model(data)[perm], rtol=1e-5, atol=1e-6)


def test_empty_cluster_is_masked():
    """A cluster id without members (as in the padded reference batches) changes nothing for real nodes."""
    model = small_model()
    data = grid_mesh(7, 3, seed=4)
    member, cid = data.cluster_index
    holed = MeshData(**{**data.to_dict(), "cluster_index": torch.stack([member, cid + (cid >= 2).long()])})
    with torch.no_grad():
        torch.testing.assert_close(model(holed), model(data), rtol=1e-5, atol=1e-6)


def test_unsteady_forcing_and_empty_graphs():
    model = small_model(in_features=2, mode="unsteady", held_node_types=[NODE_BOUNDARY])
    data = grid_mesh(6, 3)
    data.x = torch.rand(36, 2)
    boundary = data.node_type == NODE_BOUNDARY
    with torch.no_grad():
        delta = model.delta(data)
        kept = model(data)
        data.forcing = torch.full((36, 2), 7.0)
        forced = model(data)
        no_edges = model(MeshData(**{**data.to_dict(), "edge_index": torch.zeros(2, 0, dtype=torch.long)}))
        empty = model(
            MeshData(
                x=torch.zeros(0, 2),
                pos=torch.zeros(0, 2),
                node_type=torch.zeros(0, dtype=torch.long),
                edge_index=torch.zeros(2, 0, dtype=torch.long),
                cluster_index=torch.zeros(2, 0, dtype=torch.long),
            )
        )
    assert torch.equal(kept[boundary], data.x[boundary]) and (forced[boundary] == 7.0).all()
    torch.testing.assert_close(forced[~boundary], (data.x + delta)[~boundary])
    assert no_edges.shape == (36, 2) and no_edges.isfinite().all() and empty.shape == (0, 2)
    with pytest.raises(AMQError, match="cluster_index"):
        model(MeshData(x=data.x, pos=data.pos, node_type=data.node_type, edge_index=data.edge_index))


def test_config_round_trip():
    model = small_model(n_attention=1, held_node_types=(1,), mode="unsteady", out_features=None)
    assert GraphViT(**model.config).config == model.config
    rebuilt = build_model("graphvit", model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    data = grid_mesh(5, 2)
    with torch.no_grad():
        assert torch.equal(rebuilt(data), model(data))
    assert all(isinstance(v, (int, float, str, list)) for v in model.config.values())
    with pytest.raises(AMQError, match="n_heads"):
        GraphViT(w_size=30, n_heads=4)
    with pytest.raises(AMQError, match="mode"):
        GraphViT(mode="implicit")


REFERENCE_CONFIG = {
    "state_size": 4,
    "w_size": 32,
    "n_attention": 1,
    "nb_gn": 1,
    "n_heads": 4,
    "pos_start": -3,
    "pos_length": 8,
    "node_type_classes": 9,
    "encoder_latent": 16,
}


def reference_state_dict() -> dict[str, torch.Tensor]:
    """A state_dict under the reference's names, as the reference would save it for REFERENCE_CONFIG."""
    model = GraphViT(**_reference_model_config(REFERENCE_CONFIG))
    return {_reference_name(k): v.double() for k, v in model.state_dict().items()}


def test_from_reference_loads_and_casts():
    state = reference_state_dict()
    model = from_reference(state, REFERENCE_CONFIG)
    assert model.config["mode"] == "unsteady" and model.config["held_node_types"] == [2, 4, 6]
    assert torch.equal(model.final_ln.weight, state["ln.weight"].float())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_from_reference_errors_list_keys():
    state = reference_state_dict()
    del state["graph_pooling.rnn_pooling.weight_hh_l0"]
    state["attention.0.extra.weight"] = torch.zeros(3)
    state["ln.weight"] = torch.zeros(5)
    with pytest.raises(AMQError) as err:
        from_reference(state, REFERENCE_CONFIG)
    message = str(err.value)
    assert "missing keys ['pool_gru.weight_hh_l0']" in message
    assert "unexpected keys ['attention.0.extra.weight']" in message
    assert "final_ln.weight: file (5,) vs model (32,)" in message
    with pytest.raises(AMQError, match="w_size"):
        from_reference(state, {k: v for k, v in REFERENCE_CONFIG.items() if k != "w_size"})


def test_reference_fixture():
    path = REFERENCE_DIR / "graphvit_eagle_default.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set AMQ_REFERENCE_DIR to the reference folder)")
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    model = from_reference(fixture["state_dict"], fixture["config"]).eval()
    with torch.no_grad():
        pairs = reference_comparisons(model, fixture)
    assert set(pairs) == {"output_hat", "target", "state_hat[:, 1:]"}
    for name, (ours, ref) in pairs.items():
        assert ours.shape == ref.shape == (int(fixture["aux"]["node_mask"][:, 1:].sum()), 4), name
        rel = ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
        assert rel <= 1e-5, f"{name}: relative error {rel:.3e}"
