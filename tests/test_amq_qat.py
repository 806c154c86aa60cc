"""quantize -> calibrate -> joint QAT -> evaluate -> save/load, end to end on tiny meshes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amq_export.amq.config import AMQConfig
from amq_export.api import assign_layerwise_bits, evaluate, finetune, load_quantized, save_quantized
from amq_export.errors import AMQError


@pytest.fixture(scope="module")
def shared(tiny, qmodel_factory):
    """One quantized MP-PDE for the tests that only run it (those that train build their own)."""
    return qmodel_factory(tiny)


def test_pass_report_lists_every_pass(shared):
    q = shared
    assert [name for name, _ in q.pass_report] == ["find_domains", "insert_quantizers", "runtime_activations",
                                                    "attach_auxiliary", "calibrate"]
    assert {layer.domain for layer in q.layers} == {"node", "edge"}


@pytest.mark.parametrize("mode", ["aux", "uniform", "random", "oracle"])
def test_budget_is_met_exactly(tiny, shared, mode):
    q = shared
    for budget in (3.5, 4.0, 4.5, 6.0):
        metrics = evaluate(q, tiny.test, normalizer=tiny.normalizer, budget=budget, mode=mode)
        assert metrics["b_eff_max"] <= budget + 1e-9
        assert metrics["b_eff"] >= budget - 0.02
    if mode == "aux":  # the auxiliary model's own cost is charged: the lowest option alone cannot pay for it
        with pytest.raises(AMQError, match="fixed cost"):
            evaluate(q, tiny.test, normalizer=tiny.normalizer, budget=3.0, mode=mode)


def test_uniform_gives_uniform_bits(tiny, shared):
    q = shared
    out = q(tiny.test[0], budget=5.0, mode="uniform")
    assert set(out.node_bits.tolist()) == {5} and set(out.edge_bits.tolist()) == {5}
    assert out.cost["b_eff"] == 5.0


def test_node_rows_and_edge_rows_are_separate_items(tiny, shared):
    """Every node's own rows and the rows of the edges it receives get their own bits: scores that favour
    the edge items give edges more bits than nodes, and edges follow their target's edge item."""
    q, mesh = shared, tiny.test[0]
    costs, _ = q.item_costs(mesh)
    assert costs.shape == (mesh.num_nodes, 2)
    for favoured in (0, 1):
        scores = costs.clone()
        scores[:, favoured] *= 1e3  # sensitivity per cost 1000x higher on one kind of item
        items, _ = q.allocate(mesh, 4.0, "oracle", scores=(scores, None))
        assert items.shape == (mesh.num_nodes, 2)
        assert bool((items[:, favoured] >= items[:, 1 - favoured]).all())
        assert items[:, favoured].float().mean() > items[:, 1 - favoured].float().mean()
        out = q(mesh, budget=4.0, mode="oracle", scores=(scores, None))
        assert torch.equal(out.node_bits, items[:, 0])
        assert torch.equal(out.edge_bits, items[mesh.edge_index[1], 1])
        assert 4.0 - 0.02 <= out.cost["b_eff"] <= 4.0


def test_forward_reports_bits_of_every_domain(tiny, qmodel_factory):
    q = qmodel_factory(tiny, arch="graphvit")
    mesh = tiny.test[0]
    out = q(mesh, mode="aux")
    assert out.pred.shape == mesh.y.shape
    assert out.node_bits.shape == (mesh.num_nodes,) and out.edge_bits.shape == (mesh.edge_index.shape[1],)
    assert out.cluster_bits is not None and out.cluster_bits.shape == (mesh.num_clusters,)
    assert out.cost["aux_bops"] > 0 and out.cost["b_eff"] <= 4.0


def test_joint_qat_lowers_the_loss_and_trains_the_aux_model(tiny, qmodel_factory):
    q = qmodel_factory(tiny)
    before = evaluate(q, tiny.val, normalizer=tiny.normalizer, mode="aux")["rel_l2"]
    aux_before = [p.detach().clone() for p in q.aux.parameters()]
    history = finetune(q, tiny.train, tiny.val, normalizer=tiny.normalizer, epochs=4, lr=2e-3, progress=False)
    assert history[-1]["val_rel_l2"] < before
    assert all(h["val_b_eff"] <= 4.0 + 1e-9 for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(aux_before, q.aux.parameters()))


