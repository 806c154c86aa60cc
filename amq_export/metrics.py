"""Error metrics on batches of meshes."""

from __future__ import annotations

from typing import Any

import torch


def per_graph_relative_l2(
    pred: torch.Tensor, target: torch.Tensor, batch: torch.Tensor | None, num_graphs: int = 1
) -> torch.Tensor:
    """``||pred_g - target_g|| / ||target_g||`` for every graph g of a batch (the FNO convention).

    ``batch`` maps each node row to its graph (``None``: one graph). A graph whose target is
    all zeros gets its absolute error norm instead of a division by zero.
    """
    if batch is None:
        batch = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
    diff = (pred - target).pow(2).reshape(pred.shape[0], -1).sum(1)
    norm = target.pow(2).reshape(target.shape[0], -1).sum(1)
    diff_g = torch.zeros(num_graphs, dtype=pred.dtype, device=pred.device).index_add_(0, batch, diff)
    norm_g = torch.zeros(num_graphs, dtype=pred.dtype, device=pred.device).index_add_(0, batch, norm)
    return diff_g.sqrt() / torch.where(norm_g > 0, norm_g, torch.ones_like(norm_g)).sqrt()


def batch_relative_l2(pred: torch.Tensor, batch: Any, normalizer: Any | None = None) -> torch.Tensor:
    """Per-graph relative L2 of a prediction for a (batched) mesh, in physical units when a
    ``Normalizer`` is given (normalised units otherwise)."""
    pred, target = _physical(pred, batch.y, normalizer)
    return per_graph_relative_l2(pred, target, getattr(batch, "batch", None), batch.num_graphs)


def mesh_relative_l2(pred: torch.Tensor, mesh: Any, normalizer: Any | None = None) -> float:
    """Relative L2 of a prediction for one (unbatched) mesh, in physical units when a ``Normalizer`` is given."""
    pred, target = _physical(pred, mesh.y, normalizer)
    return float(per_graph_relative_l2(pred, target, None)[0])


def _physical(pred: torch.Tensor, target: torch.Tensor, normalizer: Any | None) -> tuple[torch.Tensor, torch.Tensor]:
    if normalizer is None:
        return pred, target
    return normalizer.invert(pred, "y"), normalizer.invert(target, "y")
