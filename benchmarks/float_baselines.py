"""Float baselines on 32x32 Darcy: MP-PDE and GraphViT, trained under a wall-clock budget.

Each architecture trains in its own process, so its peak memory (max RSS) is its own. Prints a
table and writes benchmarks/results/float_baselines_darcy.json: rows {arch, rel_l2, params,
train_seconds, peak_mb, commit} (plus epochs, epoch_seconds, best_val_rel_l2, threads).
Targets on 2 cores: test relative L2 <= 0.10 with <= 10 minutes of training per model.

    python benchmarks/float_baselines.py                      # full run (about 20 minutes)
    python benchmarks/float_baselines.py --n-train 100 --n-test 20 --time-budget 30   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _common import RESULTS, commit, float_checkpoint, peak_rss_mb, print_table, run_json_child, write_json

from amq_export import save_checkpoint
from amq_export.data.datasets import load_mesh_dataset
from amq_export.models import build_model
from amq_export.models.presets import CLUSTER_SIZE, darcy_config
from amq_export.training import train_float

ARCHS = ("mppde", "graphvit")


def run_one(args: argparse.Namespace) -> dict:
    """Train one architecture in this process and return its row."""
    arch = args.child
    dataset = load_mesh_dataset("darcy", resolution=args.resolution, n_train=args.n_train, n_test=args.n_test,
                                cluster_size=CLUSTER_SIZE if arch == "graphvit" else None, seed=args.seed)
    torch.manual_seed(args.seed)
    model = build_model(arch, darcy_config(arch))
    result = train_float(model, dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, time_budget_s=args.time_budget or None, progress=False)
    if args.save_dir:
        path = float_checkpoint(arch, args.resolution, args.save_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, normalizer=dataset.normalizer.to_dict(), task=dataset.meta)
    return {
        "arch": arch,
        "rel_l2": round(result.test_rel_l2, 5),
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(result.train_seconds, 1),
        "peak_mb": round(peak_rss_mb(), 1),
        "commit": commit(),
        "epochs": len(result.history),
        "epoch_seconds": round(result.epoch_seconds, 1),
        "best_val_rel_l2": round(result.best_val_rel_l2, 5),
        "threads": torch.get_num_threads(),
        "n_train": args.n_train,
        "n_test": args.n_test,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=200, help="upper bound; the time budget usually ends a run")
    parser.add_argument("--time-budget", type=float, default=540.0,
                        help="training seconds per model; 0: none, train --epochs on a schedule in steps (the "
                             "same model on any machine, where the budget's clock-driven schedule is not)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="runs/float", help="where the trained checkpoints go ('' = nowhere)")
    parser.add_argument("--out", type=Path, default=RESULTS / "float_baselines_darcy.json")
    parser.add_argument("--child", choices=ARCHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for arch in args.archs.split(","):
        rows.append(run_json_child([__file__, *sys.argv[1:], "--child", arch]))
    print_table("Float baselines, Darcy", rows,
                ["arch", "rel_l2", "params", "epochs", "epoch_seconds", "train_seconds", "peak_mb", "commit"])
    write_json(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
