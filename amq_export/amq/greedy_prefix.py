"""The one step of the in-graph allocation that needs an order: which upgrade steps the greedy takes.

``torch.ops.amq.greedy_prefix(gain, cost, spare)`` marks the steps of the longest prefix of the stable
descending sort of ``gain`` (ties: lower index first) whose cumulative ``cost`` is at most ``spare``. In
PyTorch it is that sort. It is an op of its own so that the ONNX lowering can find the same prefix without
sorting every step (``amq_export.exporter.onnx_lowering.greedy_prefix``: a histogram of the costs over
monotone bins of the gains, then a ``TopK`` of the one bin the budget runs out in); ONNX Runtime's ``TopK``
over all 100k steps of a 50k-node mesh was the largest single kernel of the allocation (7 ms, serial).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("amq::greedy_prefix", mutates_args=())
def greedy_prefix(gain: Tensor, cost: Tensor, spare: Tensor) -> Tensor:
    """``gain`` [M] float (>= 0), ``cost`` [M] float (> 0), ``spare`` float scalar -> int64 [M]: 1 for the
    steps the greedy takes, 0 for the others."""
    order = torch.sort(gain, descending=True, stable=True).indices
    taken = (cost.index_select(0, order).cumsum(0) <= spare).to(torch.int64)
    return torch.zeros_like(taken).index_put((order,), taken)


@greedy_prefix.register_fake
def _(gain: Tensor, cost: Tensor, spare: Tensor) -> Tensor:
    return gain.new_empty(gain.shape, dtype=torch.int64)
