"""Trace a deployable module into a checked, documented ONNX model (dynamo exporter, opset 18).

Dynamic axes are named (``num_nodes``, ``num_edges``, and ``num_clusters``, ``cluster_size`` for GraphViT), every input and output carries a doc string,
and the model carries the metadata needed to evaluate it without PyTorch (``amq.meta``, JSON).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from amq_export.amq.inference_model import MESH_INPUTS
from amq_export.errors import AMQError
from amq_export.exporter.onnx_lowering import OPSET, translation_table
from runtimes.onnxruntime.session import META_KEY

INPUT_DOCS = {
    "x": "float32 [num_nodes, in_features]: node input features, normalised as in training",
    "pos": "float32 [num_nodes, spatial_dim]: node positions",
    "edge_index": "int64 [2, num_edges]: row 0 the source node, row 1 the target node of each edge",
    "node_type": "int64 [num_nodes]: node type id (0 interior, 1 boundary, ...)",
    "variables": "float32 [num_nodes, n_variables]: per-node PDE variables",
    "clusters": "int64 [num_clusters, cluster_size]: member nodes of each cluster in sequence order, padded "
                "with -1 (GraphViT)",
    "budget": "float32 scalar: target effective activation bit-width, between the lowest and highest bit option",
}
OUTPUT_DOCS = {
    "pred": "float32 [num_nodes, out_features]: prediction, normalised as the training targets",
    "node_bits": "int64 [num_nodes]: activation bit-width allocated to each node's rows",
    "edge_bits": "int64 [num_edges]: activation bit-width of each edge's rows (its owner node's edge item)",
    "cluster_bits": "int64 [num_clusters]: activation bit-width allocated to each cluster",
}
# Which axis of which input is which dynamic dimension.
DYNAMIC_AXES = {"x": {0: "num_nodes"}, "pos": {0: "num_nodes"}, "edge_index": {1: "num_edges"},
                "node_type": {0: "num_nodes"}, "variables": {0: "num_nodes"},
                "clusters": {0: "num_clusters", 1: "cluster_size"}}
ARG_NAMES = (*MESH_INPUTS, "budget")


def to_onnx(module: nn.Module, args: Sequence[Tensor | None], output_names: Sequence[str],
            meta: dict[str, Any]) -> onnx.ModelProto:
    """Export ``module(*args)`` (positional, in ``ARG_NAMES`` order, ``None`` for absent inputs)."""
    names = [name for name, arg in zip(ARG_NAMES, args, strict=False) if arg is not None]
    dims = {name: torch.export.Dim(name) for name in ("num_nodes", "num_edges")}
    # A mesh has at least one cluster of at least one slot (an empty mesh: one row of -1).
    dims |= {name: torch.export.Dim(name, min=1) for name in ("num_clusters", "cluster_size")}
    dynamic_shapes = {name: ({axis: dims[dim] for axis, dim in DYNAMIC_AXES[name].items()}
                             if arg is not None and name in DYNAMIC_AXES else None)
                      for name, arg in zip(ARG_NAMES, args, strict=False)}
    _forget_rnn_dispatch()
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, tuple(args), dynamo=True, opset_version=OPSET, input_names=names,
                output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(), verbose=False,
            )
        except Exception as exc:  # the exporter's errors are long reports; keep the gist
            raise AMQError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    model = program.model_proto
    _document(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def _forget_rnn_dispatch() -> None:
    """Clear the dispatch caches of the RNN ops before exporting.

    The exporter swaps in a while-loop decomposition of ``aten.gru``/``aten.lstm`` (dynamic sequence
    length) and restores the old kernel afterwards without invalidating the op's dispatch cache, so a
    second export in the same process unrolls the GRU over the example's cluster size and fails its
    dynamic ``cluster_size``. (torch 2.13; private attribute, hence the guard.)"""
    for op in (torch.ops.aten.gru.input, torch.ops.aten.lstm.input):
        cache = getattr(op, "_dispatch_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def _document(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    dim_names: dict[str, str] = {}
    for value in model.graph.input:
        docs = INPUT_DOCS.get(value.name)
        if docs:
            value.doc_string = docs
        for axis, name in DYNAMIC_AXES.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.dim_param:
                dim_names[dim.dim_param] = name
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in dim_names:
                dim.dim_param = dim_names[dim.dim_param]
    for value in model.graph.output:
        if value.name in OUTPUT_DOCS:
            value.doc_string = OUTPUT_DOCS[value.name]
    model.producer_name = "amq-export"
    model.doc_string = "Adaptive Mesh Quantization model exported by amq-export"
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)


class _quiet_exporter:
    """Silence the exporter's INFO/WARNING chatter (torchvision, onnxscript, onnx_ir's "attribute type is
    ambiguous" for the empty lists the exporter passes) for the duration."""

    NAMES = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir", "torch.fx")

    def __enter__(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in self.NAMES}
        for name in self.NAMES:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
