"""The ``amq-export`` command line.

Every user error (bad file, flag or data) ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from amq_export.errors import AMQError
from amq_export.progress import console, results_console


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="darcy", help="'darcy' (generated, cached) or a .npz/.pt grid file (x, y)")
    p.add_argument("--resolution", type=int, default=32, help="grid resolution for generated Darcy data")
    p.add_argument("--n-train", type=int, default=1000, help="training samples (validation is split off)")
    p.add_argument("--n-test", type=int, default=100, help="test samples")
    p.add_argument("--mesh", choices=("grid", "irregular"), default="grid", help="full grid or irregular subset")
    p.add_argument("--seed", type=int, default=0)


def _dataset(args: argparse.Namespace, cluster_size: int | None):
    from amq_export.data.datasets import load_mesh_dataset

    return load_mesh_dataset(
        args.data, resolution=args.resolution, n_train=args.n_train, n_test=args.n_test,
        mesh=args.mesh, cluster_size=cluster_size, seed=args.seed,
    )


def cmd_data(args: argparse.Namespace) -> None:
    from amq_export.data.darcy import write_darcy_npz

    path = write_darcy_npz(args.out, resolution=args.resolution, samples=args.samples, seed=args.seed)
    console.print(f"wrote {args.samples} Darcy samples at {args.resolution}x{args.resolution} to {path}")


def cmd_train(args: argparse.Namespace):
    from amq_export.models import build_model
    from amq_export.models.presets import CLUSTER_SIZE, darcy_config
    from amq_export.training import train_float

    dataset = _dataset(args, CLUSTER_SIZE if args.arch == "graphvit" else None)
    config = darcy_config(args.arch, hidden=args.hidden, layers=args.layers)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, config)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"{args.arch}: {params:,} parameters; {len(dataset.train)} train / {len(dataset.val)} val / "
                  f"{len(dataset.test)} test meshes of {dataset.train[0].num_nodes} nodes")
    result = train_float(
        model, dataset, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        time_budget_s=args.time_budget,
        out=args.out, task={**dataset.meta, "cluster_size": dataset.meta.get("cluster_size")},
    )
    console.print(
        f"best val rel-L2 {result.best_val_rel_l2:.4f} (epoch {result.best_epoch}); "
        f"test rel-L2 {result.test_rel_l2:.4f}; {result.train_seconds:.0f}s; saved {args.out}"
    )
    return model, dataset


def cmd_eval(args: argparse.Namespace) -> None:
    from amq_export.checkpoint import load_checkpoint
    from amq_export.data.normalizer import Normalizer
    from amq_export.training import evaluate_float

    path = Path(args.model)
    if path.suffix == ".onnx":
        raise AMQError(f"{path}: evaluating ONNX artifacts is not available yet; pass a .pt checkpoint")
    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    dataset = _dataset(args, ckpt.task.get("cluster_size"))
    normalizer = Normalizer.from_dict(ckpt.normalizer) if ckpt.normalizer else dataset.normalizer
    rel = evaluate_float(model, dataset.test, normalizer)
    console.print(f"{ckpt.arch}: test rel-L2 {rel:.4f} on {len(dataset.test)} meshes")
    print(json.dumps({"arch": ckpt.arch, "rel_l2": rel, "samples": len(dataset.test)}))


def cmd_plan(args: argparse.Namespace) -> None:
    """Layers, domains, shapes and MACs of a checkpoint, and the BOPs of uniform 4/8-bit and of the budget."""
    from rich.table import Table

    from amq_export.amq.allocation import edge_bits
    from amq_export.amq.config import AMQConfig
    from amq_export.api import quantize
    from amq_export.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.model)
    config = AMQConfig(budget=args.budget, bits=_bits(args.bits), weight_bits=args.weight_bits)
    dataset = _dataset(args, ckpt.task.get("cluster_size"))
    mesh = dataset.test[0]
    qmodel = quantize(ckpt.build_model(), config)
    rows = {"node": mesh.num_nodes, "edge": mesh.edge_index.shape[1], "cluster": mesh.num_clusters}
    table = Table(title=f"{ckpt.arch}: layers on a mesh of {rows['node']} nodes, {rows['edge']} edges, "
                        f"{rows['cluster']} clusters")
    for col in ("layer", "kind", "domain", "in", "out", "rows", "MACs", "quantized"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "domain") else "right")
    for layer in qmodel.domain_table:
        n = rows.get(layer.domain, 0)
        table.add_row(layer.name, layer.kind, layer.domain, str(layer.in_features), str(layer.out_features),
                      str(n), f"{layer.macs_per_row * n:,}", "yes" if layer.quantized else "float (16-bit)")
    results_console.print(table)
    summary = Table(title=f"cost per mesh (weights at {config.weight_bits} bits, float layers at 16x16)")
    for col in ("setting", "b_eff", "GBOPs", "of which aux"):
        summary.add_column(col, justify="right")
    for label, budget, mode in (("uniform 8-bit", 8.0, "uniform"), ("uniform 4-bit", 4.0, "uniform"),
                                (f"AMQ budget {config.budget:g}", config.budget, "aux")):
        node_cost, cluster_cost = qmodel.item_costs(mesh)
        node_bits = torch.full_like(node_cost, budget).round().long() if mode == "uniform" else None
        if mode == "aux":
            with torch.no_grad():
                node_bits, cluster_bits = qmodel.allocate(mesh, budget, "aux", aux_scores=qmodel.aux(mesh))
        else:
            cluster_bits = None if cluster_cost is None else torch.full_like(cluster_cost, budget).round().long()
        cost = qmodel.cost(mesh, node_bits, edge_bits(node_bits, mesh.edge_index, config.edge_rule), cluster_bits,
                           with_aux=mode == "aux")
        summary.add_row(label, f"{cost['b_eff']:.3f}", f"{cost['bops'] / 1e9:.3f}", f"{cost['aux_bops'] / 1e9:.4f}")
    results_console.print(summary)


def _bits(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise AMQError(f"--bits takes comma-separated integers in 2..8, e.g. --bits 3,4,5,6; got {text!r}") from None


def cmd_demo(args: argparse.Namespace) -> None:
    """The embedded default job: generated Darcy data, a float MP-PDE, then AMQ vs uniform at equal cost."""
    import copy

    from rich.table import Table

    from amq_export.amq.config import AMQConfig
    from amq_export.api import evaluate, finetune, quantize, save_quantized

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(
        arch="mppde", data="darcy", resolution=32, n_train=args.n_train, n_test=args.n_test, mesh="grid",
        seed=0, hidden=None, layers=None, epochs=args.epochs, time_budget=None, lr=1e-3, batch_size=8,
        out=out / "mppde_float.pt",
    )
    float_model, dataset = cmd_train(ns)
    from amq_export.training import evaluate_float

    rows = [("float", "-", evaluate_float(float_model, dataset.test, dataset.normalizer), None)]
    for mode in ("uniform", "aux"):
        console.print(f"AMQ: quantizing for budget {args.budget:g} bits, QAT with {mode} allocation")
        torch.manual_seed(0)
        qmodel = quantize(copy.deepcopy(float_model), AMQConfig(budget=args.budget), calibration=dataset.train[:32])
        finetune(qmodel, dataset.train, dataset.val, normalizer=dataset.normalizer, epochs=args.qat_epochs, mode=mode)
        metrics = evaluate(qmodel, dataset.test, normalizer=dataset.normalizer, mode=mode)
        rows.append((mode, f"{args.budget:g}", metrics["rel_l2"], metrics["b_eff"]))
        save_quantized(out / f"mppde_amq_{mode}.pt", qmodel, normalizer=dataset.normalizer.to_dict())
    table = Table(title=f"Darcy 32x32, MP-PDE, {len(dataset.test)} test meshes")
    for col in ("model", "budget", "test rel-L2", "measured b_eff"):
        table.add_column(col, justify="right")
    for name, budget, rel, b_eff in rows:
        table.add_row(name, budget, f"{rel:.4f}", "-" if b_eff is None else f"{b_eff:.3f}")
    results_console.print(table)
    console.print(f"checkpoints in {out}/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amq-export",
        description="Adaptive Mesh Quantization for neural PDE surrogates on meshes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate a dataset file")
    p.add_argument("kind", choices=("darcy",))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a float model")
    p.add_argument("--arch", choices=("mppde", "graphvit"), required=True)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="checkpoint to write (the best epoch by validation error)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop (and finish the LR schedule) after this many seconds of training")
    p.add_argument("--hidden", type=int, default=None, help="latent width (architecture default if omitted)")
    p.add_argument("--layers", type=int, default=None, help="message-passing layers / GNN blocks")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split")
    p.add_argument("model")
    _add_data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="layers, domains, MACs and the cost of uniform and AMQ quantization")
    p.add_argument("model")
    _add_data_args(p)
    p.add_argument("--budget", type=float, default=4.0, help="target effective activation bits")
    p.add_argument("--bits", default=None, help="activation bit options, e.g. 3,4,5,6 (default: around the budget)")
    p.add_argument("--weight-bits", type=int, default=8)
    p.set_defaults(func=cmd_plan, n_train=4, n_test=1)

    p = sub.add_parser("demo", help="the embedded default job on generated Darcy data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=10, help="float training epochs")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--budget", type=float, default=4.0)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=100)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Brevitas announces an optional CUDA package at import; it says nothing about the user's job
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AMQError as exc:
        print(f"amq-export: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("amq-export: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