def test_budget_range_trains_one_model_for_many_budgets(tiny, qmodel_factory):
    q = qmodel_factory(tiny)
    history = finetune(q, tiny.train, tiny.val, normalizer=tiny.normalizer, epochs=1, budget_range=(3.5, 6.0),
                       progress=False)
    assert len(history) == 1
    for budget in (3.5, 5.5):
        assert evaluate(q, tiny.test, normalizer=tiny.normalizer, budget=budget)["b_eff_max"] <= budget + 1e-9
    with pytest.raises(AMQError, match="budget range"):
        finetune(q, tiny.train, tiny.val, budget_range=(2.0, 6.0), progress=False)


def test_layerwise_baseline_spends_the_budget(tiny, qmodel_factory):
    q = qmodel_factory(tiny)
    bits = assign_layerwise_bits(q, tiny.train, normalizer=tiny.normalizer)
    assert set(bits) == {layer.name for layer in q.layers}
    assert set(bits.values()) <= set(q.amq_config.bits)
    metrics = evaluate(q, tiny.test, normalizer=tiny.normalizer, mode="layerwise")
    assert metrics["b_eff"] <= 4.0 + 1e-9


def test_save_load_round_trip(tiny, qmodel_factory, tmp_path: Path):
    q = qmodel_factory(tiny, arch="graphvit")
    finetune(q, tiny.train, tiny.val, normalizer=tiny.normalizer, epochs=1, progress=False)
    path = save_quantized(tmp_path / "q.pt", q, normalizer=tiny.normalizer.to_dict())
    assert torch.load(path, weights_only=True)["format"] == "amq-export/quantized"
    q2, meta = load_quantized(path)
    assert meta["normalizer"] == tiny.normalizer.to_dict()
    mesh = tiny.test[0]
    with torch.no_grad():
        a, b = q.eval()(mesh, mode="aux"), q2(mesh, mode="aux")
    assert torch.equal(a.node_bits, b.node_bits)
    torch.testing.assert_close(a.pred, b.pred)


def test_bad_configs_are_clear_errors(tiny, shared):
    with pytest.raises(AMQError, match="outside the bit options"):
        AMQConfig(budget=7.0, bits=(3, 4))
    with pytest.raises(AMQError, match="2..8"):
        AMQConfig(budget=4.0, bits=(1, 4))
    with pytest.raises(AMQError, match="weight_bits"):
        AMQConfig(weight_bits=16)
    q = shared
    with pytest.raises(AMQError, match="unknown allocation mode"):
        q(tiny.test[0], mode="greedy")
    with pytest.raises(AMQError, match="outside the bit options"):
        q(tiny.test[0], budget=8.0)


def test_oracle_sensitivities_fisher_and_gauss_newton(tiny, shared):
    """Both true sensitivities are >= 0 per node item (positive per node), differ from each other, and drive
    the oracle under the budget; an unknown one is a clear error."""
    from torch_geometric.data import Batch

    from amq_export.amq.qat import _true_scores

    q, mesh = shared, Batch.from_data_list([tiny.test[0]])
    fisher, _ = _true_scores(q, mesh, 4.0, tiny.normalizer, "fisher")
    gauss_newton, _ = _true_scores(q, mesh, 4.0, tiny.normalizer, "gauss-newton")
    assert fisher.shape == gauss_newton.shape == (mesh.num_nodes, 2)
    assert bool((fisher >= 0).all()) and bool((gauss_newton >= 0).all()) and bool((gauss_newton.sum(1) > 0).all())
    assert not torch.allclose(fisher / fisher.sum(), gauss_newton / gauss_newton.sum())
    again, _ = _true_scores(q, mesh, 4.0, tiny.normalizer, "gauss-newton")
    assert torch.equal(again, gauss_newton)  # seeded probes
    metrics = evaluate(q, tiny.test, normalizer=tiny.normalizer, budget=4.5, mode="oracle", sensitivity="gauss-newton")
    assert 4.5 - 0.02 <= metrics["b_eff"] and metrics["b_eff_max"] <= 4.5 + 1e-9
    with pytest.raises(AMQError, match="sensitivity 'hessian' is unknown"):
        _true_scores(q, mesh, 4.0, tiny.normalizer, "hessian")


