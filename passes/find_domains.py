"""Label every weight-holding module of a float model with its domain: node, edge, cluster or other.

The model runs once on a synthetic probe mesh whose node, edge and cluster counts all differ;
forward hooks record how many input rows each module sees, and the count names the domain.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch_geometric.nn
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from amq_export.amq.quant_linear import AdaptiveQuantLinear
from amq_export.data.mesh_data import MeshData
from passes.context import OTHER, LayerInfo, PassContext

PROBE_NODES, PROBE_CLUSTERS = 24, 4  # clusters of 6 consecutive nodes; 4 edges per node
LINEAR_TYPES = (nn.Linear, torch_geometric.nn.Linear)
_RNN_GATES = {"GRU": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}


def probe_mesh(config: dict[str, Any], seed: int = 0) -> MeshData:
    """A mesh of 24 nodes, 96 directed edges and 4 equal clusters with the fields ``config`` asks for.

    The clusters are equal, so a GRU over the padded [clusters, max size] member sequence sees one
    row per node and is counted in the node domain.
    """
    n, size = PROBE_NODES, PROBE_NODES // PROBE_CLUSTERS
    g = torch.Generator().manual_seed(seed)
    nodes = torch.arange(n)
    src = torch.cat([nodes, nodes])
    dst = torch.cat([(nodes + 1) % n, (nodes + 5) % n])
    num_types = int(config.get("num_node_types") or 0)
    data = MeshData(
        x=torch.randn(n, int(config.get("in_features", 1)), generator=g),
        pos=torch.rand(n, int(config.get("spatial_dim", 2)), generator=g),
        edge_index=torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]),
        node_type=torch.randint(0, max(num_types, 1), (n,), generator=g),
        cluster_index=torch.stack([nodes, nodes // size]),
    )
    if config.get("n_variables"):
        data.variables = torch.randn(n, int(config["n_variables"]), generator=g)
    return data


def _first_tensor(args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)


def _rows(module: nn.Module, x: Tensor) -> int:
    """Input rows of one call: a conv's batch size, else the product of all but the feature dims."""
    if isinstance(module, _ConvNd):
        return x.size(0) if x.dim() == len(module.kernel_size) + 2 else 1
    if isinstance(module, nn.LayerNorm):
        return x.numel() // max(math.prod(module.normalized_shape), 1)
    return x[..., 0].numel() if x.dim() else 1


def _shape_and_macs(module: nn.Module, out_per_row: int) -> tuple[str, int, int, int]:
    """(kind, in, out, MACs per row) of a weight-holding module; ``out_per_row`` from the probe (convs)."""
    if isinstance(module, LINEAR_TYPES):
        out_features, in_features = module.weight.shape
        return "linear", in_features, out_features, in_features * out_features
    kind = type(module).__name__.lower()
    if isinstance(module, nn.MultiheadAttention):  # the input projection; out_proj is a Linear of its own
        e = module.embed_dim
        width = e + module.kdim + module.vdim
        return kind, e, width, e * width
    if isinstance(module, nn.RNNBase):
        h, dirs = module.hidden_size, 2 if module.bidirectional else 1
        macs = sum(_RNN_GATES[module.mode] * dirs * ((module.input_size if layer == 0 else h * dirs) * h + h * h)
                   for layer in range(module.num_layers))
        return kind, module.input_size, h, macs
    if isinstance(module, _ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return kind, module.in_channels, module.out_channels, out_per_row * per_output
    # Elementwise (norms and the like): one multiply per element of the largest own parameter.
    width = max(p.numel() for p in module.parameters(recurse=False))
    return kind, width, width, width


class FindDomains:
    """Build ``ctx.layers``: every Linear and every other module holding weights, with its domain.

    A Linear called as a module on the rows of one domain is marked ``quantized``. Layers never called
    as modules (``nn.MultiheadAttention.out_proj``, used functionally) take the rows and domain of their
    nearest called ancestor and stay float, as do all non-Linear layers. ``ctx.domain_overrides``
    relabel by module-name pattern (they cannot make an uncalled Linear quantized).
    """

    name = "find_domains"
    requires: frozenset[str] = frozenset()
    guarantees = frozenset({"domains"})

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]:
        if any(isinstance(m, AdaptiveQuantLinear) for m in model.modules()):
            raise ValueError("find_domains runs on the float model, but this one already holds quantized layers")
        data = probe_mesh(getattr(model, "config", {}))
        domain_of_rows = {PROBE_NODES: "node", data.edge_index.size(1): "edge", PROBE_CLUSTERS: "cluster"}
        rows, out_per_row = self._probe(model, data)

        changes, hits = [], dict.fromkeys(ctx.domain_overrides, 0)
        ctx.layers = []
        for name, module in model.named_modules():
            if isinstance(module, AdaptiveQuantLinear) or not any(True for _ in module.parameters(recurse=False)):
                continue
            called = name in rows
            counts = rows.get(name) or self._ancestor_rows(name, rows)
            domains = {domain_of_rows.get(c, OTHER) for c in counts}
            domain = domains.pop() if len(domains) == 1 else OTHER
            pattern = next((p for p in ctx.domain_overrides if fnmatchcase(name, p)), None)
            if pattern is not None:
                hits[pattern] += 1
                domain = ctx.domain_overrides[pattern]
            kind, in_features, out_features, macs = _shape_and_macs(module, out_per_row.get(name, 0))
            quantized = kind == "linear" and called and domain != OTHER
            ctx.layers.append(LayerInfo(name, kind, domain, in_features, out_features, macs, quantized))
            how = "quantize" if quantized else "float"
            note = f" (override {pattern!r})" if pattern else ("" if called else " (not called as a module)")
            if len(counts) > 1 and pattern is None:
                note += f" (rows {sorted(counts)} of several domains)"
            changes.append(f"{name}: {kind} {in_features}->{out_features}, {domain}, {macs} MACs/row, {how}{note}")
        changes += [f"override pattern {p!r} matched no layer" for p, n in hits.items() if not n]
        return changes

    @staticmethod
    def _probe(model: nn.Module, data: MeshData) -> tuple[dict[str, set[int]], dict[str, int]]:
        """Run ``model`` once; per module name the row counts it saw and its output size per row."""
        rows: dict[str, set[int]] = {}
        out_per_row: dict[str, int] = {}

        def hook(name: str) -> Any:
            def record(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
                x = _first_tensor(args, kwargs)
                if x is None:
                    return
                r = _rows(module, x)
                rows.setdefault(name, set()).add(r)
                if isinstance(output, Tensor) and r:
                    out_per_row[name] = output.numel() // r
            return record

        handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in model.named_modules()]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(data)
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
        return rows, out_per_row

    @staticmethod
    def _ancestor_rows(name: str, rows: dict[str, set[int]]) -> set[int]:
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            found = rows.get(".".join(parts[:end]))
            if found:
                return found
        return set()
