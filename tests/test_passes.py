"""Module-level passes: domain labelling, quantizer insertion and the pass manager."""

from __future__ import annotations

import copy
import logging
import re

import pytest
import torch
import torch.nn.functional as F
import torch_geometric.nn
from torch import Tensor, nn

from amq_export.amq.quant_linear import AdaptiveQuantLinear, calibration_mode
from amq_export.data.mesh_data import MeshData
from amq_export.errors import AMQError
from amq_export.models import MPPDE, GraphViT
from passes import FindDomains, InsertQuantizers, PassContext, PassManager, probe_mesh


class Toy(nn.Module):
    """One Linear per domain, a GRU over the cluster tokens, a 1-row global Linear, a functional Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.config = {"in_features": 3, "spatial_dim": 2}
        self.node_lin = nn.Linear(3, 8)
        self.edge_lin = torch_geometric.nn.Linear(16, 8)
        self.cluster_gru = nn.GRU(8, 8, batch_first=True)
        self.cluster_lin = nn.Linear(8, 8)
        self.global_lin = nn.Linear(8, 2)
        self.functional = nn.Linear(8, 8)  # only its weights are used, by F.linear

    def forward(self, data: MeshData) -> Tensor:
        h = self.node_lin(data.x)
        src, dst = data.edge_index
        h = h + h.new_zeros(h.shape).index_add(0, dst, self.edge_lin(torch.cat([h[src], h[dst]], dim=-1)))
        member, cid = data.cluster_index
        tokens = h.new_zeros(int(cid.max()) + 1, 8).index_add(0, cid, h[member])
        tokens = self.cluster_lin(self.cluster_gru(tokens.unsqueeze(0))[0].squeeze(0))
        h = F.linear(h + tokens[cid], self.functional.weight, self.functional.bias)
        return h + self.global_lin(h.mean(0, keepdim=True)).sum()


def _mesh(n: int = 40, clusters: int = 5, in_features: int = 1, seed: int = 0) -> MeshData:
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(n).repeat_interleave(3)
    dst = torch.randint(0, n, (3 * n,), generator=g)
    keep = src != dst
    nodes = torch.arange(n)
    return MeshData(
        x=torch.randn(n, in_features, generator=g), pos=torch.rand(n, 2, generator=g),
        edge_index=torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])]),
        node_type=torch.randint(0, 2, (n,), generator=g), cluster_index=torch.stack([nodes, nodes % clusters]),
    )


def _table(model: nn.Module, **config) -> dict[str, tuple[str, str, bool]]:
    ctx = PassContext(bits=(4, 8), **config)
    FindDomains().run(model, ctx)
    return {layer.name: (layer.kind, layer.domain, layer.quantized) for layer in ctx.layers}


def _graphvit() -> GraphViT:
    return GraphViT(in_features=1, hidden=16, w_size=16, nb_gn=1, n_attention=1, n_heads=2)


def test_probe_mesh_counts_differ() -> None:
    data = probe_mesh({"in_features": 2, "spatial_dim": 3, "n_variables": 2, "num_node_types": 3})
    counts = {data.num_nodes, data.edge_index.size(1), data.num_clusters}
    assert len(counts) == 3 and 1 not in counts
    assert data.x.shape == (24, 2) and data.pos.shape == (24, 3) and data.variables.shape == (24, 2)
    assert int(data.node_type.max()) < 3


def test_find_domains_on_toy_model() -> None:
    assert _table(Toy()) == {
        "node_lin": ("linear", "node", True),
        "edge_lin": ("linear", "edge", True),
        "cluster_gru": ("gru", "cluster", False),
        "cluster_lin": ("linear", "cluster", True),
        "global_lin": ("linear", "other", False),
        "functional": ("linear", "other", False),
    }


def test_float_layers_and_macs() -> None:
    ctx = PassContext(bits=(4, 8))
    FindDomains().run(Toy(), ctx)
    macs = {layer.name: layer.macs_per_row for layer in ctx.layers}
    assert macs["edge_lin"] == 16 * 8 and macs["cluster_gru"] == 3 * (8 * 8 + 8 * 8)
    assert ctx.float_layers == [("cluster_gru", "cluster", 3 * 128, 1)]  # "other" rows cannot be counted


def test_overrides_by_pattern() -> None:
    ctx = PassContext(bits=(4, 8), domain_overrides={"node_*": "other", "global_lin": "node", "nope*": "edge"})
    changes = FindDomains().run(Toy(), ctx)
    table = {layer.name: (layer.domain, layer.quantized) for layer in ctx.layers}
    assert table["node_lin"] == ("other", False) and table["global_lin"] == ("node", True)
    assert "override pattern 'nope*' matched no layer" in changes
    with pytest.raises(AMQError, match="unknown domains"):
        PassContext(bits=(4, 8), domain_overrides={"x": "face"})


def test_insert_quantizers_swaps_exactly_the_labelled_linears() -> None:
    model = Toy()
    ctx = PassContext(bits=(4, 8))
    PassManager([FindDomains(), InsertQuantizers()]).run(model, ctx)
    swapped = {name for name, m in model.named_modules() if isinstance(m, AdaptiveQuantLinear)}
    assert swapped == {"node_lin", "edge_lin", "cluster_lin"}
    assert type(model.global_lin) is nn.Linear and type(model.functional) is nn.Linear
    assert isinstance(model.cluster_gru, nn.GRU)
    assert all(m.state is ctx.state for m in model.modules() if isinstance(m, AdaptiveQuantLinear))
    assert [(c.name, c.domain, c.macs_per_row) for c in ctx.layer_costs] == [
        ("node_lin", "node", 24), ("edge_lin", "edge", 128), ("cluster_lin", "cluster", 64)]
    data = _mesh(in_features=3)
    with torch.no_grad(), calibration_mode(model):
        model(data)
    for domain, rows in [("node", 40), ("edge", data.edge_index.size(1)), ("cluster", 5)]:
        ctx.state.bits[domain] = torch.full((rows,), 4)
    assert model(data).shape == (40, 8)


def test_mppde_domains() -> None:
    table = _table(MPPDE(in_features=1, out_features=1, hidden=16, layers=2))
    assert len(table) == 12
    for name, (kind, domain, quantized) in table.items():
        assert kind == "linear" and quantized
        assert domain == ("edge" if "message_mlp" in name else "node"), name


GRAPHVIT_RULES = [  # (name pattern, kind, domain, quantized)
    (r"transformer\.0\.attn\.out_proj", "linear", "cluster", False),
    (r"transformer\.0\.attn", "multiheadattention", "cluster", False),
    (r"(transformer\.0\.ln\d|final_ln)", "layernorm", "cluster", False),
    (r"pool_mlp\.\d|transformer\.0\.(proj|mlp\.\d)", "linear", "cluster", True),
    (r"pool_gru", "gru", "node", False),
    (r"(processor\.0\.)?edge_mlp\.5", "layernorm", "edge", False),
    (r"(processor\.0\.)?node_mlp\.5", "layernorm", "node", False),
    (r"(edge_encoder|(processor\.0|decoder)\.edge_mlp)\.\d", "linear", "edge", True),
    (r"(node_encoder|(processor\.0|decoder)\.node_mlp|final_mlp)\.\d", "linear", "node", True),
]


def test_graphvit_domains() -> None:
    table = _table(_graphvit())
    for name, got in table.items():
        rule = next(r for r in GRAPHVIT_RULES if re.fullmatch(r[0], name))
        assert got == rule[1:], name
    assert sum(quantized for _, _, quantized in table.values()) == 24


@pytest.mark.parametrize("make", [lambda: MPPDE(in_features=1, out_features=1, hidden=16, layers=2), _graphvit])
def test_8_bit_model_close_to_float(make) -> None:
    torch.manual_seed(0)
    model = make()
    reference = copy.deepcopy(model)
    ctx = PassContext(bits=(8,))
    PassManager([FindDomains(), InsertQuantizers()]).run(model, ctx)
    data = _mesh()
    with torch.no_grad(), calibration_mode(model):
        model(data)
    ctx.state.bits = {"node": torch.full((40,), 8), "edge": torch.full((data.edge_index.size(1),), 8),
                      "cluster": torch.full((5,), 8)}
    model.eval()
    with torch.no_grad():
        quantized, float_out = model(data), reference(data)
    assert (quantized - float_out).norm() / float_out.norm() < 0.03


def test_calibrated_state_dict_round_trip() -> None:
    """A fresh quantized model loading a calibrated state_dict computes the same (scales, ranges included)."""
    torch.manual_seed(0)
    models, states = [], []
    for _ in range(2):
        model = MPPDE(in_features=1, out_features=1, hidden=16, layers=2)
        ctx = PassContext(bits=(3, 6), per_bucket_weight_bits=True)
        PassManager([FindDomains(), InsertQuantizers()]).run(model, ctx)
        models.append(model)
        states.append(ctx.state)
    data = _mesh()
    with torch.no_grad(), calibration_mode(models[0]):
        models[0](data)
    models[1].load_state_dict(models[0].state_dict())
    g = torch.Generator().manual_seed(1)
    bits = {"node": 3 + 3 * torch.randint(0, 2, (40,), generator=g),
            "edge": 3 + 3 * torch.randint(0, 2, (data.edge_index.size(1),), generator=g)}
    outputs = []
    for model, state in zip(models, states, strict=True):
        state.bits = bits
        with torch.no_grad():
            outputs.append(model(data))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert torch.equal(models[1].encoder[0].input_range, models[0].encoder[0].input_range)


class _NeedsQuantizers:
    name = "needs_quantizers"
    requires = frozenset({"quantizers"})
    guarantees = frozenset({"calibrated"})

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]:
        return ["nothing to do"]


def test_manager_checks_requirements_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    model, ctx = Toy(), PassContext(bits=(4, 8))
    with pytest.raises(ValueError, match=r"'insert_quantizers' requires \['domains'\]"):
        PassManager([InsertQuantizers(), FindDomains()]).run(model, ctx)
    assert not any(isinstance(m, AdaptiveQuantLinear) for m in model.modules())  # checked before running
    with caplog.at_level(logging.INFO, logger="amq_export.passes"):
        report = PassManager([FindDomains(), InsertQuantizers()]).run(model, ctx)
    assert [name for name, _ in report] == ["find_domains", "insert_quantizers"]
    assert len(report[0][1]) == 6 and len(report[1][1]) == 3
    assert any(r.message.startswith("insert_quantizers: edge_lin: Linear(16, 8) -> AdaptiveQuantLinear(edge")
               for r in caplog.records)
    assert ctx.done == {"domains", "quantizers"}
    # A later manager on the same context continues where this one stopped.
    assert PassManager([_NeedsQuantizers()]).run(model, ctx) == [("needs_quantizers", ["nothing to do"])]
    with pytest.raises(ValueError, match="already holds quantized layers"):
        FindDomains().run(model, ctx)


def test_context_validates_config() -> None:
    assert PassContext(bits=[8, 4, 4]).bits == (4, 8)
    with pytest.raises(AMQError):
        PassContext(bits=(1, 4))
    with pytest.raises(AMQError, match="weight_bits"):
        PassContext(bits=(4,), weight_bits=9)