def test_gauss_newton_aux_target_trains_the_aux_model(tiny, qmodel_factory):
    q = qmodel_factory(tiny, aux_target="gauss-newton")
    before = [p.detach().clone() for p in q.aux.parameters()]
    history = finetune(q, tiny.train, tiny.val, normalizer=tiny.normalizer, epochs=1, mode="aux", progress=False)
    assert history[0]["aux_loss"] > 0 and all(torch.isfinite(torch.tensor(h["train_rel_l2"])) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, q.aux.parameters(), strict=True))


def test_freeze_aux_trains_the_main_model_under_the_warm_started_allocation(tiny, qmodel_factory):
    """With ``freeze_aux`` the auxiliary model changes only in its warm start: QAT afterwards moves the main
    weights and leaves the auxiliary ones (hence each mesh's allocation) where the warm start put them."""
    from amq_export.amq.qat import fit_auxiliary

    q, twin = qmodel_factory(tiny), qmodel_factory(tiny)
    fit_auxiliary(twin, tiny.train, normalizer=tiny.normalizer, steps=50, progress=False)
    main_before = [p.detach().clone() for p in q.main.parameters()]
    history = finetune(q, tiny.train, tiny.val, normalizer=tiny.normalizer, epochs=1, mode="aux",
                       aux_prefit_steps=50, freeze_aux=True, progress=False)
    assert history[0]["aux_loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(twin.aux.parameters(), q.aux.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(main_before, q.main.parameters(), strict=True))
    for bad in ({"mode": "uniform"}, {"mode": "aux", "aux_prefit_steps": 0}):
        with pytest.raises(AMQError, match="freeze_aux"):
            finetune(q, tiny.train, tiny.val, epochs=1, freeze_aux=True, progress=False, **bad)


def test_fit_auxiliary_learns_the_sensitivity_ranking_and_leaves_the_main_model_alone(tiny, qmodel_factory):
    """The warm start fits the auxiliary model to the true sensitivities at uniform bits: on test meshes its
    rank agreement with them within each kind of node item goes from chance to high, and no main weight
    moves."""
    from amq_export.amq.qat import fit_auxiliary

    q = qmodel_factory(tiny)
    main_before = {k: v.clone() for k, v in q.main.state_dict().items()}

    def within_kind() -> list[float]:
        metrics = evaluate(q, tiny.test, normalizer=tiny.normalizer, with_spearman=True)
        return [metrics["aux_spearman_node_rows"], metrics["aux_spearman_edge_rows"]]

    assert min(within_kind()) < 0.5
    fit = fit_auxiliary(q, tiny.train, normalizer=tiny.normalizer, steps=1000, progress=False)
    assert fit["loss_last"] < 0.5 * fit["loss_first"]
    assert min(within_kind()) > 0.75
    assert all(torch.equal(v, q.main.state_dict()[k]) for k, v in main_before.items())
    with pytest.raises(AMQError, match="steps >= 1"):
        fit_auxiliary(q, tiny.train, steps=0)


def test_layer_offsets_shift_each_layers_buckets_and_the_budget_still_holds(tiny, qmodel_factory):
    """Offsets from the layers' sensitivities: each layer's bank runs at the options plus its offset, the
    offsets' BOPs come off the budget first, and every mode still spends the budget to within one step."""
    from amq_export.api import choose_layer_offsets

    offsets = choose_layer_offsets(qmodel_factory(tiny), tiny.train, normalizer=tiny.normalizer)
    assert set(offsets) == {layer.name for layer in qmodel_factory(tiny).layers}
    assert len(set(offsets.values())) > 1 and all(0 <= o <= 2 for o in offsets.values())  # no row below 3 bits
    q = qmodel_factory(tiny, layer_offsets=offsets)
    for module in q.main.modules():
        if hasattr(module, "bank_bits"):
            assert module.bank_bits == tuple(b + offsets[module.name] for b in q.amq_config.bits)
            assert [int(p.bit_width) for p in module.act_quant_params()] == list(module.bank_bits)
    for mode in ("aux", "uniform", "oracle"):
        for budget in (4.0, 5.0):
            metrics = evaluate(q, tiny.test, normalizer=tiny.normalizer, budget=budget, mode=mode)
            assert budget - 0.02 <= metrics["b_eff"] and metrics["b_eff_max"] <= budget + 1e-9, (mode, budget)
    with pytest.raises(AMQError, match="layer offsets"):
        AMQConfig(budget=4.0, layer_offsets={"encoder.0": 3})  # options 3..6 shifted to 6..9
    with pytest.raises(AMQError, match="without layer_offsets"):
        choose_layer_offsets(q, tiny.train, normalizer=tiny.normalizer)


def test_layerwise_offset_profile_is_the_layerwise_bits_relative_to_each_domain(tiny, qmodel_factory):
    from amq_export.api import choose_layer_offsets

    q = qmodel_factory(tiny)
    offsets = choose_layer_offsets(q, tiny.train, normalizer=tiny.normalizer, profile="layerwise")
    layer_bits = assign_layerwise_bits(q, tiny.train, normalizer=tiny.normalizer)
    for domain in {layer.domain for layer in q.layers}:
        names = [layer.name for layer in q.layers if layer.domain == domain]
        lowest = min(layer_bits[n] for n in names)
        assert {n: offsets[n] for n in names} == {n: min(layer_bits[n] - lowest, 2) for n in names}
    with pytest.raises(AMQError, match="offset profile"):
        choose_layer_offsets(q, tiny.train, profile="hawq")


def test_layerwise_base_profile_puts_items_at_one_option_and_each_layer_at_its_layerwise_bits(tiny, qmodel_factory):
    """``profile="layerwise-base"``: offsets ``b_l - c``, so that items all at ``c`` run the per-layer baseline;
    a layer whose bank would leave 2..8 gets the nearest offset that fits."""
    from amq_export.amq.qat import layerwise_base
    from amq_export.api import choose_layer_offsets

    q = qmodel_factory(tiny)  # budget 4: options 3..6, offsets -1..2 keep every bank inside 2..8
    offsets = choose_layer_offsets(q, tiny.train, normalizer=tiny.normalizer, profile="layerwise-base")
    layer_bits = assign_layerwise_bits(q, tiny.train, normalizer=tiny.normalizer)
    base, same = layerwise_base(q, [layer_bits[layer.name] for layer in q.layers])
    assert same == offsets and base in q.amq_config.bits
    assert all(base + offsets[n] == b for n, b in layer_bits.items())
    shifted = qmodel_factory(tiny, layer_offsets=offsets)  # the offsets' cost leaves the items about c
    metrics = evaluate(shifted, tiny.test, normalizer=tiny.normalizer, mode="uniform")
    layerwise = evaluate(q, tiny.test, normalizer=tiny.normalizer, mode="layerwise")
    assert metrics["b_eff_max"] <= q.amq_config.budget + 1e-9
    # uniform items at c run the per-layer bits, and the budget the baseline leaves unspent lifts some to c + 1
    assert layerwise["b_eff"] - 1e-9 <= metrics["b_eff"] <= q.amq_config.budget + 1e-9
    assert metrics["rel_l2"] == pytest.approx(layerwise["rel_l2"], rel=0.02)
    names = [layer.name for layer in q.layers]
    # options 3..6 take offsets -1..2: with layers at 2, 8 and 5 bits, c = 3 fits all but the layer at 8,
    # which runs at 5; with layers at 2, 7 and 5, c = 3 and c = 5 each miss one layer and the one nearer the
    # middle of the options wins: the layer at 2 runs at 4
    base, clamped = layerwise_base(q, [2, 8] + [5] * (len(names) - 2))
    assert base == 3 and clamped[names[0]] == -1 and clamped[names[1]] == 2
    base, clamped = layerwise_base(q, [2, 7] + [5] * (len(names) - 2))
    assert base == 5 and clamped[names[0]] == -1 and clamped[names[1]] == 2
