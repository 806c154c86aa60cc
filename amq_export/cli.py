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
        return _eval_onnx(args, path)
    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    dataset = _dataset(args, ckpt.task.get("cluster_size"))
    normalizer = Normalizer.from_dict(ckpt.normalizer) if ckpt.normalizer else dataset.normalizer
    rel = evaluate_float(model, dataset.test, normalizer)
    console.print(f"{ckpt.arch}: test rel-L2 {rel:.4f} on {len(dataset.test)} meshes")
    print(json.dumps({"arch": ckpt.arch, "rel_l2": rel, "samples": len(dataset.test)}))


def _eval_onnx(args: argparse.Namespace, path: Path) -> None:
    """Run an exported model over a dataset's test split in ONNX Runtime: error, measured b_eff, latency."""
    import numpy as np

    from amq_export.data.normalizer import Normalizer
    from amq_export.exporter import run_artifact
    from runtimes.onnxruntime import OrtModel

    runner = OrtModel(path, threads=args.threads)
    meta = runner.meta
    if not meta:
        raise AMQError(f"{path} carries no amq-export metadata; evaluate models exported by amq-export")
    budget = args.budget if args.budget is not None else meta.get("budget")
    bits = meta.get("bits")
    if bits and budget is not None and not bits[0] <= budget <= bits[-1]:
        raise AMQError(f"--budget {budget:g} is outside the model's bit options {bits}: choose one between "
                       f"{bits[0]} and {bits[-1]}")
    if "clusters" in meta.get("inputs", []) and not meta.get("cluster_size"):
        raise AMQError(f"{path} reads clusters but does not record their size; re-export it with amq-export")
    dataset = _dataset(args, meta.get("cluster_size"))
    normalizer = Normalizer.from_dict(meta["normalizer"]) if meta.get("normalizer") else dataset.normalizer
    mesh = dataset.test[0]
    if mesh.x.shape[-1] != meta["config"]["in_features"]:
        raise AMQError(f"data {args.data!r} has {mesh.x.shape[-1]} input features but the model reads "
                       f"{meta['config']['in_features']}: pass the data the model was trained on")
    run = run_artifact(runner, list(dataset.test), normalizer, budget, f"ONNX Runtime: {path.name}")
    errors, b_effs, times = run.rel_l2, run.b_eff, run.seconds
    result = {"model": str(path), "rel_l2": float(np.mean(errors)), "samples": len(errors),
              "budget": budget if "node_bits" in runner.output_names else None,
              "b_eff": float(np.mean(b_effs)) if b_effs else None, "b_eff_max": max(b_effs) if b_effs else None,
              "latency_ms_median": 1e3 * float(np.median(times)), "nodes": int(dataset.test[0].num_nodes),
              "threading": runner.threading}
    b_eff = f"measured b_eff {result['b_eff']:.3f} (max {result['b_eff_max']:.3f}) at budget {budget:g}; " if b_effs else ""
    console.print(f"{path.name}: test rel-L2 {result['rel_l2']:.4f} on {len(errors)} meshes; {b_eff}"
                  f"latency {result['latency_ms_median']:.2f} ms per mesh (median, {result['nodes']} nodes, "
                  f"{runner.threading})")
    print(json.dumps(result))


def cmd_export(args: argparse.Namespace) -> None:
    """``amq-export MODEL.pt --target onnx|ort``: QAT, export, verification and report."""
    from rich.table import Table

    from amq_export.export_job import ExportJob, run

    job = ExportJob(model=Path(args.model), target=args.target, data=args.data, budget=args.budget,
                    bits=_bits(args.bits), epochs=args.epochs, max_samples=args.max_samples,
                    out=Path(args.out) if args.out else None, seed=args.seed, n_test=args.n_test,
                    ort_kernels=args.ort_kernels)
    report = run(job)
    acc, parity = report["test_rel_l2"], report["parity"]
    table = Table(title=f"{report['arch']} -> {report['target']}: bits {report['bits']}, budget {report['budget']:g}")
    for col in ("model", "test rel-L2", "b_eff"):
        table.add_column(col, justify="right")
    table.add_row("float", f"{acc['float']:.4f}", "-")
    table.add_row("uniform (equal cost)", f"{acc['uniform']:.4f}", f"{report['cost']['uniform_b_eff']:.3f}")
    table.add_row("AMQ (PyTorch)", f"{acc['amq']:.4f}", f"{report['b_eff']:.3f}")
    table.add_row("AMQ (ONNX Runtime)", f"{acc['exported']:.4f}", f"{report['b_eff_exported']:.3f}")
    results_console.print(table)
    verdict = "[green]PASS[/]" if parity["pass"] else "[red]FAIL[/]"
    results_console.print(
        f"parity with PyTorch: {verdict}, same bits on {100 * parity['bits_agreement']:.3f}% of node and edge rows, "
        f"prediction rel-L2 diff {parity['rel_l2']:.2e} (bound 1e-3; one-ulp floor {parity['ulp_floor_rel_l2']:.2e}: "
        f"PyTorch against itself with every quantized input one ulp off); AMQ / uniform error "
        f"{report['amq_vs_uniform']:.3f}x; "
        f"{report['seconds']['total']:.0f} s")
    results_console.print(f"wrote {', '.join(report['artifacts'])} to {report['out_dir']}/")
    if not parity["pass"]:
        console.print("[yellow]warning[/]: the exported prediction differs from PyTorch's (the same integer "
                      "arithmetic) by more than 1e-3. One-ulp differences of float kernels flip quantization "
                      "roundings that a deep low-bit model amplifies (see the one-ulp floor); compare the test "
                      "errors in report.md.")


