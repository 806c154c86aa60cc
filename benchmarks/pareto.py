"""Pareto benchmark: AMQ against uniform, random, oracle and per-layer quantization on Darcy.

From one float model, every method gets the same data, QAT epochs and seeds. Budgets are
effective activation bit-widths; `uniform` runs at each, `aux` / `random` / `oracle` with the
default window of options around the budget and with all of 2..8 (`-all`), `layerwise` with
the default window. At budget 4 the ablations run too: the auxiliary target (`aux-gntarget`: Gauss-Newton
sensitivities from one Hutchinson probe per step, `aux-errtarget`: per-node error against ground truth,
`aux-devtarget`: deviation from the float model) and
per-bucket weight bit-widths (`aux-pbw`). `aux-offsets` adds per-layer offsets (`choose_layer_offsets`) under the
per-node allocation; `uniform-offsets` the same offsets over uniform items (a static per-layer profile);
`aux-frozen` keeps the auxiliary model as its warm start left it during QAT (a mesh's allocation stops moving);
`aux-2layers` has one message-passing layer less in the auxiliary GNN. `aux-lwbase` starts the per-node
allocation from the per-layer baseline itself (offsets ``profile="layerwise-base"``: items all at one option run
the `layerwise` bits; `uniform-lwbase` is that, the baseline again by another road). The float model is
benchmarks/float_models/<arch>_darcy32.pt (committed) unless --float-checkpoint or --float-epochs say
otherwise. Prints a table and writes
benchmarks/results/pareto_darcy_<arch>.json: {"rows": [...], "aux_spearman": ..., ...}; rows of auxiliary
methods also hold their Spearman over all node items of a mesh and within each kind of item.

    python benchmarks/pareto.py --arch mppde                       # full default run (hours on 2 cores)
    python benchmarks/pareto.py --arch mppde --budgets 4 --seeds 2 --n-train 200 --epochs 2   # a slice
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
from pathlib import Path

import torch
from _common import RESULTS, commit, float_checkpoint, print_table, write_json

from amq_export import load_checkpoint, save_checkpoint
from amq_export.amq.config import AMQConfig
from amq_export.amq.qat import AUX_PREFIT_STEPS
from amq_export.api import assign_layerwise_bits, choose_layer_offsets, evaluate, finetune, quantize
from amq_export.data.datasets import load_mesh_dataset
from amq_export.data.normalizer import Normalizer
from amq_export.models import build_model
from amq_export.models.presets import CLUSTER_SIZE, darcy_config
from amq_export.training import evaluate_float, train_float

ALL_BITS = (2, 3, 4, 5, 6, 7, 8)
# rank correlations of the auxiliary scores with the true sensitivities on the test meshes (``evaluate``),
# kept per aux row; the top-level ``aux_spearman`` is the mean over the ``aux`` rows of every budget
SPEARMANS = ("aux_spearman", "aux_spearman_node_rows", "aux_spearman_edge_rows")


def methods_for(ablations: bool) -> list[tuple[str, str, dict]]:
    """(method name, allocation mode, AMQConfig overrides); the ablations run at budget 4 only."""
    rows = [("uniform", "uniform", {}), ("aux", "aux", {}), ("random", "random", {}), ("oracle", "oracle", {}),
            ("layerwise", "layerwise", {}), ("aux-all", "aux", {"bits": ALL_BITS}),
            ("random-all", "random", {"bits": ALL_BITS}), ("oracle-all", "oracle", {"bits": ALL_BITS}),
            ("aux-offsets", "aux", {"layer_offsets": "water-filling"}),
            ("uniform-offsets", "uniform", {"layer_offsets": "water-filling"}),
            ("aux-frozen", "aux", {"finetune": {"freeze_aux": True}}),
            ("aux-2layers", "aux", {"aux_layers": 2}),  # a cheaper auxiliary GNN: one message-passing layer less
            ("aux-lwoffsets", "aux", {"layer_offsets": "layerwise"}),
            ("uniform-lwoffsets", "uniform", {"layer_offsets": "layerwise"}),
            ("aux-lwbase", "aux", {"layer_offsets": "layerwise-base"}),
            ("uniform-lwbase", "uniform", {"layer_offsets": "layerwise-base"})]
    if ablations:
        rows += [("aux-gntarget", "aux", {"aux_target": "gauss-newton"}),
                 ("aux-errtarget", "aux", {"aux_target": "error"}),
                 ("aux-devtarget", "aux", {"aux_target": "deviation"}),
                 ("aux-pbw", "aux", {"per_bucket_weight_bits": True})]
    return rows


# float models trained by this script with --float-epochs 16 (MP-PDE) / 9 (GraphViT) on the default data,
# kept in the repository so that every row can be measured again from the same weights
COMMITTED_FLOAT_MODELS = Path(__file__).parent / "float_models"


def float_model(args, dataset):
    committed = COMMITTED_FLOAT_MODELS / f"{args.arch}_darcy{args.resolution}.pt"
    path = Path(args.float_checkpoint) if args.float_checkpoint else float_checkpoint(args.arch, args.resolution)
    ckpt = None
    if not (args.float_checkpoint or args.float_epochs) and committed.exists():
        ckpt = load_checkpoint(committed)
        if ckpt.task != dataset.meta:  # used only where trained on these very meshes
            ckpt = None
    if ckpt is None and path.exists():
        ckpt = load_checkpoint(path)
    if ckpt is not None:
        return ckpt.build_model(), Normalizer.from_dict(ckpt.normalizer)
    torch.manual_seed(0)
    model = build_model(args.arch, darcy_config(args.arch))
    # --float-epochs: a schedule in steps, the same model on a slower machine; else the clock's budget
    epochs, budget = (args.float_epochs, None) if args.float_epochs else (200, args.float_time_budget)
    print(f"no float checkpoint at {path}: training one for "
          + (f"{epochs} epochs" if budget is None else f"{budget:.0f}s"))
    train_float(model, dataset, epochs=epochs, time_budget_s=budget, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, normalizer=dataset.normalizer.to_dict(), task=dataset.meta)
    return model, dataset.normalizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="darcy", choices=("darcy",))
    parser.add_argument("--arch", default="mppde", choices=("mppde", "graphvit"))
    parser.add_argument("--budgets", default="3,4,5,6")
    parser.add_argument("--methods", default="", help="comma list to run only some methods (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="QAT epochs per method and seed")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--qat-samples", type=int, default=None,
                        help="fine-tune on the first N training meshes only (the test split is unchanged)")
    parser.add_argument("--aux-prefit", type=int, default=AUX_PREFIT_STEPS,
                        help="steps fitting the auxiliary model alone before joint QAT (0: none)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--float-checkpoint", default=None,
                        help="float model to start from (default: benchmarks/float_models/<arch>_darcy32.pt)")
    parser.add_argument("--float-time-budget", type=float, default=540.0,
                        help="seconds of float training where no checkpoint exists (the learning-rate schedule "
                             "follows the clock, so the model depends on the machine's speed)")
    parser.add_argument("--float-epochs", type=int, default=None,
                        help="train the float model for this many epochs on a schedule in steps instead of "
                             "loading benchmarks/float_models/ (trained so: 16 epochs MP-PDE, 9 GraphViT)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", action="store_true",
                        help="merge into an existing JSON (rows of the same method and budget are replaced)")
    args = parser.parse_args()
    out = args.out or RESULTS / f"pareto_{args.task}_{args.arch}.json"
    dataset = load_mesh_dataset("darcy", resolution=args.resolution, n_train=args.n_train, n_test=args.n_test,
                                cluster_size=CLUSTER_SIZE if args.arch == "graphvit" else None)
    base, normalizer = float_model(args, dataset)
    float_rel = evaluate_float(base, dataset.test, normalizer)
    # one float epoch on the same meshes, for the QAT cost ratio
    probe, subset = copy.deepcopy(base), dataclasses.replace(dataset, train=dataset.train[: args.qat_samples])
    float_epoch_s = train_float(probe, subset, epochs=1, progress=False).epoch_seconds
    wanted = set(filter(None, args.methods.split(",")))
    rows, qat_epoch_s = [], []
    rev = commit()

    previous = json.loads(out.read_text())["rows"] if args.append and out.exists() else []

    def save() -> dict:
        """Write the rows so far (merged into ``out``'s rows as they were, with --append): a long sweep cut short
        keeps its rows."""
        fresh = {(r["method"], r["budget"]) for r in rows}
        merged = [r for r in previous if (r["method"], r["budget"]) not in fresh] + rows
        spearmans = [r["aux_spearman"] for r in merged if r["method"] == "aux" and "aux_spearman" in r]
        payload = {"rows": merged, "aux_spearman": statistics.mean(spearmans) if spearmans else None,
                   "float_rel_l2": float_rel, "float_epoch_seconds": float_epoch_s,
                   "qat_epoch_seconds": statistics.mean(qat_epoch_s) if qat_epoch_s else None,
                   "epochs": args.epochs, "n_train": args.n_train, "n_test": args.n_test, "commit": rev}
        write_json(out, payload)
        return payload

    for budget in [float(b) for b in args.budgets.split(",")]:
        for name, mode, overrides in methods_for(ablations=budget == 4.0):
            if wanted and name not in wanted:
                continue
            runs = []
            if isinstance(overrides.get("layer_offsets"), str):  # a profile: offsets from the layers' sensitivities, once per budget
                probe = quantize(copy.deepcopy(base), AMQConfig(budget=budget, aux_hidden=16),
                                 calibration=dataset.train[:32])
                overrides = {**overrides, "layer_offsets": choose_layer_offsets(probe, dataset.train,
                                                                                normalizer=normalizer,
                                                                                profile=overrides["layer_offsets"])}
                print(f"{name}: offsets {sorted(overrides['layer_offsets'].items())}", flush=True)
            train_options = overrides.get("finetune", {})
            config = AMQConfig(budget=budget, **{"aux_hidden": 16, **{k: v for k, v in overrides.items() if k != "finetune"}})
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                qmodel = quantize(copy.deepcopy(base), config, calibration=dataset.train[:32])
                if mode == "layerwise":
                    assign_layerwise_bits(qmodel, dataset.train, normalizer=normalizer)
                history = finetune(qmodel, dataset.train[: args.qat_samples], dataset.val, normalizer=normalizer, epochs=args.epochs,
                                   batch_size=args.batch_size, mode=mode, float_model=base, seed=seed,
                                   aux_prefit_steps=args.aux_prefit, progress=False, **train_options)
                qat_epoch_s += [h["seconds"] for h in history]
                metrics = evaluate(qmodel, dataset.test, normalizer=normalizer, mode=mode, with_spearman=mode == "aux")
                runs.append(metrics)
                rho = f" spearman {metrics['aux_spearman']:.3f}" if mode == "aux" else ""
                print(f"{name:14s} B={budget:g} seed {seed}: rel-L2 {metrics['rel_l2']:.4f} "
                      f"b_eff {metrics['b_eff']:.3f} (max {metrics['b_eff_max']:.3f}){rho}", flush=True)
            rels = [r["rel_l2"] for r in runs]
            rows.append({
                "method": name, "bits": list(config.bits), "weight_bits": config.weight_bits, "budget": budget,
                "b_eff": round(max(r["b_eff_max"] for r in runs), 4),
                "bops": round(statistics.mean(r["bops_per_mesh"] for r in runs)),
                "rel_l2": round(statistics.mean(rels), 5),
                "rel_l2_std": round(statistics.stdev(rels), 5) if len(rels) > 1 else 0.0,
                "seeds": len(runs), "commit": rev,
                **{key: round(statistics.mean(r[key] for r in runs), 4) for key in SPEARMANS if key in runs[0]},
            })
            save()
    print_table(f"Pareto, Darcy {args.resolution}x{args.resolution}, {args.arch} (float rel-L2 {float_rel:.4f})",
                rows, ["method", "budget", "b_eff", "rel_l2", "rel_l2_std", "seeds", "bops"])
    payload = save()
    print(f"QAT epoch {payload['qat_epoch_seconds']}s vs float epoch {float_epoch_s:.1f}s; wrote {out}")


if __name__ == "__main__":
    main()
