"""GraphViT (Janny et al., EAGLE, ICLR 2023): mesh GNN encoder, cluster tokens, transformer, GNN decoder.

Reproduces the reference ``GraphViT`` (eagle-dataset/EagleMeshTransformer, ``Models/graphViT.py``)
on a ``MeshData``/``Batch``: clusters come as a flat ``cluster_index`` instead of padded [C, K]
tensors, all graphs of a batch share one token sequence with a block-diagonal attention mask, and
the edge convention is ours (aggregation at the target ``edge_index[1]``; the reference aggregates
at its *sender* ``edges[..., 0]``, so its sender is our target). Generalised to 1-3 spatial
dimensions, any number of node types and a steady (direct output) mode for tasks such as Darcy flow.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from amq_export.checkpoint import load_state_dict_checked
from amq_export.data.mesh_data import NUM_NODE_TYPES, MeshData, cluster_slots, clusters_of
from amq_export.errors import AMQError
from amq_export.models.exact_float import cos_sin
from amq_export.models.gathered_linear import gathered_linear

MODES = ("unsteady", "steady")

# Reference node types that keep (are forced to) the true state: DISABLE, INPUT, WALL.
REFERENCE_HELD_NODE_TYPES = [2, 4, 6]


def _mlp(in_features: int, hidden: int, out_features: int, n_hidden: int, layer_norm: bool) -> nn.Sequential:
    """The reference ``MLP``: ``n_hidden`` Linear-ReLU pairs, a last Linear, optionally a LayerNorm."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    if layer_norm:
        layers.append(nn.LayerNorm(out_features))
    return nn.Sequential(*layers)


class GNBlock(nn.Module):
    """MeshGraphNet block: ``edge_mlp`` on [h_i, h_j, e_ij] (E rows), sum at target i, ``node_mlp`` (N rows).

    Returns the node output and the new edge latents; the caller adds residuals where wanted.
    """

    def __init__(self, node_size: int, edge_size: int, out_size: int, hidden: int, layer_norm: bool) -> None:
        super().__init__()
        self.edge_mlp = _mlp(2 * node_size + edge_size, hidden, edge_size, 2, layer_norm)
        self.node_mlp = _mlp(node_size + edge_size, hidden, out_size, 2, layer_norm)

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index[0], edge_index[1]
        e_new = self.edge_mlp[1:](gathered_linear(self.edge_mlp[0], h, (dst, src), e))
        agg = h.new_zeros(h.size(0), e_new.size(-1)).index_add(0, dst, e_new)
        return self.node_mlp(torch.cat([h, agg], dim=-1)), e_new


class AttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block over cluster tokens; queries/keys/values carry the cluster code."""

    def __init__(self, w_size: int, posenc_size: int, n_heads: int) -> None:
        super().__init__()
        embed_dim = w_size + posenc_size
        self.ln1 = nn.LayerNorm(w_size)
        self.attn = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)
        self.proj = nn.Linear(embed_dim, w_size)
        self.ln2 = nn.LayerNorm(w_size)
        self.mlp = _mlp(w_size, w_size, w_size, 1, False)

    def forward(self, w: Tensor, posenc: Tensor, mask: Tensor) -> Tensor:
        """``w`` [1, C, w_size], ``posenc`` [1, C, posenc_size], ``mask`` [C, C] bool (True = blocked)."""
        q = torch.cat([self.ln1(w), posenc], dim=-1)
        w = w + self.proj(self.attn(q, q, q, attn_mask=mask, need_weights=False)[0])
        return w + self.mlp(self.ln2(w))


class GraphViT(nn.Module):
    """GraphViT over a PyG ``Data``/``Batch`` (``MeshData``).

    Fields read by ``forward(data)``:

    - ``x`` [N, in_features]: ``unsteady``: the current state; ``steady``: node input features.
    - ``pos`` [N, spatial_dim]; ``node_type`` [N] int64 in ``0..num_node_types-1`` (one-hot encoded).
    - ``edge_index`` [2, E] int64, messages j -> i summed at the target i = row 1.
    - ``cluster_index`` [2, M] int64 (member node, cluster id), members in sequence order; every node
      should be in exactly one cluster (a node in none gets a zero token and a zero relative position code).
    - ``batch`` [N] int64, optional (absent: one graph). Tokens attend only to clusters of their own graph.
    - ``forcing`` [N, in_features], optional, ``unsteady`` only: values that nodes of a type in
      ``held_node_types`` take (the reference's boundary forcing); absent, those nodes keep ``x``.

    Computation: positional code (cos/sin of 2^k*pi*p, k = pos_start .. pos_start+pos_length-1) of
    ``pos`` and of (own cluster centre - ``pos``); node encoder on [x, one_hot(node_type)], edge encoder
    on [d, |d|] with d = pos_i - pos_j; ``nb_gn`` residual GN blocks (with LayerNorm); GRU over each
    cluster's member sequence, state at the last member -> ``pool_mlp``; ``n_attention`` pre-LN
    attention blocks over the cluster tokens, ``final_ln``; each node takes its cluster's token; one
    GN block without LayerNorm reusing the encoder's edge latents; ``final_mlp``. Output [N, out_features]:
    ``steady``: that ``delta``; ``unsteady``: ``x + delta`` with held node types forced.
    """

    arch = "graphvit"

    def __init__(
        self,
        *,
        in_features: int = 1,
        out_features: int | None = None,
        spatial_dim: int = 2,
        num_node_types: int = NUM_NODE_TYPES,
        hidden: int = 128,
        w_size: int = 128,
        n_attention: int = 2,
        nb_gn: int = 2,
        n_heads: int = 4,
        pos_start: int = -3,
        pos_length: int = 8,
        mode: str = "steady",
        held_node_types: list[int] | tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        out_features = in_features if out_features is None else out_features
        held = sorted({int(t) for t in held_node_types})
        self.config: dict[str, Any] = {
            "in_features": in_features,
            "out_features": out_features,
            "spatial_dim": spatial_dim,
            "num_node_types": num_node_types,
            "hidden": hidden,
            "w_size": w_size,
            "n_attention": n_attention,
            "nb_gn": nb_gn,
            "n_heads": n_heads,
            "pos_start": pos_start,
            "pos_length": pos_length,
            "mode": mode,
            "held_node_types": held,
        }
        self._check_config(**self.config)
        self.mode = mode
        self.w_size = w_size
        self.register_buffer(
            "freq",
            2.0 ** torch.arange(pos_start, pos_start + pos_length, dtype=torch.float32) * torch.pi,
            persistent=False,
        )
        self.register_buffer("held_types", torch.tensor(held, dtype=torch.long), persistent=False)
        self.register_buffer("type_ids", torch.arange(num_node_types), persistent=False)

        code = 2 * pos_length * spatial_dim  # width of one positional code of a point
        node_size = hidden + 2 * code  # [latent, code(pos), code(centre - pos)]
        self.node_encoder = _mlp(in_features + num_node_types, hidden, hidden, 1, False)
        self.edge_encoder = _mlp(spatial_dim + 1, hidden, hidden, 1, False)
        self.processor = nn.ModuleList(GNBlock(node_size, hidden, hidden, hidden, True) for _ in range(nb_gn))
        self.pool_gru = nn.GRU(node_size, w_size, batch_first=True)
        self.pool_mlp = _mlp(w_size, hidden, w_size, 1, False)
        self.transformer = nn.ModuleList(AttentionBlock(w_size, code, n_heads) for _ in range(n_attention))
        self.final_ln = nn.LayerNorm(w_size)
        self.decoder = GNBlock(node_size + w_size, hidden, hidden, hidden, False)
        self.final_mlp = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, out_features),
        )

    @staticmethod
    def _check_config(
        *,
        in_features: int,
        out_features: int,
        spatial_dim: int,
        num_node_types: int,
        hidden: int,
        w_size: int,
        n_attention: int,
        nb_gn: int,
        n_heads: int,
        pos_start: int,
        pos_length: int,
        mode: str,
        held_node_types: list[int],
    ) -> None:
        if mode not in MODES:
            raise AMQError(f"GraphViT mode {mode!r} is unknown; choose one of {list(MODES)}")
        if spatial_dim not in (1, 2, 3):
            raise AMQError(f"GraphViT spatial_dim must be 1, 2 or 3, got {spatial_dim}")
        if min(in_features, out_features, num_node_types, hidden, w_size, n_heads, pos_length) < 1:
            raise AMQError(
                "GraphViT needs in_features, out_features, num_node_types, hidden, w_size, n_heads, "
                "pos_length >= 1"
            )
        if min(n_attention, nb_gn) < 0:
            raise AMQError(f"GraphViT needs n_attention, nb_gn >= 0, got {n_attention}, {nb_gn}")
        embed_dim = w_size + 2 * pos_length * spatial_dim
        if embed_dim % n_heads:
            raise AMQError(
                f"GraphViT attention width w_size + 2*pos_length*spatial_dim = {embed_dim} is not divisible "
                f"by n_heads {n_heads}; change w_size or n_heads"
            )
        if mode == "unsteady" and out_features != in_features:
            raise AMQError(
                f"unsteady GraphViT adds its output to the state: out_features {out_features} must equal "
                f"in_features {in_features}"
            )
        bad = [t for t in held_node_types if not 0 <= t < num_node_types]
        if bad:
            raise AMQError(
                f"GraphViT held_node_types {bad} are outside 0..{num_node_types - 1} (num_node_types)"
            )

    def forward(self, data: Data) -> Tensor:
        """Prediction [N, out_features] for a ``MeshData``/``Batch`` (fields in the class docstring)."""
        delta = self.delta(data)
        if self.mode == "steady":
            return delta
        return self.integrate(data.x, delta, data.node_type, getattr(data, "forcing", None))

    def integrate(self, x: Tensor, delta: Tensor, node_type: Tensor, forcing: Tensor | None = None) -> Tensor:
        """Unsteady update ``x + delta``; nodes of a held type take ``forcing`` (default: keep ``x``)."""
        held = (node_type.unsqueeze(-1) == self.held_types).any(-1, keepdim=True)
        return torch.where(held, x if forcing is None else forcing, x + delta)

    def embed(self, p: Tensor) -> Tensor:
        """Positional code [..., D] -> [..., 2*pos_length*D]: per coordinate, cos at all frequencies, sin
        (``exact_float.cos_sin``: the code feeds every block's quantized Linears)."""
        return torch.cat(cos_sin(p.unsqueeze(-1) * self.freq), dim=-1).flatten(-2)

    def delta(self, data: Data) -> Tensor:
        """Network output [N, out_features] before the unsteady update (the reference's ``output_hat``)."""
        clusters = clusters_of(data)
        if clusters is None:
            raise AMQError(
                "GraphViT needs data.cluster_index [2, M] (member node, cluster id); build clusters first"
            )
        return self.delta_tensors(data.x, data.pos, data.edge_index, data.node_type, clusters,
                                  getattr(data, "batch", None))

    def forward_tensors(self, x: Tensor, pos: Tensor, edge_index: Tensor, batch: Tensor | None = None,
                        variables: Tensor | None = None, node_type: Tensor | None = None,
                        clusters: Tensor | None = None) -> Tensor:
        """``forward`` on plain tensors (for ``torch.export``), clusters padded [C, K] (``padded_clusters``);
        the argument order of ``MPPDE.forward_tensors``, which GraphViT extends by ``clusters``. Unsteady
        held node types keep ``x`` (no forcing input)."""
        if variables is not None or node_type is None or clusters is None:
            raise AMQError("GraphViT reads node_type and clusters, and no variables")
        delta = self.delta_tensors(x, pos, edge_index, node_type, clusters, batch)
        return delta if self.mode == "steady" else self.integrate(x, delta, node_type)

    def delta_tensors(self, x: Tensor, pos: Tensor, edge_index: Tensor, node_type: Tensor, clusters: Tensor,
                      batch: Tensor | None = None) -> Tensor:
        """``delta`` on plain tensors; ``clusters`` [C, K] member ids padded with -1, ``batch`` [N] graph ids."""
        n = x.size(0)
        num, k = clusters.shape
        slots, counts = cluster_slots(clusters, n)
        flat = slots.reshape(-1)

        def gather(rows: Tensor) -> Tensor:
            """Rows of every cluster slot, [C * K, F]: padding reads a zero row."""
            return torch.cat([rows, rows.new_zeros(1, rows.size(-1))]).index_select(0, flat)

        def per_slot(values: Tensor) -> Tensor:
            """Cluster rows [C, F] repeated for each of the K slots, [C * K, F] (not ``repeat_interleave``,
            whose ONNX translation mishandles a symbolic count)."""
            return values.unsqueeze(1).expand(num, k, values.size(-1)).reshape(num * k, values.size(-1))

        def scatter_to_nodes(values: Tensor) -> Tensor:
            """Sum of the slot rows ``values`` [C * K, F] at their member nodes, [N, F]."""
            return values.new_zeros(n + 1, values.size(-1)).index_add(0, flat, values)[:n]

        # Positional codes; a centre is the member mean (the reference divides by count + 1e-8 too).
        member_pos = gather(pos)
        centre = member_pos.view(num, k, pos.size(-1)).sum(1) / (counts.to(pos.dtype).unsqueeze(-1) + 1e-8)
        rel = self.embed(per_slot(centre) - member_pos)
        node_code = torch.cat([self.embed(pos), scatter_to_nodes(rel)], dim=-1)

        # Encoder.
        one_hot = (node_type.unsqueeze(-1) == self.type_ids).to(x.dtype)
        h = self.node_encoder(torch.cat([x, one_hot], dim=-1))
        d = pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0])
        # vector_norm, not sqrt(sum d^2): same value, but a zero-length edge gets a zero gradient, not NaN.
        e = self.edge_encoder(torch.cat([d, torch.linalg.vector_norm(d, dim=-1, keepdim=True)], dim=-1))
        for block in self.processor:
            dh, de = block(torch.cat([h, node_code], dim=-1), e, edge_index)
            h, e = h + dh, e + de
        features = torch.cat([h, node_code], dim=-1)

        # Cluster tokens, attention, broadcast back to the nodes.
        if num * k:
            graph = None if batch is None else torch.cat([batch, batch.new_zeros(1)]).index_select(0, slots[:, 0])
            tokens = self._pool(gather(features).view(num, k, features.size(-1)), counts)
            tokens = self._attend(tokens, self.embed(centre), counts, graph)
            node_token = scatter_to_nodes(per_slot(tokens))
        else:
            node_token = features.new_zeros(n, self.w_size)
        out, _ = self.decoder(torch.cat([h, node_token, node_code], dim=-1), e, edge_index)
        return self.final_mlp(out)

    def _pool(self, padded: Tensor, counts: Tensor) -> Tensor:
        """GRU over each cluster's member sequence ``padded`` [C, K, F] (zeros after the members); the
        state at the last member -> ``pool_mlp``. Like the reference, an empty cluster takes slot K-1."""
        states, _ = self.pool_gru(padded)
        last = torch.where(counts > 0, counts - 1, padded.size(1) - 1)
        return self.pool_mlp(states.gather(1, last.view(-1, 1, 1).expand(-1, 1, states.size(-1))).squeeze(1))

    def _attend(self, tokens: Tensor, cluster_code: Tensor, counts: Tensor, graph: Tensor | None) -> Tensor:
        """Transformer over all clusters as one sequence; a token sees the non-empty clusters of its graph
        (``graph`` [C]: each cluster's graph id; ``None``: one graph)."""
        eye = torch.eye(counts.numel(), dtype=torch.bool, device=counts.device)
        mask = (counts == 0).unsqueeze(0) & ~eye
        if graph is not None:
            mask = mask | (graph.unsqueeze(1) != graph.unsqueeze(0))
        w, code = tokens.unsqueeze(0), cluster_code.unsqueeze(0)
        for block in self.transformer:
            w = block(w, code, mask)
        return self.final_ln(w).squeeze(0)


