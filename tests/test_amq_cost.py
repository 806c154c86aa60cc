"""The BOPs cost model, by hand and against the allocator's own accounting."""

from __future__ import annotations

import math

import pytest
import torch

from amq_export.amq.allocation import EMPTY_ITEM_COST, allocate_budget, edge_bits, node_item_costs
from amq_export.amq.cost import LayerCost, aux_bops, bops

LAYERS = [LayerCost("node_mlp", "node", 3, 4, 8), LayerCost("edge_mlp", "edge", 5, 2, 8)]
DECODER = [("decoder", "node", 4, 1)]


def test_hand_computed_example():
    rows_bits = {"node": torch.tensor([2, 4, 8]), "edge": torch.tensor([4, 4, 6, 6])}
    cost = bops(LAYERS, rows_bits, DECODER, aux_macs=10)
    # node layer: 12 MACs/row * 8 w-bits * (2 + 4 + 8) = 1344; edge layer: 10 * 8 * 20 = 1600
    assert cost["quantized_bops"] == 1344 + 1600
    assert cost["quantized_macs"] == 12 * 3 + 10 * 4
    assert cost["float_bops"] == 4 * 1 * 3 * 16 * 16
    assert cost["aux_bops"] == aux_bops(10) == 10 * 64
    assert cost["bops"] == 2944 + 3072 + 640
    # MAC-weighted mean activation bits: (36 * 14/3 + 40 * 5) / 76; float layers do not enter it
    assert cost["b_eff"] == pytest.approx((36 * 14 / 3 + 40 * 5) / 76)
    assert cost["b_eff"] == bops(LAYERS, rows_bits)["b_eff"]
    assert cost["b_charged"] == pytest.approx((2944 + 640) / (8 * 76))


def test_layer_offsets_add_bits_to_every_row_of_their_layer():
    rows_bits = {"node": torch.tensor([2, 4, 8]), "edge": torch.tensor([4, 4, 6, 6])}
    shifted = [LayerCost("node_mlp", "node", 3, 4, 8, offset=2), LayerCost("edge_mlp", "edge", 5, 2, 8, offset=-1)]
    cost = bops(shifted, rows_bits)
    # node layer: 12 * 8 * (4 + 6 + 10) = 1920; edge layer: 10 * 8 * (3 + 3 + 5 + 5) = 1280
    assert cost["quantized_bops"] == 1920 + 1280
    assert cost["b_eff"] == pytest.approx((36 * 20 / 3 + 40 * 4) / 76)


def test_uniform_model_has_exact_b_eff():
    layers = [*LAYERS, LayerCost("cluster_attn", "cluster", 7, 9, 4)]
    for b in range(2, 9):
        rows_bits = {"node": torch.full((5,), b), "edge": torch.full((11,), b), "cluster": torch.full((2,), b)}
        assert bops(layers, rows_bits, DECODER)["b_eff"] == b


def test_row_counts_for_float_layers():
    cost = bops(LAYERS, {"node": torch.tensor([4]), "edge": torch.tensor([4])}, [("pool", "cluster", 2, 3)],
                rows={"cluster": 7})
    assert cost["float_bops"] == 2 * 3 * 7 * 256
    assert math.isnan(bops([], {}, [("pool", "cluster", 2, 3)], rows={"cluster": 7})["b_eff"])
    with pytest.raises(ValueError, match="no row count for domain 'cluster'"):
        bops(LAYERS, {"node": torch.tensor([4]), "edge": torch.tensor([4])}, [("pool", "cluster", 2, 3)])
    with pytest.raises(ValueError, match="no row bit-widths for domain 'edge'"):
        bops(LAYERS, {"node": torch.tensor([4])})
    with pytest.raises(ValueError, match=r"rows\['node'\] = 2 but rows_bits\['node'\] has 1 rows"):
        bops(LAYERS, {"node": torch.tensor([4]), "edge": torch.tensor([4])}, rows={"node": 2})


def test_allocation_costs_match_bops():
    """Node item costs with the target edge rule account for exactly the BOPs the model spends."""
    gen = torch.Generator().manual_seed(0)
    num_nodes, num_edges, w = 50, 200, 8
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    layers = [LayerCost("enc", "node", 16, 32, w), LayerCost("upd", "node", 32, 32, w),
              LayerCost("msg", "edge", 40, 32, w)]
    costs = node_item_costs(16 * 32 + 32 * 32, 40 * 32, edge_index, num_nodes, w)
    has_rows = costs > EMPTY_ITEM_COST
    scores = torch.rand(num_nodes, 2, generator=gen)
    aux_macs = 3000
    bits = allocate_budget(scores.reshape(-1), costs.reshape(-1), (3, 4, 5, 6), 4.5,
                           fixed_cost=aux_bops(aux_macs)).view(num_nodes, 2)
    cost = bops(layers, {"node": bits[:, 0], "edge": edge_bits(bits[:, 1], edge_index)}, aux_macs=aux_macs)
    assert cost["quantized_bops"] == int((costs * bits)[has_rows].sum())
    assert cost["b_eff"] == pytest.approx(float((costs * bits)[has_rows].sum() / costs[has_rows].sum()))
    assert cost["b_charged"] <= 4.5
