"""Export: an ``AMQModel`` (or a float model) -> a checked ONNX artifact for a deployment target.

One entry point, ``export(qmodel, path, target=..., example=mesh)``:

- ``onnx``: ``path`` (standard ONNX, opset 18, integer GEMMs as ``MatMulInteger``), checked with
  ``onnx.checker`` (full check);
- ``ort``: that, plus ``<stem>.ort.onnx``: the ONNX Runtime rewrites of ``passes.onnx`` applied
  (``MatMulIntegerToFloat`` kernels), saved as ONNX Runtime's CPU provider optimizes it; with
  ``ort_kernels=True`` also AMQ's own kernels (``runtimes/onnxruntime/kernels``: bucket segments quantized in
  one pass, a scatter-add that is correct on intra-op threads), which that file then needs at run time;
- ``trt``: not available yet (clear error).

Every file is written to a temporary name and renamed, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from torch import Tensor, nn

from amq_export.amq.inference_model import AMQInferenceModel, input_names, mesh_inputs
from amq_export.amq.model import AMQModel
from amq_export.errors import AMQError
from amq_export.exporter.onnx_export import to_onnx
from amq_export.safe_io import atomic_write
from passes.onnx import apply_rules
from runtimes.onnxruntime import read_meta

TARGETS = ("onnx", "ort", "trt")

__all__ = ["TARGETS", "ArtifactRun", "ExportResult", "artifact_cost", "check_target", "deployment_meta", "export", "export_float", "read_meta", "run_artifact"]


@dataclass
class ExportResult:
    target: str
    path: Path
    optimized_path: Path | None = None
    rewrites: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def check_target(target: str, ort_kernels: bool = False) -> str:
    """``target`` if it can be exported to (and, with ``ort_kernels``, the kernel library is built), else a clear error."""
    if ort_kernels:
        if target != "ort":
            raise AMQError(f"--ort-kernels applies to --target ort only, not {target}")
        from runtimes.onnxruntime import kernels

        kernels.require()
    if target == "trt":
        raise AMQError("--target trt is not available yet: the TensorRT export (plugins for the bucketed "
                       "GEMM) has not landed; use --target onnx or --target ort")
    if target not in TARGETS:
        raise AMQError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    return target


def deployment_meta(qmodel: AMQModel | None, main: nn.Module, normalizer: dict | None = None,
                    budget: float | None = None, cluster_size: int | None = None) -> dict[str, Any]:
    """What evaluating the artifact needs without PyTorch: the cost model's layers, options, normaliser,
    and for models that read clusters the cluster size of the data they were trained on."""
    meta: dict[str, Any] = {"arch": main.arch, "config": dict(main.config), "normalizer": normalizer,
                            "inputs": input_names(main), "quantized": qmodel is not None}
    if cluster_size is not None:
        meta["cluster_size"] = int(cluster_size)
    if qmodel is not None:
        config = qmodel.amq_config
        meta.update({
            "bits": list(config.bits), "weight_bits": config.weight_bits, "edge_rule": config.edge_rule,
            "budget": float(config.budget if budget is None else budget),
            "layers": [[layer.name, layer.domain, layer.in_features, layer.out_features, layer.weight_bits,
                        layer.offset] for layer in qmodel.layers],
            "float_layers": [list(layer) for layer in qmodel.float_layers],
            "aux_macs_per_row": qmodel.aux.macs_per_row(),
        })
    return meta


def export(qmodel: AMQModel, path: str | os.PathLike[str], *, example: Any, target: str = "onnx",
           mode: str = "aux", sort_rows: bool = True, normalizer: dict | None = None,
           budget: float | None = None, cluster_size: int | None = None, ort_kernels: bool = False) -> ExportResult:
    """Export ``qmodel`` for ``target``; ``example`` is one mesh to trace with (any size)."""
    check_target(target, ort_kernels)
    path = Path(path)
    module = AMQInferenceModel(qmodel.eval(), mode=mode, sort_rows=sort_rows)
    meta = deployment_meta(qmodel, qmodel.main, normalizer, budget, cluster_size)
    meta.update({"mode": module.mode, "sort_rows": module.sort_rows})
    model = to_onnx(module, module.example_inputs(example, meta["budget"]), module.output_names, meta)
    model, rewrites = apply_rules(model, "onnx")
    _save(model, path)
    result = ExportResult(target, path, rewrites=rewrites, meta=meta)
    if target == "ort":
        from runtimes.onnxruntime import save_optimized

        fused, fusions = apply_rules(model, "ort-kernels" if ort_kernels else "ort")
        result.rewrites = {op: rewrites.get(op, 0) + fusions.get(op, 0) for op in rewrites | fusions}
        result.optimized_path = save_optimized(fused, path.with_name(path.stem + ".ort.onnx"))
    return result


class _FloatModule(nn.Module):
    """A float mesh model on plain tensors (the reference the quantized artifacts are compared with)."""

    def __init__(self, main: nn.Module) -> None:
        super().__init__()
        self.main = main

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor | None = None,
                variables: Tensor | None = None, clusters: Tensor | None = None) -> Tensor:
        extra = {"clusters": clusters} if clusters is not None else {}
        return self.main.forward_tensors(x, pos, edge_index, None, variables, node_type, **extra)


def export_float(model: nn.Module, path: str | os.PathLike[str], *, example: Any,
                 normalizer: dict | None = None, cluster_size: int | None = None) -> ExportResult:
    """Export a float model (same inputs as the quantized artifact, without ``budget``)."""
    path = Path(path)
    args = mesh_inputs(example, input_names(model))
    meta = deployment_meta(None, model, normalizer, cluster_size=cluster_size)
    onnx_model, rewrites = apply_rules(to_onnx(_FloatModule(model.eval()), args, ["pred"], meta), "onnx")
    _save(onnx_model, path)
    return ExportResult("onnx", path, rewrites=rewrites, meta=meta)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    data = model.SerializeToString()
    return atomic_write(path, lambda fh: fh.write(data))


def artifact_cost(meta: dict[str, Any], node_bits: Any, edge_bits: Any, cluster_bits: Any = None,
                  num_clusters: int = 0) -> dict[str, float]:
    """The cost (DESIGN item 3) of one run of an exported model, from its metadata and its ``node_bits``,
    ``edge_bits`` (and ``cluster_bits``) outputs: ``b_eff`` charges the auxiliary model's BOPs as in training."""
    import torch

    from amq_export.amq.auxiliary import macs_from_rows
    from amq_export.amq.cost import LayerCost, bops

    node_bits = torch.as_tensor(node_bits, dtype=torch.int64)
    edge_bits = torch.as_tensor(edge_bits, dtype=torch.int64)
    layers = [LayerCost(*layer) for layer in meta["layers"]]
    rows_bits = {"node": node_bits, "edge": edge_bits}
    if cluster_bits is not None:
        rows_bits["cluster"] = torch.as_tensor(cluster_bits, dtype=torch.int64)
    aux_macs = (macs_from_rows(meta["aux_macs_per_row"], nodes=node_bits.numel(), edges=edge_bits.numel(),
                               clusters=num_clusters) if meta.get("mode") == "aux" else 0)
    result = bops(layers, rows_bits, [tuple(layer) for layer in meta["float_layers"]],
                  rows={"cluster": num_clusters}, aux_macs=aux_macs)
    result["b_eff"] = result.pop("b_charged")
    return result