# Our state_dict names -> the reference's (regex on our key, replacement); the first match applies.
_TO_REFERENCE = [
    (r"^node_encoder\.", "encoder.encoder_node.f."),
    (r"^edge_encoder\.", "encoder.encoder_edge.f."),
    (r"^processor\.(\d+)\.edge_mlp\.", r"encoder.encoder_gn.\1.f_edge.f."),
    (r"^processor\.(\d+)\.node_mlp\.", r"encoder.encoder_gn.\1.f_node.f."),
    (r"^pool_gru\.", "graph_pooling.rnn_pooling."),
    (r"^pool_mlp\.", "graph_pooling.linear_rnn.f."),
    (r"^transformer\.(\d+)\.attn\.", r"attention.\1.attention."),
    (r"^transformer\.(\d+)\.proj\.", r"attention.\1.linear."),
    (r"^transformer\.(\d+)\.mlp\.", r"attention.\1.mlp.f."),
    (r"^transformer\.(\d+)\.(ln[12])\.", r"attention.\1.\2."),
    (r"^final_ln\.", "ln."),
    (r"^decoder\.edge_mlp\.", "graph_retrieve.gnn.f_edge.f."),
    (r"^decoder\.node_mlp\.", "graph_retrieve.gnn.f_node.f."),
    (r"^final_mlp\.", "graph_retrieve.final_mlp."),
]