def cmd_plan(args: argparse.Namespace) -> None:
    """Layers, domains, shapes and MACs of a checkpoint, and the BOPs of uniform 4/8-bit and of the budget."""
    from rich.table import Table

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
        with torch.no_grad():
            if mode == "aux":
                cost = qmodel.allocation_cost(mesh, budget, mode)
            else:  # every row at ``budget`` bits, whether or not it is one of the options
                bits = {d: torch.full((n,), int(budget)) for d, n in rows.items()}
                cost = qmodel.cost(mesh, bits["node"], bits["edge"], bits["cluster"] if qmodel.has_cluster_items else None,
                                   with_aux=False)
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
    """The embedded default job: generated Darcy data, a float MP-PDE, then the export job on it."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "mppde_float.pt"
    cmd_train(argparse.Namespace(
        arch="mppde", data="darcy", resolution=32, n_train=args.n_train, n_test=args.n_test, mesh="grid",
        seed=0, hidden=None, layers=None, epochs=args.epochs, time_budget=args.time_budget, lr=1e-3, batch_size=8,
        out=checkpoint,
    ))
    cmd_export(argparse.Namespace(
        model=checkpoint, target=args.target, data="darcy", budget=args.budget, bits=args.bits,
        epochs=args.qat_epochs, max_samples=args.max_samples, out=out / f"amq-{args.target}", seed=0, n_test=None,
        ort_kernels=False,
    ))


def cmd_build_kernels(args: argparse.Namespace) -> None:
    """``amq-export build-kernels``: compile AMQ's ONNX Runtime kernel library into the cache (headers from
    ``$ORT_INCLUDE_DIR``; ``make kernels`` fetches them and runs this)."""
    from runtimes.onnxruntime import kernels

    path = kernels.build(force=args.force, progress=console.print)
    results_console.print(f"AMQ's ONNX Runtime kernels: {path}")


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

    p = sub.add_parser("export", help="the main job (also run as 'amq-export MODEL.pt ...'): QAT, export, "
                                      "verification in ONNX Runtime, report")
    p.add_argument("model", help="float checkpoint (.pt) written by amq-export train")
    p.add_argument("--target", default="onnx", help="onnx | ort | trt")
    p.add_argument("--data", default="darcy", help="'darcy' (generated, as in the checkpoint) or a .npz/.pt grid file")
    p.add_argument("--budget", type=float, default=4.0, help="target effective activation bits")
    p.add_argument("--bits", default=None, help="activation bit options, e.g. 4,8 (default: around the budget)")
    p.add_argument("--epochs", type=int, default=2, help="QAT epochs (for AMQ and for the uniform baseline)")
    p.add_argument("--max-samples", type=int, default=200, help="training meshes used for QAT")
    p.add_argument("--n-test", type=int, default=None, help="test meshes (default: as the checkpoint's task)")
    p.add_argument("--out", default=None, help="output directory (default: next to MODEL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ort-kernels", action="store_true",
                   help="--target ort: also use AMQ's ONNX Runtime kernels (build them first: make kernels)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="evaluate a checkpoint (.pt) or an exported model (.onnx) on a test split")
    p.add_argument("model")
    _add_data_args(p)
    p.add_argument("--budget", type=float, default=None, help=".onnx only: the run-time budget (default: export's)")
    p.add_argument("--threads", type=int, default=None,
                   help=".onnx only: ONNX Runtime threads (mesh graphs: default 1, since ONNX Runtime's scatter-add "
                        "loses updates on several intra-op threads; more run its parallel executor; graphs exported "
                        "with --ort-kernels run on intra-op threads)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="layers, domains, MACs and the cost of uniform and AMQ quantization")
    p.add_argument("model")
    _add_data_args(p)
    p.add_argument("--budget", type=float, default=4.0, help="target effective activation bits")
    p.add_argument("--bits", default=None, help="activation bit options, e.g. 3,4,5,6 (default: around the budget)")
    p.add_argument("--weight-bits", type=int, default=8)
    p.set_defaults(func=cmd_plan, n_train=4, n_test=1)

    p = sub.add_parser("demo", help="the embedded default job: train a float MP-PDE on generated Darcy data, "
                                    "then export it (QAT, ONNX, ONNX Runtime)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--target", default="ort", help="onnx | ort")
    p.add_argument("--epochs", type=int, default=10, help="float training epochs")
    p.add_argument("--time-budget", type=float, default=180, help="float training seconds at most")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--max-samples", type=int, default=200, help="training meshes used for QAT")
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--bits", default="4,8")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-test", type=int, default=100)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("build-kernels", help="compile AMQ's ONNX Runtime kernels from $ORT_INCLUDE_DIR's headers (optional; used by --ort-kernels; make kernels fetches the headers and runs this)")
    p.add_argument("--force", action="store_true", help="rebuild even if this source has a build")
    p.set_defaults(func=cmd_build_kernels)
    return parser


COMMANDS = ("data", "train", "export", "eval", "plan", "demo", "build-kernels")


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Brevitas announces an optional CUDA package at import; it says nothing about the user's job
    warnings.filterwarnings("ignore", message="fast_hadamard_transform")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        argv.insert(0, "export")  # amq-export MODEL.pt --target ...
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
