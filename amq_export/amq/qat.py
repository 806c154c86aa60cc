"""Calibration, joint QAT of the main and auxiliary models, and evaluation of an ``AMQModel``.

Joint QAT (DESIGN item 7): each step the auxiliary model scores the mesh, the allocator spends
the budget (sampled per step when a range is given), the main model runs with fake quantization
and takes the task loss; the per-row sensitivities gathered by that same backward pass become the
auxiliary model's regression targets. One optimizer, two parameter groups.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from amq_export.amq.allocation import allocate_budget, edge_owner, fill_leftover
from amq_export.amq.auxiliary import regression_loss, spearman, start_at_mean
from amq_export.amq.model import AMQModel, row_counts
from amq_export.data.mesh_data import num_clusters
from amq_export.errors import AMQError
from amq_export.metrics import batch_relative_l2
from amq_export.progress import console, progress_bar
from amq_export.training import cosine_schedule, mesh_loader


def item_sensitivities(qmodel: AMQModel, data: Any) -> tuple[Tensor, Tensor | None]:
    """Sensitivity of the two items of every node [N, 2] (its rows; the rows of the edges it owns) and of
    every cluster item [C].

    Reads what the quantized layers accumulated in ``qmodel.state`` during the last backward.
    """
    sens = qmodel.state.sensitivity
    n = data.num_nodes
    nodes = torch.zeros(n, 2, dtype=torch.float64)
    if "node" in sens:
        nodes[:, 0] = sens["node"].double()
    if "edge" in sens:
        nodes[:, 1].index_add_(0, edge_owner(data.edge_index, qmodel.amq_config.edge_rule), sens["edge"].double())
    clusters = sens["cluster"].double() if qmodel.has_cluster_items and "cluster" in sens else None
    return nodes, clusters


def _aux_targets(qmodel: AMQModel, data: Any, out: Any, float_pred: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """What the auxiliary model learns to predict: sensitivity (default) or an error-based ablation.

    A per-node error says nothing about which of the node's rows matter, so the ablations share it between
    the node's two items in proportion to their costs (the allocation then treats them alike).
    """
    target = qmodel.amq_config.aux_target
    if target in ("sensitivity", "gauss-newton"):  # collected in this step's backward passes
        return item_sensitivities(qmodel, data)
    reference = data.y if target == "error" else float_pred
    per_node = (out.pred.detach() - reference).pow(2).sum(-1).double()
    costs = qmodel.item_costs(data)[0]
    clusters = None
    if qmodel.has_cluster_items:
        member, cid = data.cluster_index
        clusters = torch.zeros(num_clusters(data), dtype=per_node.dtype).index_add_(0, cid, per_node[member])
    return per_node.unsqueeze(1) * costs / costs.sum(1, keepdim=True), clusters


def calibrate(qmodel: AMQModel, meshes: Sequence[Any], batches: int = 4, batch_size: int = 8) -> None:
    """Initialise every activation quantizer's scale (and each layer's input range) from data."""
    from amq_export.amq.quant_linear import calibration_mode

    if not meshes:
        raise AMQError("calibration needs at least one mesh")
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel.main):
        for i, batch in enumerate(mesh_loader(list(meshes), batch_size)):
            if i >= batches:
                break
            qmodel(batch, mode="uniform")


SENSITIVITIES = ("fisher", "gauss-newton")


def _rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    """Random +-1 entries shaped like ``like``: a Hutchinson probe."""
    return torch.randint(0, 2, like.shape, generator=generator).to(like.dtype) * 2 - 1
GAUSS_NEWTON_SAMPLES = 4


def _true_scores(qmodel: AMQModel, batch: Any, budget: float, normalizer: Any | None,
                 sensitivity: str = "fisher") -> tuple[Tensor, Tensor | None]:
    """The oracle's scores: sensitivities of this mesh from backward passes at uniform bits.

    ``fisher`` (DESIGN item 5): the rows' ``||dL/dx||^2 range^2`` for the task loss ``L``, the empirical
    Fisher. ``gauss-newton``: a Hutchinson estimate of the Gauss-Newton diagonal of the prediction,
    ``E_v ||d(pred . v)/dx||^2 range^2`` over ``GAUSS_NEWTON_SAMPLES`` Rademacher vectors ``v``: the
    curvature that quantization noise actually meets, free of the residual's direction (the relative L2
    loss adds one factor per mesh, so compare these within a mesh, as per-mesh allocation does).
    """
    if sensitivity not in SENSITIVITIES:
        raise AMQError(f"sensitivity {sensitivity!r} is unknown; choose one of {SENSITIVITIES}")
    qmodel.state.reset_sensitivity()
    qmodel.state.collect = True
    try:
        with torch.enable_grad():
            out = qmodel(batch, budget=budget, mode="uniform")
            if sensitivity == "fisher":
                batch_relative_l2(out.pred, batch, normalizer).sum().backward()
            else:
                generator = torch.Generator().manual_seed(0)
                for k in range(GAUSS_NEWTON_SAMPLES):
                    out.pred.backward(_rademacher(out.pred, generator), retain_graph=k < GAUSS_NEWTON_SAMPLES - 1)
    finally:
        qmodel.state.collect = False
        qmodel.zero_grad(set_to_none=True)
    return item_sensitivities(qmodel, batch)


# Auxiliary-model warm start (``fit_auxiliary``): Adam steps on the targets of at most this many training
# batches. Measured on Darcy 32x32 with MP-PDE at budget 4 (40 test meshes): 600 steps reach a Spearman of
# 0.48 / 0.56 within node / edge items against the test meshes' true sensitivities, 1500 steps 0.57 / 0.66;
# the 50 steps of a short joint QAT reached about 0.1 (it ranked node against edge items and little else).
AUX_PREFIT_STEPS = 1000
AUX_PREFIT_BATCHES = 25


def _loss_and_targets(qmodel: AMQModel, batch: Any, budget: float, mode: str, normalizer: Any | None,
                      scores: tuple[Tensor, Tensor | None] | None, probe_generator: torch.Generator,
                      float_model: nn.Module | None, collect: bool
                      ) -> tuple[Any, Tensor, tuple[Tensor, Tensor | None] | None]:
    """One forward and task-loss backward under allocation ``mode``; with ``collect`` also the auxiliary
    model's targets (DESIGN item 7): the sensitivities that backward gathered, or an ablation's error.
    Parameter gradients accumulate; zero them before."""
    cfg = qmodel.amq_config
    qmodel.state.reset_sensitivity()
    qmodel.state.collect = collect  # taps go in now; they add in backwards while it is on
    try:
        out = qmodel(batch, budget=budget, mode=mode, scores=scores)
        loss = batch_relative_l2(out.pred, batch, normalizer).mean()
        if collect and cfg.aux_target == "gauss-newton":  # one Hutchinson probe of the prediction
            out.pred.backward(_rademacher(out.pred, probe_generator), retain_graph=True)
            qmodel.state.collect = False
            qmodel.main.zero_grad(set_to_none=True)  # the probe's parameter gradients are not the task's
        loss.backward()
    finally:
        qmodel.state.collect = False
    if not collect:
        return out, loss, None
    float_pred = None
    if float_model is not None and cfg.aux_target == "deviation":
        with torch.no_grad():
            float_pred = float_model(batch)
    return out, loss, _aux_targets(qmodel, batch, out, float_pred)


def _aux_loss(aux_scores: tuple[Tensor, Tensor | None], targets: tuple[Tensor, Tensor | None]) -> Tensor:
    loss = regression_loss(aux_scores[0], targets[0])
    if aux_scores[1] is not None and targets[1] is not None:
        loss = loss + regression_loss(aux_scores[1], targets[1])
    return loss


def fit_auxiliary(
    qmodel: AMQModel,
    meshes: Sequence[Any],
    *,
    normalizer: Any | None = None,
    budget: float | None = None,
    budget_range: tuple[float, float] | None = None,
    steps: int = AUX_PREFIT_STEPS,
    batch_size: int = 8,
    lr: float = 3e-3,
    float_model: nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Warm-start the auxiliary model before joint QAT: gather its targets (``AMQConfig.aux_target``) on up to
    ``AUX_PREFIT_BATCHES`` batches of ``meshes`` at uniform bits (the middle of ``budget_range`` when given),
    then fit it alone for ``steps`` Adam steps over them. The main model is left as it was.

    Why: joint QAT of a few epochs gives the auxiliary model a few dozen noisy steps, too few to rank the
    items of one kind (see ``AUX_PREFIT_STEPS``). Returns the first and last regression loss and the seconds.
    """
    if steps < 1 or not meshes:
        raise AMQError("fit_auxiliary needs steps >= 1 and at least one mesh")
    budget = qmodel.amq_config.budget if budget is None else budget
    if budget_range is not None:
        budget = sum(budget_range) / 2
    t0 = time.perf_counter()
    was_training = qmodel.training
    qmodel.eval()  # gather targets with the main model as it runs at inference
    probe_generator = torch.Generator().manual_seed(seed)
    cached = []
    with progress_bar(progress) as bar:
        loader = mesh_loader(list(meshes), batch_size, shuffle=True, seed=seed)
        batches = min(len(loader), AUX_PREFIT_BATCHES)
        job = bar.add_task("auxiliary targets", total=batches, info="")
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            with torch.enable_grad():
                _, _, targets = _loss_and_targets(qmodel, batch, budget, "uniform", normalizer, None,
                                                    probe_generator, float_model, collect=True)
            cached.append((batch, targets))
            bar.update(job, advance=1)
        qmodel.zero_grad(set_to_none=True)
        start_at_mean(qmodel.aux, [t[0] for _, t in cached], [t[1] for _, t in cached if t[1] is not None])
        optimizer = torch.optim.AdamW(qmodel.aux.parameters(), lr=lr, weight_decay=1e-5)
        scheduler = cosine_schedule(optimizer, steps)
        job = bar.add_task("auxiliary fit", total=steps, info="")
        losses = []
        qmodel.aux.train()
        for step in range(steps):
            batch, targets = cached[step % len(cached)]
            loss = _aux_loss(qmodel.aux(batch), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(job, advance=1, info=f"loss {losses[-1]:.3f}")
    qmodel.train(was_training)
    last = losses[-len(cached):]
    return {"loss_first": losses[0], "loss_last": sum(last) / len(last),
            "seconds": time.perf_counter() - t0}


def finetune(
    qmodel: AMQModel,
    train: Sequence[Any],
    val: Sequence[Any],
    *,
    normalizer: Any | None = None,
    epochs: int = 3,
    lr: float = 2e-4,
    aux_lr: float = 3e-3,
    batch_size: int = 8,
    budget: float | None = None,
    budget_range: tuple[float, float] | None = None,
    mode: str = "aux",
    float_model: nn.Module | None = None,
    aux_prefit_steps: int = AUX_PREFIT_STEPS,
    freeze_aux: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Joint QAT; returns one dict per epoch (train loss, aux loss, val rel-L2, b_eff, seconds).

    ``mode`` is the allocation the main model trains under: ``aux`` (joint training, the
    default), or a baseline's (``uniform``, ``random``, ``oracle``, ``layerwise``), so that every
    method is fine-tuned with the allocations it will see at inference. In ``aux`` mode the auxiliary
    model is first fitted for ``aux_prefit_steps`` steps (:func:`fit_auxiliary`, on the training meshes at
    uniform bits), so that it does not drive allocation while still untrained; 0 skips that.
    ``freeze_aux`` keeps the auxiliary model as the warm start left it: the allocation of a mesh then no
    longer moves from step to step while the main model trains under it.
    """
    cfg = qmodel.amq_config
    budget = cfg.budget if budget is None else budget
    if budget_range is not None:
        lo, hi = budget_range
        if not cfg.bits[0] <= lo <= hi <= cfg.bits[-1]:
            raise AMQError(f"budget range {budget_range} must lie inside the bit options {list(cfg.bits)}")
    if cfg.aux_target == "deviation" and float_model is None:
        raise AMQError("aux_target='deviation' needs the float model: pass float_model=...")
    if epochs < 1 or not train or not val:
        raise AMQError("finetune needs epochs >= 1 and non-empty train and val meshes")
    if freeze_aux and (mode != "aux" or aux_prefit_steps < 1):
        raise AMQError("freeze_aux keeps the warm-started auxiliary model: it needs mode='aux' and aux_prefit_steps >= 1")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    probe_generator = torch.Generator().manual_seed(seed)
    main_params = [p for p in qmodel.main.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": main_params, "lr": lr, "weight_decay": 0.0},
        {"params": [] if freeze_aux else list(qmodel.aux.parameters()), "lr": aux_lr, "weight_decay": 1e-5},
    ])
    loader = mesh_loader(list(train), batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    if mode == "aux" and aux_prefit_steps > 0:
        fit_auxiliary(qmodel, train, normalizer=normalizer, budget=budget, budget_range=budget_range,
                      steps=aux_prefit_steps, batch_size=batch_size, lr=aux_lr, float_model=float_model, seed=seed,
                      progress=progress)
    scheduler = cosine_schedule(optimizer, steps)
    history = []
    with progress_bar(progress) as bar:
        job = bar.add_task(f"QAT ({mode})", total=steps, info="")
        for epoch in range(1, epochs + 1):
            qmodel.train()
            t0 = time.perf_counter()
            totals = {"loss": 0.0, "aux_loss": 0.0, "b_eff": 0.0}
            for batch in loader:
                step_budget = rng.uniform(*budget_range) if budget_range else budget
                scores = _true_scores(qmodel, batch, step_budget, normalizer) if mode == "oracle" else None
                optimizer.zero_grad(set_to_none=True)
                out, loss, targets = _loss_and_targets(qmodel, batch, step_budget, mode, normalizer, scores,
                                                        probe_generator, float_model, collect=mode == "aux" and not freeze_aux)
                aux_loss = torch.zeros(())
                if targets is not None:
                    aux_loss = _aux_loss((out.aux_node, out.aux_cluster), targets)
                    aux_loss.backward()
                optimizer.step()
                scheduler.step()
                step_loss = loss.item()
                totals["loss"] += step_loss
                totals["aux_loss"] += aux_loss.item()
                totals["b_eff"] += out.cost["b_eff"]
                bar.update(job, advance=1, info=f"loss {step_loss:.4f}")
            n = len(loader)
            val_metrics = evaluate(qmodel, val, normalizer=normalizer, budget=budget, mode=mode, batch_size=batch_size)
            row = {"epoch": epoch, "train_rel_l2": totals["loss"] / n, "aux_loss": totals["aux_loss"] / n,
                   "train_b_eff": totals["b_eff"] / n, "val_rel_l2": val_metrics["rel_l2"],
                   "val_b_eff": val_metrics["b_eff"], "seconds": time.perf_counter() - t0}
            history.append(row)
            if bar.disable and progress:
                console.print(f"QAT {mode} epoch {epoch}/{epochs}  train {row['train_rel_l2']:.4f}  "
                              f"val {row['val_rel_l2']:.4f}  b_eff {row['val_b_eff']:.3f}  {row['seconds']:.1f}s")
    qmodel.eval()
    return history


def evaluate(
    qmodel: AMQModel,
    meshes: Sequence[Any],
    *,
    normalizer: Any | None = None,
    budget: float | None = None,
    mode: str = "aux",
    batch_size: int = 1,
    with_spearman: bool = False,
    sensitivity: str = "fisher",
) -> dict[str, float]:
    """Mean per-sample relative L2, measured effective bits (max and mean over batches) and BOPs.

    One mesh per forward by default, as a deployed model runs: the budget then holds for every mesh
    (``batch_size`` > 1 allocates over each batch jointly, which lets hard meshes borrow bits).

    ``oracle`` uses each mesh's own sensitivities (it needs targets; ``sensitivity``: which, see
    ``_true_scores``); ``with_spearman`` also reports the rank correlation of the auxiliary scores with
    those true sensitivities over all node items of each mesh (``aux_spearman``), and within each of
    the two kinds of node item (``aux_spearman_node_rows``, ``aux_spearman_edge_rows``).
    """
    if not meshes:
        raise AMQError("no meshes to evaluate on")
    budget = qmodel.amq_config.budget if budget is None else budget
    was_training = qmodel.training
    qmodel.eval()
    errors, b_effs, total_bops, rhos = [], [], 0.0, []
    for batch in mesh_loader(list(meshes), batch_size):
        scores = None
        if mode == "oracle" or with_spearman:
            scores = _true_scores(qmodel, batch, budget, normalizer, sensitivity)
        with torch.no_grad():
            out = qmodel(batch, budget=budget, mode=mode, scores=scores)
            errors.append(batch_relative_l2(out.pred, batch, normalizer))
            if with_spearman:  # per mesh: rank agreement of aux scores and true node-item sensitivities
                aux_node = out.aux_node if out.aux_node is not None else qmodel.aux(batch)[0]
                graph = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(batch.num_nodes)
                for g in range(batch.num_graphs):
                    pred, true = aux_node[graph == g], scores[0][graph == g]
                    rhos.append([spearman(pred, true)] + [spearman(pred[:, j], true[:, j]) for j in range(2)])
        b_effs.append(out.cost["b_eff"])
        total_bops += out.cost["bops"]
    qmodel.train(was_training)
    result = {"rel_l2": torch.cat(errors).mean().item(), "b_eff": sum(b_effs) / len(b_effs),
              "b_eff_max": max(b_effs), "bops_per_mesh": total_bops / len(meshes), "budget": budget, "mode": mode}
    if with_spearman:  # all node items of a mesh, and within each kind of item (its rows; its edges' rows)
        for key, values in zip(("aux_spearman", "aux_spearman_node_rows", "aux_spearman_edge_rows"), zip(*rhos)):
            result[key] = sum(values) / len(values)
    return result


def _layer_sensitivities(qmodel: AMQModel, meshes: Sequence[Any], budget: float, normalizer: Any | None,
                         batches: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """Per quantized layer (``qmodel.layers`` order): its summed row sensitivity at uniform bits over a few
    batches, and its cost (MACs x weight bits) on those meshes."""
    totals: dict[str, float] = {}
    rows = {"node": 0, "edge": 0, "cluster": 0}
    for i, batch in enumerate(mesh_loader(list(meshes), batch_size)):
        if i >= batches:
            break
        _true_scores(qmodel, batch, budget, normalizer)
        for name, value in qmodel.state.layer_sensitivity.items():
            totals[name] = totals.get(name, 0.0) + value
        for domain, count in row_counts(batch).items():
            rows[domain] += count
    layers = qmodel.layers
    scores = torch.tensor([totals.get(layer.name, 0.0) for layer in layers], dtype=torch.float64)
    costs = torch.tensor([float(layer.macs_per_row * rows[layer.domain] * layer.weight_bits) for layer in layers],
                         dtype=torch.float64)
    return scores, costs


def _layerwise_bits(scores: Tensor, costs: Tensor, bits: tuple[int, ...], budget: float) -> Tensor:
    """One bit-width per layer: the allocator's, then ``fill_leftover``."""
    return fill_leftover(scores, costs, bits, budget, allocate_budget(scores, costs, bits, budget))


def assign_layerwise_bits(
    qmodel: AMQModel, meshes: Sequence[Any], *, budget: float | None = None, normalizer: Any | None = None,
    batches: int = 4, batch_size: int = 8,
) -> dict[str, int]:
    """The per-layer mixed-precision baseline (in the spirit of HAWQ / ModelOpt AutoQuantize).

    Each quantized layer is one item: its score is its summed row sensitivity over a few batches
    at uniform bits, its cost its MACs on those meshes; the same allocator spends the same budget, and
    ``fill_leftover`` what its first step that does not fit leaves (a layer's step is coarse).
    The result is stored in ``qmodel.layer_bits`` and used by ``mode="layerwise"``.
    """
    budget = qmodel.amq_config.budget if budget is None else budget
    scores, costs = _layer_sensitivities(qmodel, meshes, budget, normalizer, batches, batch_size)
    bits = _layerwise_bits(scores, costs, qmodel.amq_config.bits, budget)
    qmodel.layer_bits = {layer.name: int(b) for layer, b in zip(qmodel.layers, bits)}
    return qmodel.layer_bits


MAX_LAYER_OFFSET = 2
OFFSET_PROFILES = ("water-filling", "layerwise", "layerwise-base")


def layerwise_base(qmodel: AMQModel, layer_bits: Sequence[int]) -> tuple[int, dict[str, int]]:
    """The item option ``c`` and the offsets ``b_l - c`` that put every layer at its per-layer bits ``b_l``
    while all items sit at ``c`` (``choose_layer_offsets(profile="layerwise-base")``).

    Each layer's bank ``bits + offset`` must stay inside 2..8, so ``c`` is taken among the options for
    which most layers fit (ties: the one nearest the middle of the options, which leaves the items room
    both ways), and a layer that does not fit gets the nearest offset that does: it runs a bit above or
    below its per-layer bits. Where only the lowest or the highest option fits every layer (MP-PDE at budgets
    3 and 6, per-layer bits 2..5 and 5..8), the items sit at that end and cannot move off it.
    """
    bits = qmodel.amq_config.bits
    low, high = 2 - bits[0], 8 - bits[-1]

    def misfits(c: int) -> int:
        return sum(not low <= b - c <= high for b in layer_bits)

    middle = (bits[0] + bits[-1]) / 2
    base = min(bits, key=lambda c: (misfits(c), abs(c - middle), c))
    return base, {layer.name: min(max(b - base, low), high) for layer, b in zip(qmodel.layers, layer_bits)}


def choose_layer_offsets(
    qmodel: AMQModel, meshes: Sequence[Any], *, budget: float | None = None, normalizer: Any | None = None,
    batches: int = 4, batch_size: int = 8, profile: str = "water-filling",
) -> dict[str, int]:
    """Per-layer offsets for ``AMQConfig.layer_offsets`` from the layers' sensitivities at uniform bits.

    ``profile="water-filling"``: reverse water-filling over layers (DESIGN item 6) puts layer ``l`` at
    ``0.5 log2(r_l)`` plus a constant, ``r_l`` its sensitivity per cost: the offset is that, relative to the
    cost-weighted mean of ``log2 r``, rounded and clipped to +-``MAX_LAYER_OFFSET`` and to the shifts that keep
    every option in 2..8 and never push a layer's rows below ``min(3, bits[0])`` bits: offsets that put 3..6
    rows at 2 bits lost (MP-PDE, Darcy, budget 4: 0.088 and 0.093 against 0.076 without offsets).
    ``profile="layerwise"``: the per-layer baseline's own bits (``assign_layerwise_bits``) relative to the
    lowest of its domain, so that the per-item allocation moves each item around that static profile.
    ``profile="layerwise-base"``: the per-layer baseline's bits relative to one item option ``c`` for all
    layers (:func:`layerwise_base`), so that items all at ``c`` run exactly the per-layer baseline and the
    per-item allocation starts from it; the offsets' cost leaves the items a budget of about ``c``.
    ``qmodel`` is a calibrated model without offsets; quantize again with the result.
    """
    if any(layer.offset for layer in qmodel.layers):
        raise AMQError("choose_layer_offsets needs a model quantized without layer_offsets")
    if profile not in OFFSET_PROFILES:
        raise AMQError(f"unknown offset profile {profile!r}: choose one of {', '.join(OFFSET_PROFILES)}")
    bits = qmodel.amq_config.bits
    budget = qmodel.amq_config.budget if budget is None else budget
    scores, costs = _layer_sensitivities(qmodel, meshes, budget, normalizer, batches, batch_size)
    high = min(MAX_LAYER_OFFSET, 8 - bits[-1])
    if profile == "layerwise-base":
        return layerwise_base(qmodel, _layerwise_bits(scores, costs, bits, budget).tolist())[1]
    if profile == "layerwise":
        layer_bits = _layerwise_bits(scores, costs, bits, budget)
        lowest: dict[str, int] = {}
        for layer, b in zip(qmodel.layers, layer_bits.tolist()):
            lowest[layer.domain] = min(b, lowest.get(layer.domain, b))
        return {layer.name: min(b - lowest[layer.domain], high) for layer, b in zip(qmodel.layers, layer_bits.tolist())}
    log_ratio = torch.log2(scores.clamp_min(torch.finfo(torch.float64).tiny) / costs)
    centre = float((log_ratio * costs).sum() / costs.sum())
    low = max(-MAX_LAYER_OFFSET, min(3, bits[0]) - bits[0])
    offsets = torch.round(0.5 * (log_ratio - centre)).clamp(low, high)
    return {layer.name: int(o) for layer, o in zip(qmodel.layers, offsets)}