def _reference_name(key: str) -> str:
    for pattern, replacement in _TO_REFERENCE:
        renamed, hits = re.subn(pattern, replacement, key)
        if hits:
            return renamed
    return key


def _reference_model_config(config: dict[str, Any]) -> dict[str, Any]:
    needed = [
        "state_size",
        "w_size",
        "n_attention",
        "nb_gn",
        "n_heads",
        "pos_start",
        "pos_length",
        "node_type_classes",
        "encoder_latent",
    ]
    missing = [k for k in needed if k not in config]
    if missing:
        raise AMQError(
            f"reference GraphViT config lacks keys {missing}; a fixture config records all of {needed}"
        )
    return {
        "in_features": int(config["state_size"]),
        "out_features": int(config["state_size"]),
        "spatial_dim": int(config.get("spatial_dim", 2)),
        "num_node_types": int(config["node_type_classes"]),
        "hidden": int(config["encoder_latent"]),
        "w_size": int(config["w_size"]),
        "n_attention": int(config["n_attention"]),
        "nb_gn": int(config["nb_gn"]),
        "n_heads": int(config["n_heads"]),
        "pos_start": int(config["pos_start"]),
        "pos_length": int(config["pos_length"]),
        "mode": "unsteady",
        "held_node_types": list(REFERENCE_HELD_NODE_TYPES),
    }


