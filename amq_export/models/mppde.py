"""MP-PDE (Brandstetter et al., ICLR 2022): a message-passing neural PDE solver on meshes.

Reproduces the reference ``MP_PDE_Solver`` (brandstetter-johannes/MP-Neural-PDE-Solvers,
``experiments/models_gnn.py``) and generalises it to 1-3 spatial dimensions, optional node
types and a steady (one-shot) decoder for tasks such as Darcy flow.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from amq_export.checkpoint import load_state_dict_checked
from amq_export.data.mesh_data import NUM_NODE_TYPES
from amq_export.errors import AMQError
from amq_export.models.gathered_linear import gathered_linear

MODES = ("unsteady", "steady")

# Reference decoder for hidden width 128: time window -> ((kernel, stride) of Conv1d(1->8), of Conv1d(8->1)).
DECODER_CONVS = {20: ((15, 4), (10, 1)), 25: ((16, 3), (14, 1)), 50: ((12, 2), (10, 1))}

INSTANCE_NORM_EPS = 1e-5


def _cat(parts: list[Tensor | None]) -> Tensor:
    """Concatenate the given feature blocks along the channel axis, leaving out absent (None) ones."""
    return torch.cat([p for p in parts if p is not None], dim=-1)


def _mlp(in_features: int, hidden: int, out_features: int, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features)]
    if last_activation:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def instance_norm(h: Tensor, batch: Tensor) -> Tensor:
    """PyG ``InstanceNorm`` (affine=False, instance statistics, biased variance) per graph and channel.

    Statistics are scattered into N slots (graph ids are < N whenever no graph of the batch
    is empty), so no output shape depends on tensor values and the graph count need not be known.
    The square root is taken in float64 and rounded to float32: the IEEE float32 root, which ONNX
    Runtime computes too and PyTorch's float32 ``sqrt`` misses by an ulp on many values (see
    ``passes/onnx/narrow_exact_sqrt.py``, which gives the exported graph its float32 ``Sqrt`` back).
    """
    n = h.size(0)
    mean = scatter(h, batch, dim=0, dim_size=n, reduce="mean")
    centered = h - mean.index_select(0, batch)
    var = scatter(centered * centered, batch, dim=0, dim_size=n, reduce="mean")
    std = (var + INSTANCE_NORM_EPS).double().sqrt().to(h.dtype)
    return centered / std.index_select(0, batch)


class MPPDELayer(MessagePassing):
    """One processor layer: edge message MLP, mean aggregation at the target, node update MLP, residual, norm.

    ``message_mlp`` runs on E rows (edges); ``update_mlp`` runs on N rows (nodes).
    """

    def __init__(self, hidden: int, in_features: int, spatial_dim: int, n_variables: int) -> None:
        super().__init__(aggr="mean", node_dim=0)
        self.message_mlp = _mlp(2 * hidden + in_features + spatial_dim + n_variables, hidden, hidden, True)
        self.update_mlp = _mlp(2 * hidden + n_variables, hidden, hidden, True)

    def forward(
        self, h: Tensor, u: Tensor, pos: Tensor, variables: Tensor | None, edge_index: Tensor, batch: Tensor
    ) -> Tensor:
        h = self.propagate(edge_index, h=h, u=u, pos=pos, variables=variables)
        return instance_norm(h, batch)

    def message(
        self, h: Tensor, edge_index_i: Tensor, edge_index_j: Tensor, u_i: Tensor, u_j: Tensor, pos_i: Tensor,
        pos_j: Tensor, variables_i: Tensor | None,
    ) -> Tensor:
        """``message_mlp`` on [h_i, h_j, u_i - u_j, pos_i - pos_j, variables_i]; its first Linear takes the
        node rows and indices (``gathered_linear``), the rest of the row as it is."""
        rest = _cat([u_i - u_j, pos_i - pos_j, variables_i])
        first = gathered_linear(self.message_mlp[0], h, (edge_index_i, edge_index_j), rest)
        return self.message_mlp[1:](first)

    def update(self, aggr_out: Tensor, h: Tensor, variables: Tensor | None) -> Tensor:
        return h + self.update_mlp(_cat([h, aggr_out, variables]))


class MPPDE(nn.Module):
    """MP-PDE solver over a PyG ``Data``/``Batch`` (``MeshData``).

    Fields read by ``forward(data)`` (same in both modes):

    - ``x`` [N, in_features]: ``unsteady``: u over the input time window, oldest first;
      ``steady``: the normalised node input features (e.g. the Darcy coefficient).
    - ``pos`` [N, spatial_dim]: spatial coordinates only; the model divides them by ``pos_scale``.
    - ``edge_index`` [2, E] int64: row 0 source j, row 1 target i; messages j -> i are mean-aggregated.
    - ``batch`` [N] int64 graph id per node, optional (absent: one graph). Normalisation is per graph.
    - ``variables`` [N, n_variables] (only if ``n_variables > 0``): per-node PDE variables in physical
      units; the model divides column k by ``variable_scales[k]``. For the reference CE tasks the
      columns are [t, alpha, beta, gamma] with time first (the reference treats time as a variable).
    - ``node_type`` [N] int64 (only if ``num_node_types > 0``): one-hot encoded into the encoder input.

    Computation: encoder MLP on [x, pos, variables, one_hot(node_type)] -> ``layers`` x ``MPPDELayer``
    (message on [h_i, h_j, x_i - x_j, pos_i - pos_j, variables_i], update on [h, mean message,
    variables], residual, per-graph InstanceNorm) -> decoder. ``unsteady``: Conv1d decoder over the
    hidden vector with temporal bundling, ``out[:, k] = x[:, -1] + (k+1) * dt * d[:, k]``, so
    ``out_features == in_features`` (the time window: 20, 25 or 50, with ``hidden == 128``).
    ``steady``: MLP decoder (Linear, SiLU, Linear) to ``out_features``. Output: [N, out_features].
    """

    arch = "mppde"

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int | None = None,
        spatial_dim: int = 2,
        n_variables: int = 0,
        hidden: int = 128,
        layers: int = 6,
        mode: str = "steady",
        dt: float = 1.0,
        pos_scale: float = 1.0,
        variable_scales: list[float] | None = None,
        num_node_types: int | None = None,
    ) -> None:
        super().__init__()
        out_features = in_features if out_features is None else out_features
        if num_node_types is None:
            num_node_types = NUM_NODE_TYPES if mode == "steady" else 0
        variable_scales = [1.0] * n_variables if variable_scales is None else [float(s) for s in variable_scales]
        self._check_config(in_features, out_features, spatial_dim, n_variables, hidden, layers, mode,
                           variable_scales, num_node_types)
        self.config: dict[str, Any] = {
            "in_features": in_features, "out_features": out_features, "spatial_dim": spatial_dim,
            "n_variables": n_variables, "hidden": hidden, "layers": layers, "mode": mode, "dt": float(dt),
            "pos_scale": float(pos_scale), "variable_scales": variable_scales, "num_node_types": num_node_types,
        }
        self.mode = mode
        self.n_variables = n_variables
        self.num_node_types = num_node_types
        self.pos_scale = float(pos_scale)
        self.register_buffer("variable_scales", torch.tensor(variable_scales), persistent=False)

        encoder_in = in_features + spatial_dim + n_variables + num_node_types
        self.encoder = _mlp(encoder_in, hidden, hidden, True)
        self.layers = nn.ModuleList(
            MPPDELayer(hidden, in_features, spatial_dim, n_variables) for _ in range(layers)
        )
        if mode == "unsteady":
            (k1, s1), (k2, s2) = DECODER_CONVS[in_features]
            self.decoder = nn.Sequential(nn.Conv1d(1, 8, k1, stride=s1), nn.SiLU(), nn.Conv1d(8, 1, k2, stride=s2))
            # cumsum(ones * dt) as the reference forms it, so rounding matches too.
            self.register_buffer("dt_steps", torch.cumsum(torch.full((in_features,), float(dt)), 0),
                                 persistent=False)
        else:
            self.decoder = _mlp(hidden, hidden, out_features, False)

    @staticmethod
    def _check_config(
        in_features: int, out_features: int, spatial_dim: int, n_variables: int, hidden: int, layers: int,
        mode: str, variable_scales: list[float], num_node_types: int,
    ) -> None:
        if mode not in MODES:
            raise AMQError(f"MPPDE mode {mode!r} is unknown; choose one of {list(MODES)}")
        if spatial_dim not in (1, 2, 3):
            raise AMQError(f"MPPDE spatial_dim must be 1, 2 or 3, got {spatial_dim}")
        if min(in_features, out_features, hidden, layers) < 1 or min(n_variables, num_node_types) < 0:
            raise AMQError(
                "MPPDE needs in_features, out_features, hidden, layers >= 1 and n_variables, num_node_types >= 0"
            )
        if len(variable_scales) != n_variables:
            raise AMQError(
                f"MPPDE variable_scales has {len(variable_scales)} entries but n_variables is {n_variables}; "
                "give one scale per variable"
            )
        if mode == "unsteady":
            if out_features != in_features:
                raise AMQError(
                    f"unsteady MPPDE predicts as many steps as it reads (temporal bundling): "
                    f"out_features {out_features} must equal in_features {in_features}"
                )
            if in_features not in DECODER_CONVS:
                raise AMQError(
                    f"unsteady MPPDE supports time windows {sorted(DECODER_CONVS)}, got in_features {in_features}"
                )
            (k1, s1), (k2, s2) = DECODER_CONVS[in_features]
            if ((hidden - k1) // s1 + 1 - k2) // s2 + 1 != in_features:
                raise AMQError(
                    f"the unsteady MPPDE Conv1d decoder for time window {in_features} needs hidden 128, "
                    f"got hidden {hidden}; use mode='steady' for other widths"
                )

    def forward(self, data: Data) -> Tensor:
        """Prediction [N, out_features] for a ``MeshData``/``Batch`` (fields in the class docstring)."""
        return self.forward_tensors(
            data.x, data.pos, data.edge_index, getattr(data, "batch", None),
            data.variables if self.n_variables else None,
            data.node_type if self.num_node_types else None,
        )

    def forward_tensors(
        self, x: Tensor, pos: Tensor, edge_index: Tensor, batch: Tensor | None = None,
        variables: Tensor | None = None, node_type: Tensor | None = None,
    ) -> Tensor:
        """``forward`` on plain tensors (for ``torch.export``): the same fields as the ``Data`` ones."""
        if batch is None:
            batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        pos = pos / self.pos_scale
        if self.n_variables:
            variables = variables / self.variable_scales
        one_hot = None
        if self.num_node_types:
            classes = torch.arange(self.num_node_types, device=x.device)
            one_hot = (node_type.unsqueeze(-1) == classes).to(x.dtype)

        h = self.encoder(_cat([x, pos, variables, one_hot]))
        for layer in self.layers:
            h = layer(h, x, pos, variables, edge_index, batch)

        if self.mode == "steady":
            return self.decoder(h)
        d = self.decoder(h.unsqueeze(1)).squeeze(1)
        return x[:, -1:] + self.dt_steps * d


# reference state_dict name -> ours, for the per-layer and top-level modules
_REFERENCE_LAYER_KEYS = {
    "message_net_1.0": "message_mlp.0", "message_net_2.0": "message_mlp.2",
    "update_net_1.0": "update_mlp.0", "update_net_2.0": "update_mlp.2",
}
_REFERENCE_TOP_KEYS = {"embedding_mlp": "encoder", "output_mlp": "decoder"}


def _rename_reference_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "gnn_layers" and len(parts) == 5:
        sub = _REFERENCE_LAYER_KEYS.get(".".join(parts[2:4]))
        if sub is not None:
            return f"layers.{parts[1]}.{sub}.{parts[4]}"
    if parts[0] in _REFERENCE_TOP_KEYS:
        return ".".join([_REFERENCE_TOP_KEYS[parts[0]], *parts[1:]])
    return key


def _reference_model_config(config: dict[str, Any]) -> dict[str, Any]:
    order = list(config.get("eq_variable_order", sorted(config.get("eq_variables", {}))))
    eq_variables = config.get("eq_variables", {})
    if sorted(order) != sorted(eq_variables):
        raise AMQError(
            f"reference config eq_variable_order {order} does not name the eq_variables {sorted(eq_variables)}"
        )
    n_variables = int(config.get("n_variables", 1 + len(order)))
    if n_variables != 1 + len(order):
        raise AMQError(
            f"reference config n_variables {n_variables} != 1 (time) + {len(order)} eq_variables {order}"
        )
    tw = int(config["time_window"])
    return {
        "in_features": tw, "out_features": tw, "spatial_dim": 1, "n_variables": n_variables,
        "hidden": int(config["hidden_features"]), "layers": int(config["hidden_layer"]), "mode": "unsteady",
        "dt": float(config["dt"]), "pos_scale": float(config["L"]),
        "variable_scales": [float(config["tmax"])] + [float(eq_variables[k]) for k in order],
        "num_node_types": 0,
    }


def from_reference(state_dict: dict[str, Tensor], config: dict[str, Any]) -> MPPDE:
    """An ``MPPDE`` holding a reference ``MP_PDE_Solver`` state_dict (keys renamed, values cast to float32).

    ``config`` is a reference fixture's config (time_window, hidden_features, hidden_layer, eq_variables,
    eq_variable_order, n_variables, tmax, L, dt). The model reads ``variables`` = [t, eq variables in
    ``eq_variable_order``] in the reference's raw units (beta as the reference's GraphCreator stores it).
    """
    try:
        model = MPPDE(**_reference_model_config(config)).float()
    except KeyError as exc:
        raise AMQError(f"reference MP-PDE config lacks key {exc}; it needs time_window, hidden_features, "
                       "hidden_layer, tmax, L and dt") from None
    renamed = {_rename_reference_key(k): v for k, v in state_dict.items()}
    load_state_dict_checked(model, renamed, what="reference MP_PDE_Solver state_dict (names after renaming)")
    return model


def reference_comparisons(model: MPPDE, fixture: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor]]:
    """Run ``model`` on a reference fixture's inputs; returns ``{"output": (ours, reference)}``.

    Only the output is compared: the reference's per-layer intermediates sit behind InstanceNorms of
    nearly constant channels and carry float32 noise up to ~6e-6 (against float64), too close to the
    1e-5 acceptance bound to be a reliable check. The reference packs time into ``pos[:, 0]`` and
    space into ``pos[:, 1]``; here time becomes ``variables[:, 0]``, followed by the fixture's eq
    variables as the reference fed them (beta negated, as its GraphCreator stores it).
    """
    inputs = fixture["inputs"]
    order = list(fixture["config"].get("eq_variable_order", []))
    data = Data(
        x=inputs["x"], pos=inputs["pos"][:, 1:], edge_index=inputs["edge_index"], batch=inputs["batch"],
        variables=torch.cat([inputs["pos"][:, :1]] + [inputs[k].reshape(-1, 1) for k in order], dim=-1),
    )
    return {"output": (model(data), fixture["output"])}
