"""Why does the per-layer baseline beat per-node AMQ? Allocations and weights, swapped.

At one budget and seed, fine-tune two models from the same float MP-PDE (``aux`` and ``layerwise``, as
``pareto.py`` does), then:

- the share of node items and of edge rows at each bit-width under the auxiliary allocation (test meshes),
  beside the per-layer bits the baseline chose;
- each model under the other's allocation: the AMQ-trained weights under per-layer bits
  (``assign_layerwise_bits`` on them), and the layerwise-trained weights under a fitted auxiliary model
  (``fit_auxiliary``). If a model is much worse under the other allocation, its weights co-adapted to the
  allocation they were fine-tuned under.

Prints a table and writes benchmarks/results/allocation_crosscheck_darcy_mppde.json.

    python benchmarks/allocation_crosscheck.py --budget 4 --seed 0
"""

from __future__ import annotations

import argparse
import copy
from collections import Counter
from pathlib import Path

import torch
from _common import RESULTS, commit, float_checkpoint, print_table, write_json

from amq_export import load_checkpoint
from amq_export.amq.config import AMQConfig
from amq_export.api import assign_layerwise_bits, evaluate, finetune, fit_auxiliary, quantize
from amq_export.data.datasets import load_mesh_dataset
from amq_export.data.normalizer import Normalizer
from amq_export.training import mesh_loader


def bit_shares(qmodel, meshes, budget: float) -> dict[str, dict[int, float]]:
    """Fraction of node rows and of edge rows at each bit-width under the auxiliary allocation."""
    counts = {"node": Counter(), "edge": Counter()}
    qmodel.eval()
    with torch.no_grad():
        for batch in mesh_loader(list(meshes), 1):
            out = qmodel(batch, budget=budget, mode="aux")
            counts["node"].update(out.node_bits.tolist())
            counts["edge"].update(out.edge_bits.tolist())
    return {kind: {b: round(n / sum(c.values()), 4) for b, n in sorted(c.items())} for kind, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--qat-samples", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "allocation_crosscheck_darcy_mppde.json")
    args = parser.parse_args()
    path = float_checkpoint("mppde", 32)
    if not path.exists():
        parser.error(f"no float checkpoint at {path}: run benchmarks/float_baselines.py (or pareto.py) first")
    data = load_mesh_dataset("darcy", resolution=32, n_train=1000, n_test=100)
    ckpt = load_checkpoint(path)
    base, normalizer = ckpt.build_model(), Normalizer.from_dict(ckpt.normalizer)
    config = AMQConfig(budget=args.budget, aux_hidden=16)
    train = data.train[: args.qat_samples]

    def fine_tuned(mode: str):
        torch.manual_seed(args.seed)
        qmodel = quantize(copy.deepcopy(base), config, calibration=data.train[:32])
        if mode == "layerwise":
            assign_layerwise_bits(qmodel, data.train, normalizer=normalizer)
        finetune(qmodel, train, data.val, normalizer=normalizer, epochs=args.epochs, mode=mode, float_model=base,
                 seed=args.seed, progress=False)
        return qmodel

    def rel_l2(qmodel, mode: str) -> float:
        return round(evaluate(qmodel, data.test, normalizer=normalizer, mode=mode)["rel_l2"], 5)

    amq = fine_tuned("aux")
    shares = bit_shares(amq, data.test[:20], args.budget)
    rows = [{"weights": "aux", "allocation": "aux", "rel_l2": rel_l2(amq, "aux")}]
    assign_layerwise_bits(amq, data.train, normalizer=normalizer)
    rows.append({"weights": "aux", "allocation": "layerwise", "rel_l2": rel_l2(amq, "layerwise")})
    static = fine_tuned("layerwise")
    rows.append({"weights": "layerwise", "allocation": "layerwise", "rel_l2": rel_l2(static, "layerwise")})
    fit_auxiliary(static, train, normalizer=normalizer, budget=args.budget, float_model=base, seed=args.seed,
                  progress=False)
    rows.append({"weights": "layerwise", "allocation": "aux", "rel_l2": rel_l2(static, "aux")})
    print_table(f"MP-PDE, Darcy 32x32, budget {args.budget:g}, seed {args.seed}: weights x allocation", rows,
                ["weights", "allocation", "rel_l2"])
    print(f"aux allocation, share of rows at each bit-width: {shares}")
    print(f"layerwise bits: {static.layer_bits}")
    write_json(args.out, {"budget": args.budget, "seed": args.seed, "epochs": args.epochs, "rows": rows,
                          "aux_bit_shares": shares, "layer_bits": static.layer_bits, "commit": commit()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