def from_reference(state_dict: dict[str, Tensor], config: dict[str, Any]) -> GraphViT:
    """A ``GraphViT`` holding a reference ``GraphViT`` state_dict (keys renamed, values cast to float32).

    ``config`` is a reference fixture's config (state_size, w_size, n_attention, nb_gn, n_heads, pos_start,
    pos_length, node_type_classes, encoder_latent). The model is ``unsteady`` and holds the reference's
    forced node types (DISABLE 2, INPUT 4, WALL 6).
    """
    model = GraphViT(**_reference_model_config(config))
    to_ours = {_reference_name(k): k for k in model.state_dict()}
    renamed = {to_ours.get(k, k): v.to(torch.float32) for k, v in state_dict.items()}
    load_state_dict_checked(model, renamed, what="reference GraphViT state_dict (names after renaming)")
    return model


def _one_hot_types(node_type: Tensor) -> Tensor:
    """Class ids of one-hot rows; raises unless every row is exactly one-hot."""
    if not (((node_type == 0) | (node_type == 1)).all() and (node_type.sum(-1) == 1).all()):
        raise AMQError("reference fixture node_type rows of real nodes are not one-hot")
    return node_type.argmax(-1)


def _step_graph(inputs: dict[str, Tensor], b: int, t: int, real: Tensor, state: Tensor) -> MeshData:
    """Sample ``b`` at time step ``t`` of a padded reference batch as a ``MeshData`` of its real nodes.

    Reference edges (sender s, receiver r) aggregate at s, so our edge is r -> s. Empty clusters are
    dropped: the reference masks them as attention keys and they have no member to broadcast to.
    """
    new_id = torch.cumsum(real.long(), 0) - 1
    edges = inputs["edges"][b, t]
    keep = real[edges].all(-1)
    if (real[edges].any(-1) & ~keep).any():
        raise AMQError(f"reference fixture sample {b} step {t}: an edge joins a real node to a padded one")
    edges = new_id[edges[keep]]
    clusters, mask = inputs["clusters"][b, t], inputs["clusters_mask"][b, t].bool()
    if (mask[:, 1:] & ~mask[:, :-1]).any() or real[clusters[~mask]].any():
        raise AMQError(
            f"reference fixture sample {b} step {t}: cluster slots are not real members then padding"
        )
    counts = mask.sum(-1)
    members = new_id[clusters[mask]]
    cluster_id = torch.repeat_interleave(torch.arange(int((counts > 0).sum())), counts[counts > 0])
    if not torch.equal(torch.bincount(members, minlength=int(real.sum())), torch.ones_like(new_id[real])):
        raise AMQError(f"reference fixture sample {b} step {t}: a real node is not in exactly one cluster")
    return MeshData(
        x=state,
        pos=inputs["mesh_pos"][b, t][real],
        edge_index=edges.T.flip(0),
        node_type=_one_hot_types(inputs["node_type"][b, t][real]),
        cluster_index=torch.stack([members, cluster_id]),
    )


