"""Allocation without QAT: does spending the budget by true sensitivity beat uniform bits at equal cost?

The Pareto benchmark mixes allocation with fine-tuning. This probe isolates the allocation: one
calibrated (not fine-tuned) quantized model per bit-option set, evaluated at the same budget with
``uniform`` (every node the budget's bits; when the budget is not an option, the two adjacent
options, assigned by node index), ``random`` (seeded scores) and ``oracle`` (each mesh's true
sensitivities, DESIGN item 5). Prints a table and writes benchmarks/results/ptq_allocation_darcy_<arch>.json:
{"rows": [{method, bits, budget, b_eff, rel_l2, rel_l2_std, seeds, commit}], ...}.

    python benchmarks/ptq_allocation.py --arch mppde           # 40 test meshes, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from _common import RESULTS, commit, float_checkpoint, print_table, write_json

from amq_export import load_checkpoint
from amq_export.amq.config import AMQConfig
from amq_export.api import evaluate, quantize
from amq_export.data.datasets import load_mesh_dataset
from amq_export.data.normalizer import Normalizer
from amq_export.errors import AMQError
from amq_export.models.presets import CLUSTER_SIZE

# (budget, bit options): the default window at an option budget, and two-option sets whose uniform
# baseline must itself mix options
SETTINGS = [(4.0, (3, 4, 5, 6)), (4.0, (3, 6)), (5.0, (4, 8)), (5.0, (4, 5, 6, 7))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mppde", choices=("mppde", "graphvit"))
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the random allocation")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    path = float_checkpoint(args.arch, 32)
    if not path.exists():
        raise AMQError(f"no float checkpoint at {path}: run benchmarks/float_baselines.py first")
    ckpt = load_checkpoint(path)
    base, normalizer = ckpt.build_model(), Normalizer.from_dict(ckpt.normalizer)
    dataset = load_mesh_dataset("darcy", resolution=32, n_train=1000, n_test=100,
                                cluster_size=CLUSTER_SIZE if args.arch == "graphvit" else None)
    test = list(dataset.test)[: args.n_test]
    rows, rev = [], commit()
    for budget, bits in SETTINGS:
        torch.manual_seed(0)
        qmodel = quantize(copy.deepcopy(base), AMQConfig(budget=budget, bits=bits), calibration=dataset.train[:32])
        for method in ("uniform", "random", "oracle"):
            runs = []
            for seed in range(args.seeds if method == "random" else 1):
                qmodel.generator.manual_seed(seed)
                runs.append(evaluate(qmodel, test, normalizer=normalizer, mode=method))
            rels = [r["rel_l2"] for r in runs]
            rows.append({"method": method, "bits": list(bits), "budget": budget,
                         "b_eff": statistics.mean(r["b_eff"] for r in runs), "rel_l2": statistics.mean(rels),
                         "rel_l2_std": statistics.stdev(rels) if len(rels) > 1 else 0.0, "seeds": len(rels),
                         "commit": rev})
            print(f"B={budget:g} bits {bits} {method}: rel-L2 {rows[-1]['rel_l2']:.4f}", flush=True)
    print_table(f"Allocation without QAT, Darcy 32x32, {args.arch}", rows,
                ["method", "bits", "budget", "b_eff", "rel_l2", "rel_l2_std", "seeds"])
    out = args.out or RESULTS / f"ptq_allocation_darcy_{args.arch}.json"
    write_json(out, {"rows": rows, "n_test": len(test), "commit": rev})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
