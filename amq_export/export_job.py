"""The job users come for: ``amq-export MODEL.pt --target onnx|ort``.

load the float checkpoint -> data -> passes + calibration -> joint QAT (AMQ) and, as the baseline,
QAT of uniform quantization at the same budget -> test errors of float / uniform / AMQ -> export ->
verification in ONNX Runtime (parity with PyTorch, error, b_eff, latency) -> report.

Everything is written into a staging directory beside the output directory and moved into place
only when the job has finished, so a failure at any step leaves no partial artifact behind.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amq_export.amq.allocation import validate_bits
from amq_export.amq.config import AMQConfig
from amq_export.errors import AMQError
from amq_export.progress import console

PARITY_BITS, PARITY_REL_L2 = 0.999, 1e-3


@dataclass
class ExportJob:
    model: Path
    target: str = "onnx"
    data: str = "darcy"
    budget: float = 4.0
    bits: tuple[int, ...] | None = None
    epochs: int = 2
    max_samples: int | None = 200
    out: Path | None = None
    seed: int = 0
    n_test: int | None = None
    weight_bits: int = 8
    ort_kernels: bool = False  # --target ort: also AMQ's ONNX Runtime kernels (runtimes/onnxruntime/kernels)

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else self.model.parent / f"{self.model.stem}-amq-{self.target}"


def _check(job: ExportJob) -> AMQConfig:
    """Every argument checked before any work is done (the error names the flag to fix)."""
    from amq_export.exporter import check_target

    check_target(job.target, job.ort_kernels)
    bits = validate_bits(job.bits) if job.bits is not None else None
    if not math.isfinite(job.budget):
        raise AMQError(f"--budget {job.budget} is not a number of bits")
    if bits is not None and not bits[0] <= job.budget <= bits[-1]:
        raise AMQError(f"--budget {job.budget:g} is outside the bit options {list(bits)}: choose a budget between "
                       f"{bits[0]} and {bits[-1]} or change --bits")
    if job.epochs < 1:
        raise AMQError(f"--epochs must be >= 1, got {job.epochs}")
    if job.max_samples is not None and job.max_samples < 2:
        raise AMQError(f"--max-samples must be >= 2, got {job.max_samples}")
    return AMQConfig(budget=job.budget, bits=bits, weight_bits=job.weight_bits)


def _staging_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise AMQError(f"cannot write to output directory {out}: {exc.strerror}; pass --out with a writable "
                       "directory") from None


def _check_data(dataset: Any, config: dict[str, Any], data: str) -> None:
    mesh = dataset.test[0] if dataset.test else dataset.train[0]
    expected = {"in_features": mesh.x.shape[-1], "out_features": mesh.y.shape[-1], "spatial_dim": mesh.pos.shape[-1]}
    bad = {k: (v, config.get(k)) for k, v in expected.items() if config.get(k) is not None and config[k] != v}
    if bad:
        detail = ", ".join(f"{k}: data {d} vs model {m}" for k, (d, m) in bad.items())
        raise AMQError(f"data {data!r} does not match the model ({detail}): pass the data the model was trained on")


def run(job: ExportJob) -> dict[str, Any]:
    """Run the whole job; returns the report (also written to ``report.json`` in the output directory)."""
    from amq_export.amq.inference_model import input_names
    from amq_export.api import evaluate, finetune, quantize
    from amq_export.checkpoint import load_checkpoint
    from amq_export.data.datasets import load_mesh_dataset
    from amq_export.data.normalizer import Normalizer
    from amq_export.training import evaluate_float

    config = _check(job)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    stage = _staging_dir(job.out_dir)
    try:
        ckpt = load_checkpoint(job.model)
        float_model = ckpt.build_model()
        input_names(float_model)  # fails now, before QAT, for an architecture that cannot be exported yet
        task = dict(ckpt.task)
        if ckpt.arch == "graphvit" and not task.get("cluster_size"):
            raise AMQError(f"{job.model} is a GraphViT checkpoint without the cluster size it was trained with "
                           "(task.cluster_size): retrain it with amq-export train, which records it")
        with console.status("loading data"):
            extra = {k: task[k] for k in ("keep_fraction", "cluster_size") if task.get(k)}
            dataset = load_mesh_dataset(job.data, resolution=int(task.get("resolution") or 32),
                                        n_train=int(task.get("n_train", 1000)),
                                        n_test=job.n_test or int(task.get("n_test", 100)),
                                        mesh=task.get("mesh", "grid"), seed=int(task.get("seed", 0)), **extra)
        _check_data(dataset, ckpt.config, job.data)
        normalizer = Normalizer.from_dict(ckpt.normalizer) if ckpt.normalizer else dataset.normalizer
        train = list(dataset.train)[: job.max_samples] if job.max_samples else list(dataset.train)
        val, test = list(dataset.val)[:50], list(dataset.test)
        seconds["data"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        float_rel = evaluate_float(float_model, test, normalizer)
        models, results = {}, {}
        for mode in ("uniform", "aux"):
            console.print(f"[bold]{'AMQ' if mode == 'aux' else 'uniform'}[/]: passes, calibration and "
                          f"{job.epochs} QAT epoch(s) on {len(train)} meshes at budget {job.budget:g}")
            torch.manual_seed(job.seed)
            qmodel = quantize(copy.deepcopy(float_model), config, calibration=train[:32])
            finetune(qmodel, train, val, normalizer=normalizer, epochs=job.epochs, mode=mode, seed=job.seed)
            models[mode] = qmodel
            results[mode] = evaluate(qmodel, test, normalizer=normalizer, mode=mode)
        seconds["qat"] = time.perf_counter() - t0
        qmodel = models["aux"]

        t0 = time.perf_counter()
        with console.status(f"exporting for {job.target}"):
            from amq_export.exporter import export

            exported = export(qmodel, stage / "model.onnx", example=test[0], target=job.target,
                              normalizer=normalizer.to_dict(), budget=job.budget,
                              cluster_size=task.get("cluster_size"), ort_kernels=job.ort_kernels)
        seconds["export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verification = _verify(exported, qmodel, test, normalizer, job.budget)
        seconds["verify"] = time.perf_counter() - t0

        artifacts = {"model.onnx": "the AMQ model in standard ONNX (opset 18; integer GEMMs as MatMulInteger)",
                     "report.json": "this report, machine-readable", "report.md": "this report",
                     "allocation.png": "bits per node on a test mesh, and the error of AMQ and of uniform"}
        if exported.optimized_path is not None:
            artifacts["model.ort.onnx"] = ("the same graph as ONNX Runtime's CPU provider optimizes it "
                                          "(MatMulIntegerToFloat kernels); load it with optimizations off or on"
                                          + ("; it uses AMQ's kernel library (domain amq.ort): register "
                                             "`make kernels`'s library in the session options"
                                             if job.ort_kernels else ""))
        report = {
            "model": str(job.model), "arch": ckpt.arch, "target": job.target, "data": job.data,
            "bits": list(qmodel.amq_config.bits), "weight_bits": qmodel.amq_config.weight_bits,
            "budget": job.budget, "b_eff": results["aux"]["b_eff"], "b_eff_max": results["aux"]["b_eff_max"],
            "b_eff_exported": verification["b_eff"], "bops": results["aux"]["bops_per_mesh"],
            "test_rel_l2": {"float": float_rel, "uniform": results["uniform"]["rel_l2"],
                            "amq": results["aux"]["rel_l2"], "exported": verification["rel_l2"]},
            "amq_vs_uniform": results["aux"]["rel_l2"] / results["uniform"]["rel_l2"],
            "cost": {"float_gbops": _float_gbops(qmodel, test), "uniform_b_eff": results["uniform"]["b_eff"],
                     "uniform_gbops": results["uniform"]["bops_per_mesh"] / 1e9,
                     "amq_gbops": results["aux"]["bops_per_mesh"] / 1e9},
            "parity": verification["parity"], "latency_ms": verification["latency"],
            "epochs": job.epochs, "seed": job.seed, "samples": {"train": len(train), "val": len(val), "test": len(test)},
            "rewrites": exported.rewrites, "artifacts": artifacts,
            "job": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(job).items()},
        }
        _plot(stage / "allocation.png", models, test[0], normalizer, job.budget, verification["bits_first"])
        seconds["total"] = time.perf_counter() - t_start
        report["seconds"] = seconds
        from amq_export.report import write_json, write_markdown

        write_json(stage / "report.json", report)
        write_markdown(stage / "report.md", report)
        _publish(stage, job.out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report["out_dir"] = str(job.out_dir)
    return report


def _verify(exported: Any, qmodel: Any, test: list[Any], normalizer: Any, budget: float) -> dict[str, Any]:
    """Run the artifact in ONNX Runtime on every test mesh: parity with PyTorch, error, b_eff, latency.

    PyTorch evaluates an AMQ model with the integer arithmetic of the artifact, and here with ONNX Runtime's
    SiLU (``runtime_activations``), so parity compares two implementations of one computation. Reported
    beside it: the distance of PyTorch's own SiLU (``torch_silu_rel_l2``), of the training numerics (float
    fake quantization), and the one-ulp floor: PyTorch against itself with every quantized layer's input
    one ulp off (``input_ulp_noise``), as far as two correct float implementations are apart before each
    quantizer. A deep low-bit model turns such differences into flipped roundings, so parity near the
    floor means the runtime computes what PyTorch does up to float kernels.
    """
    from amq_export.amq.quant_linear import fake_quant_eval, input_ulp_noise
    from amq_export.amq.runtime_silu import runtime_activations
    from amq_export.exporter import run_artifact
    from runtimes.onnxruntime import OrtModel, parity

    # one thread, so that every sum runs in one order as in PyTorch (graphs with a reducing ScatterND get one
    # intra-op thread from OrtModel anyway: ONNX Runtime loses updates on several)
    runner = OrtModel(exported.optimized_path or exported.path, threads=1)
    run = run_artifact(runner, test, normalizer, budget, "verifying in ONNX Runtime")
    pairs, torch_silu_pairs, fake_pairs, ulp_pairs = [], [], [], []
    for mesh, out in zip(test, run.outputs, strict=True):
        with torch.no_grad():
            with runtime_activations(qmodel):
                ref = qmodel(mesh, budget=budget, mode="aux")
            plain = qmodel(mesh, budget=budget, mode="aux")
            with fake_quant_eval(qmodel):
                fake = qmodel(mesh, budget=budget, mode="aux").pred
            with input_ulp_noise(qmodel, seed=len(ulp_pairs)):  # PyTorch's SiLU on both sides: the costly
                nudged = qmodel(mesh, budget=budget, mode="aux")  # emulation only where it is compared
        bits = (_all_bits(ref.node_bits, ref.edge_bits, ref.cluster_bits),
                _all_bits(out["node_bits"], out["edge_bits"], out.get("cluster_bits")))
        pairs.append((ref.pred.numpy(), out["pred"], *bits))
        torch_silu_pairs.append((ref.pred.numpy(), plain.pred.numpy(), None, None))
        fake_pairs.append((ref.pred.numpy(), fake.numpy(), None, None))
        ulp_pairs.append((plain.pred.numpy(), nudged.pred.numpy(), bits[0],
                          _all_bits(nudged.node_bits, nudged.edge_bits, nudged.cluster_bits)))
    times = run.seconds
    result = parity(pairs)
    result["pass"] = bool(result["bits_agreement"] >= PARITY_BITS and result["rel_l2"] <= PARITY_REL_L2)
    result["torch_silu_rel_l2"] = parity(torch_silu_pairs)["rel_l2"]
    result["fake_quant_rel_l2"] = parity(fake_pairs)["rel_l2"]
    floor = parity(ulp_pairs)
    result["ulp_floor_rel_l2"], result["ulp_floor_bits_agreement"] = floor["rel_l2"], floor["bits_agreement"]
    latency = {"median": 1e3 * float(np.median(times[1:] or times)), "runs": max(len(times) - 1, 1),
               "nodes": int(test[0].num_nodes), "threads": runner.threading}
    return {"parity": result, "rel_l2": float(np.mean(run.rel_l2)), "b_eff": float(np.mean(run.b_eff)),
            "latency": latency, "bits_first": (run.outputs[0]["node_bits"], run.outputs[0]["edge_bits"])}


def _all_bits(*bits: Any) -> np.ndarray:
    """Node, edge (and cluster, where the model has cluster items) bits in one vector: what bits agreement
    compares."""
    return np.concatenate([np.asarray(b) for b in bits if b is not None])


def _float_gbops(qmodel: Any, meshes: list[Any]) -> float:
    """BOPs of the float model (every Linear at 16 x 16 bits, as the cost model counts float layers), per mesh."""
    from amq_export.amq.cost import bops

    every_layer = [(layer.name, layer.domain, layer.in_features, layer.out_features) for layer in qmodel.layers]
    every_layer += list(qmodel.float_layers)
    total = sum(bops([], {}, every_layer, rows={"node": mesh.num_nodes, "edge": mesh.edge_index.shape[1],
                                                "cluster": mesh.num_clusters})["float_bops"] for mesh in meshes)
    return total / len(meshes) / 1e9


def _plot(path: Path, models: dict[str, Any], mesh: Any, normalizer: Any, budget: float,
          bits: tuple[np.ndarray, np.ndarray]) -> None:
    """``allocation.png`` for one mesh from the artifact's ``node_bits`` and ``edge_bits`` outputs."""
    from amq_export.report import plot_allocation

    errors, rels = {}, {}
    truth = normalizer.invert(mesh.y, "y")
    for mode, qmodel in models.items():
        with torch.no_grad():
            pred = normalizer.invert(qmodel(mesh, budget=budget, mode=mode).pred, "y")
        errors[mode] = (pred - truth).abs().sum(-1).numpy()
        rels[mode] = float((pred - truth).norm() / truth.norm())
    node_bits, edge_bits = (np.asarray(b) for b in bits)
    # per node, the bits of the edges it receives (one value under the target rule; their max otherwise)
    received = np.full(node_bits.shape, -1, dtype=np.int64)
    np.maximum.at(received, mesh.edge_index[1].numpy(), edge_bits)
    received = np.where(received < 0, node_bits.min(initial=0), received)
    plot_allocation(path, mesh.pos.numpy(), [
        (node_bits, f"AMQ bits of node rows (budget {budget:g}, mean {float(np.mean(node_bits)):.2f})"),
        (received, f"AMQ bits of the edges each node receives (mean over edges {float(np.mean(edge_bits)):.2f})"),
    ], errors["aux"], errors["uniform"], (
        f"|error| AMQ (rel-L2 {rels['aux']:.4f})", f"|error| uniform, equal cost (rel-L2 {rels['uniform']:.4f})"))


def _publish(stage: Path, out: Path) -> None:
    """Move the finished artifacts into ``out`` (each an atomic rename on the same file system)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AMQError(f"cannot create output directory {out}: {exc.strerror}; pass --out with a writable "
                       "directory") from None
    for item in sorted(stage.iterdir()):
        item.replace(out / item.name)
