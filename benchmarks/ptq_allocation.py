"""Allocation without QAT: does spending the budget by true sensitivity beat uniform bits at equal cost?

The Pareto benchmark mixes allocation with fine-tuning. This probe isolates the allocation: one
calibrated (not fine-tuned) quantized model per bit-option set, evaluated at the same budget with
``uniform`` (every node the budget's bits; when the budget is not an option, the two adjacent
options, assigned by node index), ``random`` (seeded scores), ``oracle`` (each mesh's true
sensitivities, DESIGN item 5: the loss gradient's, an empirical Fisher) and ``oracle-gn`` (each mesh's
Gauss-Newton diagonal, a Hutchinson estimate: the curvature the quantization noise meets). It also measures the quantizers' noise against the model the allocator
assumes: per option b, the mean over layers of ``E[(Q_b(x) - x)^2] / range^2`` divided by ``4^-b``
(constant if the noise model holds). Prints a table and writes
benchmarks/results/ptq_allocation_darcy_<arch>.json: {"rows": [{method, bits, budget, b_eff, rel_l2,
rel_l2_std, seeds, commit}], "noise_over_4^-b": {bits: ratio}, ...}.

    python benchmarks/ptq_allocation.py --arch mppde           # 40 test meshes, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, commit, float_checkpoint, print_table, write_json
from torch import Tensor
from torch_geometric.data import Batch

from amq_export import load_checkpoint
from amq_export.amq.config import AMQConfig
from amq_export.amq.quant_linear import AdaptiveQuantLinear, fake_quant_eval
from amq_export.api import evaluate, quantize
from amq_export.data.datasets import load_mesh_dataset
from amq_export.data.normalizer import Normalizer
from amq_export.errors import AMQError
from amq_export.models.presets import CLUSTER_SIZE

# (budget, bit options): the default window at an option budget, and two-option sets whose uniform
# baseline must itself mix options
SETTINGS = [(4.0, (3, 4, 5, 6)), (4.0, (3, 6)), (5.0, (4, 8)), (5.0, (4, 5, 6, 7))]
# method -> (allocation mode, true sensitivity of the oracle)
METHODS = {"uniform": ("uniform", "fisher"), "random": ("random", "fisher"), "oracle": ("oracle", "fisher"),
           "oracle-gn": ("oracle", "gauss-newton")}


def noise_ratios(qmodel: Any, meshes: list[Any], budget: float) -> dict[int, float]:
    """Per bit option: mean over quantized layers of the relative quantization noise, over ``4^-b``."""
    layers = [m for m in qmodel.main.modules() if isinstance(m, AdaptiveQuantLinear)]
    inputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.setdefault(mod.name, args[0])) for m in layers]
    try:
        with torch.no_grad(), fake_quant_eval(qmodel):
            qmodel.eval()(Batch.from_data_list(meshes), budget=budget, mode="uniform")
    finally:
        for hook in hooks:
            hook.remove()
    ratios: dict[int, list[float]] = {}
    with torch.no_grad():
        for layer in layers:
            x = inputs[layer.name].reshape(-1, layer.in_features)
            for b, quant in zip(layer.bits, layer.act_quants, strict=True):
                noise = float(((quant(x) - x) ** 2).mean() / layer.input_range**2)
                ratios.setdefault(b, []).append(noise / 4.0**-b)
    return {b: statistics.mean(values) for b, values in sorted(ratios.items())}


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
    rows, rev, noise = [], commit(), {}
    for budget, bits in SETTINGS:
        torch.manual_seed(0)
        qmodel = quantize(copy.deepcopy(base), AMQConfig(budget=budget, bits=bits), calibration=dataset.train[:32])
        noise |= noise_ratios(qmodel, list(dataset.train[:8]), budget)
        for method, (mode, sensitivity) in METHODS.items():
            runs = []
            for seed in range(args.seeds if method == "random" else 1):
                qmodel.generator.manual_seed(seed)
                runs.append(evaluate(qmodel, test, normalizer=normalizer, mode=mode, sensitivity=sensitivity))
            rels = [r["rel_l2"] for r in runs]
            rows.append({"method": method, "bits": list(bits), "budget": budget,
                         "b_eff": statistics.mean(r["b_eff"] for r in runs), "rel_l2": statistics.mean(rels),
                         "rel_l2_std": statistics.stdev(rels) if len(rels) > 1 else 0.0, "seeds": len(rels),
                         "commit": rev})
            print(f"B={budget:g} bits {bits} {method}: rel-L2 {rows[-1]['rel_l2']:.4f}", flush=True)
    print_table(f"Allocation without QAT, Darcy 32x32, {args.arch}", rows,
                ["method", "bits", "budget", "b_eff", "rel_l2", "rel_l2_std", "seeds"])
    out = args.out or RESULTS / f"ptq_allocation_darcy_{args.arch}.json"
    print("quantization noise / 4^-b per option: " + ", ".join(f"{b}: {r:.3f}" for b, r in sorted(noise.items())))
    write_json(out, {"rows": rows, "noise_over_4^-b": noise, "n_test": len(test), "commit": rev})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
