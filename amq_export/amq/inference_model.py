"""The deployable form of an AMQ model: plain tensors in, prediction and per-node bit-widths out.

``AMQInferenceModel`` is what ``amq_export.export`` traces into ONNX (DESIGN item 8), and it runs in
PyTorch as well. One forward:

1. the auxiliary GNN scores every node (mode ``aux``; ``uniform`` scores nodes by their cost);
2. the allocation of DESIGN item 6 picks every node's bit option under the run-time ``budget`` (an
   input, so one artifact serves every budget), charging the auxiliary model's BOPs, as a literal
   one-sort greedy with no data-dependent shapes (``allocate_levels_traceable``);
3. the mesh is permuted once so that nodes, and then edges, are sorted by bit-width (edges take the
   bits of their target, source or the max, as in training); every quantized Linear then sees
   contiguous row segments, one per bit-width, and runs as one integer GEMM
   (``BucketedIntLinear``);
4. the prediction is permuted back.

With a single bit option the allocation, the auxiliary model and the sort drop out (uniform
quantization). The quantized layers are frozen from the trained ``AdaptiveQuantLinear`` modules.
A budget outside the bit options is not an error inside the graph (it saturates at the lowest or
highest option); callers check it first.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from amq_export.amq.allocation import allocate_levels_traceable, edge_bits, node_item_costs
from amq_export.amq.auxiliary import macs_from_rows
from amq_export.amq.bucketed_linear import BucketedIntLinear
from amq_export.amq.cost import aux_bops
from amq_export.amq.model import AMQModel
from amq_export.amq.quant_linear import AdaptiveQuantLinear
from amq_export.errors import AMQError

EXPORT_MODES = ("aux", "uniform")


MESH_INPUTS = ("x", "pos", "edge_index", "node_type", "variables")


def mesh_inputs(mesh: Any, names: list[str]) -> tuple[Tensor | None, ...]:
    """The mesh fields of ``MESH_INPUTS`` order as the deployed model takes them (``None`` where not in ``names``)."""
    integer = {"edge_index", "node_type"}
    return tuple(None if name not in names else getattr(mesh, name).long() if name in integer
                 else getattr(mesh, name).float() for name in MESH_INPUTS)


def input_names(main: nn.Module) -> list[str]:
    """The mesh inputs the deployed model reads, in order (``budget`` follows them)."""
    config = main.config
    if getattr(main, "arch", None) != "mppde":
        raise AMQError(f"export supports MP-PDE models so far, not {getattr(main, 'arch', type(main).__name__)!r}")
    names = ["x", "pos", "edge_index"]
    if config.get("num_node_types"):
        names.append("node_type")
    if config.get("n_variables"):
        names.append("variables")
    return names


class AMQInferenceModel(nn.Module):
    """``forward(x, pos, edge_index, [node_type], [variables], budget) -> (pred [N, out], node_bits [N])``."""

    def __init__(self, qmodel: AMQModel, mode: str = "aux", sort_rows: bool = True) -> None:
        super().__init__()
        if mode not in EXPORT_MODES:
            raise AMQError(f"mode {mode!r} cannot be deployed; choose one of {EXPORT_MODES}")
        config = qmodel.amq_config
        self.names = input_names(qmodel.main)
        self.options = tuple(config.bits)
        self.mode = mode if len(self.options) > 1 else "uniform"
        self.edge_rule = config.edge_rule
        self.sort_rows = sort_rows and len(self.options) > 1
        self.weight_bits = config.weight_bits
        self.buckets: dict[str, Tensor] = {}
        self.main = _freeze(qmodel.main, self.buckets)
        self.aux = copy.deepcopy(qmodel.aux) if self.mode == "aux" else None
        macs = qmodel._macs_per_row
        if macs["cluster"]:
            raise AMQError("export of models with cluster-domain layers (GraphViT) is not supported yet")
        self.node_macs, self.edge_macs = float(macs["node"]), float(macs["edge"])
        self.aux_macs = self.aux.macs_per_row() if self.aux is not None else None
        self.register_buffer("bit_options", torch.tensor(self.options, dtype=torch.int64))
        self.eval()

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor | None = None,
                variables: Tensor | None = None, budget: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        levels = self.allocate(x, pos, edge_index, node_type, budget)
        if self.sort_rows:
            perm = torch.sort(levels, stable=True).indices
            inverse = torch.zeros_like(perm).index_put((perm,), torch.arange(n, device=x.device))
            x, pos = x.index_select(0, perm), pos.index_select(0, perm)
            node_type = node_type.index_select(0, perm) if node_type is not None else None
            variables = variables.index_select(0, perm) if variables is not None else None
            edge_index = inverse.index_select(0, edge_index.reshape(-1)).reshape(2, -1)
            node_levels = levels.index_select(0, perm)
            edge_levels = edge_bits(node_levels, edge_index, self.edge_rule)
            edge_order = torch.sort(edge_levels, stable=True).indices
            edge_index = edge_index.index_select(1, edge_order)
            edge_levels = edge_levels.index_select(0, edge_order)
        else:
            node_levels, edge_levels = levels, edge_bits(levels, edge_index, self.edge_rule)
        self.buckets["node"], self.buckets["edge"] = node_levels, edge_levels
        pred = self.main.forward_tensors(x, pos, edge_index, None, variables, node_type)
        if self.sort_rows:
            pred = pred.index_select(0, inverse)
        return pred, self.bit_options.index_select(0, levels)

    def allocate(self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor | None,
                 budget: Tensor | None) -> Tensor:
        """Option index (0..K-1) of every node under ``budget`` (DESIGN items 4-6)."""
        n = x.shape[0]
        if len(self.options) == 1:
            return torch.zeros(n, dtype=torch.int64, device=x.device)
        if budget is None:
            raise AMQError("the deployed model needs a budget input")
        costs = node_item_costs(self.node_macs, self.edge_macs, edge_index, n, self.weight_bits)
        capacity = budget.to(torch.float64).reshape(()) * costs.sum()
        if self.aux is not None:
            scores = self.aux.forward_tensors(x, pos, edge_index, node_type)[0].double().exp()
            capacity = capacity - aux_bops(macs_from_rows(self.aux_macs, nodes=n, edges=edge_index.shape[1]))
        else:
            scores = costs
        return allocate_levels_traceable(scores, costs, self.options, capacity)

    def example_inputs(self, mesh: Any, budget: float) -> tuple[Tensor | None, ...]:
        """The positional inputs of ``forward`` for one ``MeshData`` (budget as a float32 scalar)."""
        return (*mesh_inputs(mesh, self.names), torch.tensor(float(budget), dtype=torch.float32))


def _freeze(main: nn.Module, buckets: dict[str, Tensor]) -> nn.Module:
    """A copy of ``main`` with every ``AdaptiveQuantLinear`` replaced by its integer form."""
    frozen = copy.deepcopy(main)
    for name, module in list(frozen.named_modules()):
        if isinstance(module, AdaptiveQuantLinear):
            parent_name, _, child = name.rpartition(".")
            parent = frozen.get_submodule(parent_name) if parent_name else frozen
            setattr(parent, child, BucketedIntLinear(module, buckets))
    return frozen