@dataclass
class ArtifactRun:
    """One exported model run over meshes: outputs, relative L2 and b_eff per mesh, seconds per run."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    rel_l2: list[float] = field(default_factory=list)
    b_eff: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def run_artifact(runner: Any, meshes: list[Any], normalizer: Any, budget: float | None, label: str) -> ArtifactRun:
    """Run ``runner`` (an ``OrtModel``) on every mesh with a progress bar; the error is in physical units
    and b_eff comes from the ``node_bits`` output and the artifact's metadata (quantized models only)."""
    import time

    import torch

    from amq_export.metrics import mesh_relative_l2
    from amq_export.progress import progress_bar

    run = ArtifactRun()
    with progress_bar() as bar:
        task = bar.add_task(label, total=len(meshes), info="")
        for mesh in meshes:
            feeds = runner.feeds(mesh, budget)
            t0 = time.perf_counter()
            out = runner.run_feeds(feeds)
            run.seconds.append(time.perf_counter() - t0)
            run.outputs.append(out)
            run.rel_l2.append(mesh_relative_l2(torch.from_numpy(out["pred"]), mesh, normalizer))
            if "node_bits" in out:
                run.b_eff.append(artifact_cost(runner.meta, out["node_bits"], out["edge_bits"], out.get("cluster_bits"),
                                               mesh.num_clusters)["b_eff"])
            bar.update(task, advance=1)
    return run