def reference_comparisons(model: GraphViT, fixture: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor]]:
    """Roll ``model`` out on a reference fixture as the reference does; pairs (ours, reference) on real nodes.

    Step t = 1..T-1 reads positions, edges, node types and clusters at t-1 and the previous predicted
    state, and forces held node types (by their type at t) to ``state[:, t]``. All samples of a step
    run as one ``Batch``. Compared: ``output_hat``, ``target`` and ``state_hat[:, 1:]`` where
    ``aux.node_mask[:, 1:] == 1``.
    """
    inputs, ref = fixture["inputs"], fixture["output"]
    node_mask = fixture["aux"]["node_mask"].bool()
    state = inputs["state"]
    num_samples, num_steps = state.shape[:2]
    if not (node_mask == node_mask[:, :1]).all():
        raise AMQError("reference fixture real nodes change over time; the importer expects a fixed node set")
    real = node_mask[:, 0]
    current = [state[b, 0][real[b]] for b in range(num_samples)]
    ours = {name: torch.zeros_like(ref[name]) for name in ("state_hat", "output_hat", "target")}
    for t in range(1, num_steps):
        batch = Batch.from_data_list(
            [_step_graph(inputs, b, t - 1, real[b], current[b]) for b in range(num_samples)]
        )
        delta = model.delta(batch)
        node_type_t = torch.cat(
            [_one_hot_types(inputs["node_type"][b, t][real[b]]) for b in range(num_samples)]
        )
        forcing = torch.cat([state[b, t][real[b]] for b in range(num_samples)])
        nxt = model.integrate(batch.x, delta, node_type_t, forcing)
        for b in range(num_samples):
            rows = batch.batch == b
            ours["output_hat"][b, t - 1, real[b]] = delta[rows]
            ours["target"][b, t - 1, real[b]] = state[b, t][real[b]] - current[b]
            current[b] = nxt[rows]
            ours["state_hat"][b, t, real[b]] = current[b]
    compare = node_mask[:, 1:]
    return {
        "output_hat": (ours["output_hat"][compare], ref["output_hat"][compare]),
        "target": (ours["target"][compare], ref["target"][compare]),
        "state_hat[:, 1:]": (ours["state_hat"][:, 1:][compare], ref["state_hat"][:, 1:][compare]),
    }
