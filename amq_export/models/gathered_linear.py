"""A Linear on edge rows assembled from gathered node rows: ``linear(cat([h[i] for i in indices] + [rest]))``.

Edge MLPs of mesh models start this way (MP-PDE's message on ``[h_i, h_j, ...]``, a MeshGraphNet
edge block on ``[h_i, h_j, e_ij]``). The models call this helper for that first Linear instead of
gathering and concatenating themselves, so that a layer that can do better from the node rows and the
indices may: it offers ``gathered(h, indices, rest)``. The deployed integer Linear does, and quantizes
the node rows before gathering them, so that the gathers and the concatenation of its E rows move
bytes instead of floats. Every other layer gets the plain computation, in the same column order, and so
does a layer with forward hooks (they see the concatenated rows, as they would without this helper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def gathered_linear(linear: nn.Module, h: Tensor, indices: Sequence[Tensor], rest: Tensor | None) -> Tensor:
    """``linear`` on the rows ``cat([h[i] for i in indices] + [rest], -1)``, one row per index entry."""
    gathered = getattr(linear, "gathered", None)
    hooked = bool(linear._forward_hooks or linear._forward_pre_hooks)  # hooks expect the concatenated rows
    if gathered is not None and not hooked:
        return gathered(h, indices, rest)
    return linear(gathered_rows(h, indices, rest))


def gathered_rows(h: Tensor, indices: Sequence[Tensor], rest: Tensor | None) -> Tensor:
    """The rows ``cat([h[i] for i in indices] + [rest], -1)``."""
    parts = [h.index_select(0, index) for index in indices] + ([rest] if rest is not None else [])
    return torch.cat(parts, dim=-1)
