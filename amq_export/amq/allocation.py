"""Per-item activation bit-widths under a compute budget (DESIGN items 1, 4 and 6).

Items: every node carries two, the rows of its own features and the rows of the edges it owns (its
incoming edges under the ``target`` edge rule), each with its own bit-width, and, for GraphViT,
every cluster is one. ``allocate`` minimises the first-order loss increase ``sum_i s_i 4^-b_i``
subject to ``sum_i c_i b_i <= capacity`` with the greedy of DESIGN item 6.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

import amq_export.amq.greedy_prefix  # noqa: F401  (registers torch.ops.amq.greedy_prefix)
from amq_export.errors import AMQError

MIN_BITS, MAX_BITS = 2, 8
EDGE_RULES = ("target", "source", "max")
EdgeRule = Literal["target", "source", "max"]

# Relative slack on every capacity comparison: float rounding in sums of costs must not drop an
# upgrade that fits exactly (e.g. uniform bits at a budget that is one of the options).
_RTOL = 1e-9


def validate_bits(bits: Iterable[int]) -> tuple[int, ...]:
    """The bit options as sorted unique ints in 2..8; AMQError if any value is not such an int."""
    hint = f"pass --bits as integers in {MIN_BITS}..{MAX_BITS}, e.g. --bits 3,4,5,6"
    try:
        values = list(bits)
    except TypeError:
        raise AMQError(f"bit options must be a list of integers, got {bits!r}: {hint}") from None
    if not values:
        raise AMQError(f"no bit options given: {hint}")
    good, bad = [], []
    for value in values:
        try:
            as_int = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            as_int = None
        if as_int is not None and MIN_BITS <= as_int <= MAX_BITS:
            good.append(as_int)
        else:
            bad.append(value)
    if bad:
        raise AMQError(f"bit options {bad} are not integers in {MIN_BITS}..{MAX_BITS}: {hint}")
    return tuple(sorted(set(good)))


def default_bits(budget: float) -> tuple[int, ...]:
    """The window ``floor(B) - 1 .. ceil(B) + 2`` clipped to 2..8 (DESIGN item 1)."""
    if not (math.isfinite(budget) and MIN_BITS <= budget <= MAX_BITS):
        raise AMQError(f"budget {budget} is not an effective bit-width in {MIN_BITS}..{MAX_BITS}: "
                       f"pass --budget between {MIN_BITS} and {MAX_BITS}, e.g. --budget 4")
    low = max(MIN_BITS, math.floor(budget) - 1)
    high = min(MAX_BITS, math.ceil(budget) + 2)
    return tuple(range(low, high + 1))


def _items(scores: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
    """Checked float64 copies of per-item scores and costs."""
    if scores.dim() != 1 or costs.dim() != 1 or scores.shape != costs.shape:
        raise AMQError(f"scores and costs must be 1-D with one entry per item, got shapes "
                       f"{tuple(scores.shape)} and {tuple(costs.shape)}: score and cost the same items")
    s = scores.detach().to(torch.float64)
    c = costs.detach().to(device=s.device, dtype=torch.float64)
    for name, values, positive in (("scores", s, False), ("costs", c, True)):
        if values.numel() == 0:
            continue
        low, high = values.aminmax()  # NaN propagates and fails both tests
        if not (bool(low > 0) if positive else bool(low >= 0)) or not bool(high < math.inf):
            bad = ~torch.isfinite(values) | (values <= 0 if positive else values < 0)
            first = int(bad.nonzero()[0, 0])
            raise AMQError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, but {int(bad.sum())} are "
                           f"not (first: index {first}, value {values[first].item()}): check what computes the "
                           f"{name}")
    return s, c


def _as_float(bits: int) -> float:
    """The float64 whose IEEE bit pattern is ``bits`` (monotone in value for patterns >= 0)."""
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _as_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _steps(options: tuple[int, ...], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``(gap, slope)`` of the K-1 upgrade steps: ``gap_k = b_{k+1} - b_k`` bits, and the loss decrease per
    bit ``slope_k = (4^-b_k - 4^-b_{k+1}) / gap_k`` (strictly decreasing in k), so that step k of item i has
    gain per cost ``slope_k * s_i / c_i`` and cost ``gap_k * c_i`` (float64)."""
    b = torch.tensor(options, dtype=torch.float64, device=device)
    gap = b[1:] - b[:-1]
    return gap, (torch.pow(4.0, -b[:-1]) - torch.pow(4.0, -b[1:])) / gap


def _greedy(s: Tensor, c: Tensor, options: tuple[int, ...], spare: float) -> Tensor:
    """Option index per item: the longest prefix of the upgrade steps, sorted by decreasing
    gain per cost (ties: lower option first, then lower item index), whose cost fits ``spare``.

    Steps are (option k -> k+1, item i) with gain per cost ``slope_k * s_i / c_i``. Since every
    option has the same item order (by ``s_i / c_i``), one sort of the N items replaces the sort of
    the N x (K-1) steps: a bisection finds the ratio ``v`` of the first step that does not fit
    (steps above it fit, steps below it do not), and only the steps tied at ``v`` are ordered
    explicitly. The result equals the prefix of the single stable sort of all steps.
    """
    n, k_steps = s.numel(), len(options) - 1
    gap, slope = _steps(options, s.device)
    q_sorted, perm = torch.sort(s / c, descending=True, stable=True)
    # neg_ratio[k, j]: minus the gain per cost of step k of the j-th item in q order; rows ascend.
    # Computed as slope * q like the gain itself, so ties are exactly the float ties of the steps.
    neg_ratio = slope[:, None] * (-q_sorted)[None, :]
    cum_cost = torch.cat([c.new_zeros(1), c[perm].cumsum(0)])

    def steps_above(v: float, inclusive: bool = False) -> Tensor:
        """Per option k, how many items' step k has gain per cost > v (>= v if inclusive)."""
        target = torch.full((k_steps, 1), -v, dtype=torch.float64, device=s.device)
        return torch.searchsorted(neg_ratio, target, right=inclusive).squeeze(1)

    def cost_above(v: float) -> float:
        return float((gap * cum_cost[steps_above(v)]).sum())

    # Smallest v >= 0 such that all steps with gain per cost > v fit: bisection on the bit
    # patterns of non-negative doubles, which are ordered like their values.
    low, high = 0, _as_bits(float(-neg_ratio[0, 0]))
    while low < high:
        mid = (low + high) // 2
        if cost_above(_as_float(mid)) <= spare:
            high = mid
        else:
            low = mid + 1
    v = _as_float(low)
    above, up_to = steps_above(v), steps_above(v, inclusive=True)
    # Level of the j-th item in q order: the number of options k whose prefix covers it.
    covered = torch.bincount(above, minlength=n + 1).cumsum(0)[:n]
    levels = torch.empty(n, dtype=torch.int64, device=s.device)
    levels[perm] = k_steps - covered
    # Steps tied at v, in the order of the full sort: by option, then by item index.
    tied_items = []
    for k in range(k_steps):
        mask = torch.zeros(n, dtype=torch.bool, device=s.device)
        mask[perm[int(above[k]):int(up_to[k])]] = True
        tied_items.append(mask.nonzero().squeeze(1))
    tied = torch.cat(tied_items)
    tied_cost = torch.cat([gap[k] * c[items] for k, items in enumerate(tied_items)]).cumsum(0)
    taken = int((tied_cost <= spare - cost_above(v)).sum())
    levels.index_add_(0, tied[:taken], torch.ones(taken, dtype=torch.int64, device=s.device))
    return levels


def allocate(scores: Tensor, costs: Tensor, bits: Iterable[int], capacity: float) -> Tensor:
    """Bit-width per item (int64 [N]) minimising ``sum_i s_i 4^-b_i`` under ``sum_i c_i b_i <= capacity``.

    ``scores`` are sensitivities ``s_i >= 0``; ``costs`` the cost of one activation bit of each item
    (its MACs times ``weight_bits``, > 0). All items start at the lowest option; upgrades
    "item i from option k to k+1" are taken by decreasing gain per cost
    ``s_i (4^-b_k - 4^-b_{k+1}) / (c_i (b_{k+1} - b_k))`` as long as the cumulative cost fits: a prefix
    of one sort, ties broken by option (all first steps before second steps) and then by item index.
    The result never exceeds ``capacity`` (up to a relative 1e-9 for float rounding) and is within one
    upgrade step of it: the leftover is less than the cost of the first step not taken. Equal scores
    and costs give uniform bits when ``capacity`` is exactly uniform, and a mix of the two adjacent
    options in between.
    """
    options = validate_bits(bits)
    s, c = _items(scores, costs)
    return _allocate(s, c, options, capacity)


def _allocate(s: Tensor, c: Tensor, options: tuple[int, ...], capacity: float) -> Tensor:
    if s.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=s.device)
    total = float(c.sum())
    low, high = options[0] * total, options[-1] * total
    if not (math.isfinite(capacity) and low * (1 - _RTOL) <= capacity <= high * (1 + _RTOL)):
        raise AMQError(f"capacity {capacity:g} BOPs is {capacity / total:.4g} effective bits, outside the "
                       f"feasible range {options[0]}..{options[-1]} bits of the bit options {options}: "
                       f"choose a budget inside it or widen --bits")
    if len(options) == 1:
        return torch.full_like(s, options[0], dtype=torch.int64)
    levels = _greedy(s, c, options, capacity * (1 + _RTOL) - low)
    return torch.tensor(options, dtype=torch.int64, device=s.device)[levels]


def allocate_budget(scores: Tensor, costs: Tensor, bits: Iterable[int], budget: float,
                    fixed_cost: float = 0.0) -> Tensor:
    """``allocate`` with capacity ``budget * sum(costs) - fixed_cost``.

    ``budget`` is a target effective bit-width; ``fixed_cost`` is BOPs spent outside the allocated
    items but charged against the budget (e.g. the auxiliary model), in the units of ``costs``.
    """
    options = validate_bits(bits)
    if not (math.isfinite(budget) and options[0] <= budget <= options[-1]):
        suggest = (f" or --bits {','.join(map(str, default_bits(budget)))}"
                   if MIN_BITS <= budget <= MAX_BITS else "")
        raise AMQError(f"budget {budget} is outside the range {options[0]}..{options[-1]} of the bit options "
                       f"{options}: pass --budget between {options[0]} and {options[-1]}{suggest}")
    if not (math.isfinite(fixed_cost) and fixed_cost >= 0):
        raise AMQError(f"fixed cost {fixed_cost} must be finite and >= 0 BOPs")
    s, c = _items(scores, costs)
    if c.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=s.device)
    total = float(c.sum())
    left = budget - fixed_cost / total
    if left < options[0] * (1 - _RTOL):
        raise AMQError(f"budget {budget} leaves {left:.4g} effective bits after the fixed cost "
                       f"({fixed_cost / total:.4g} bits, e.g. the auxiliary model), below the lowest bit "
                       f"option {options[0]}: raise --budget to at least {options[0] + fixed_cost / total:.3g} "
                       f"or lower the smallest --bits option")
    return _allocate(s, c, options, budget * total - fixed_cost)


def fill_leftover(scores: Tensor, costs: Tensor, bits: Iterable[int], budget: float, chosen: Tensor) -> Tensor:
    """``chosen`` (bit-widths from ``allocate_budget``) with the budget it leaves spent: of the upgrade steps
    still open, the one with the highest gain per cost that fits is taken, again and again until none fits
    (ties: lower item index). ``allocate`` stops at the first step that does not fit, which on a mesh's
    thousands of items leaves less than one item's step; on a few coarse items (the per-layer baseline's
    layers) it can leave a tenth of a bit unspent. A Python loop over the items: for tens of them, not for
    meshes."""
    options = validate_bits(bits)
    s, c = _items(scores, costs)
    level = {b: k for k, b in enumerate(options)}
    if any(int(b) not in level for b in chosen.tolist()) or chosen.numel() != s.numel():
        raise AMQError(f"chosen bit-widths {chosen.tolist()} are not one option of {options} per item")
    levels = [level[int(b)] for b in chosen.tolist()]
    gap, slope = (v.tolist() for v in _steps(options))
    spare = budget * float(c.sum()) * (1 + _RTOL) - sum(options[k] * float(ci) for k, ci in zip(levels, c.tolist()))
    while True:
        best = None  # (gain per cost, item, step cost)
        for i, k in enumerate(levels):
            if k + 1 == len(options):
                continue
            step_cost = gap[k] * float(c[i])
            gain = slope[k] * float(s[i]) / float(c[i])
            if step_cost <= spare and (best is None or gain > best[0]):
                best = (gain, i, step_cost)
        if best is None:
            return torch.tensor([options[k] for k in levels], dtype=torch.int64, device=chosen.device)
        levels[best[1]] += 1
        spare -= best[2]


def uniform_bits(costs: Tensor, bits: Iterable[int], budget: float, fixed_cost: float = 0.0) -> Tensor:
    """The uniform baseline: scores proportional to costs (equal sensitivity per row), so every
    upgrade has the same gain per cost within an option and the budget is spread evenly: uniform
    ``budget`` bits when it is an option, otherwise the two adjacent options (lower item indices
    get the higher one)."""
    return allocate_budget(costs, costs, bits, budget, fixed_cost)


def random_scores(costs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Scores of the ``random`` baseline: per-row sensitivities uniform in [0, 1), times the item cost."""
    return costs * torch.rand(costs.shape, generator=generator, dtype=torch.float64, device=costs.device)


def edge_bits(node_bits: Tensor, edge_index: Tensor, rule: EdgeRule = "target") -> Tensor:
    """Bit-width per edge from the edge items of its nodes (``node_bits``, one per node): target (row 1 of
    ``edge_index``), source (row 0) or their max (which can exceed the budget: see ``node_item_costs``)."""
    if rule not in EDGE_RULES:
        raise AMQError(f"unknown edge rule {rule!r}: use one of {', '.join(EDGE_RULES)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise AMQError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if rule == "target":
        return node_bits[edge_index[1]]
    if rule == "source":
        return node_bits[edge_index[0]]
    return torch.maximum(node_bits[edge_index[0]], node_bits[edge_index[1]])


# The two items of every node, in the column order of ``node_item_costs``, of the auxiliary model's node
# scores and of the node sensitivities: its own feature rows, then the rows of the edges it owns.
NODE_ITEMS = ("node", "edge")
# Cost given to an item that owns no rows (a node without owned edges, a model without edge layers), so that
# every item has a positive cost: far below one MAC, so it never moves a budget measurably.
EMPTY_ITEM_COST = 1e-3


def edge_owner(edge_index: Tensor, rule: EdgeRule = "target") -> Tensor:
    """The node whose edge item an edge's rows are charged to: its source under ``source``, else its target."""
    return edge_index[0] if rule == "source" else edge_index[1]


def owned_edges(edge_index: Tensor, num_nodes: int, rule: EdgeRule = "target",
                dtype: torch.dtype = torch.float64) -> Tensor:
    """How many edges every node owns (``edge_owner``), counted in ``dtype`` (exact in float32 below 2^24)."""
    owner = edge_owner(edge_index, rule)
    # index_add rather than bincount: no output shape depends on values, so graphs can trace it
    return torch.zeros(num_nodes, dtype=dtype, device=owner.device).index_add(
        0, owner, torch.ones(owner.shape[0], dtype=dtype, device=owner.device))


def node_item_costs(node_macs_per_row: float, edge_macs_per_row: float, edge_index: Tensor, num_nodes: int,
                    weight_bits: int, rule: EdgeRule = "target", owned: Tensor | None = None) -> Tensor:
    """Cost of one activation bit of the two items of every node (float64 [N, 2], ``NODE_ITEMS`` order).

    Column 0 is the node's own rows, ``node_macs_per_row * weight_bits``; column 1 the rows of the edges it
    owns (``edge_owner``), ``owned_edges_i * edge_macs_per_row * weight_bits``; MACs per row summed over the
    quantized layers of each domain. Items that own no rows cost ``EMPTY_ITEM_COST``. Under the ``max`` edge
    rule an edge may run above its owner's bits, so the BOPs spent can exceed what these costs count.
    ``owned``: the counts of ``owned_edges`` where the caller has them already.
    """
    owned = (owned_edges(edge_index, num_nodes, rule) if owned is None else owned).to(torch.float64)
    costs = torch.stack([torch.full_like(owned, float(node_macs_per_row)), owned * edge_macs_per_row], dim=1)
    return (costs * weight_bits).clamp_min(EMPTY_ITEM_COST)


def allocate_levels_traceable(scores: Tensor, costs: Tensor, options: tuple[int, ...], capacity: Tensor) -> Tensor:
    """``allocate`` as plain tensor ops with no data-dependent shapes, for graphs (``torch.export``/ONNX).

    Returns the option index per item (int64 [N]). It is the literal form of the greedy: one stable
    sort of all N x (K-1) upgrade steps, option-major, so ties go to the lower option, then the lower
    item index, and the longest prefix whose cumulative cost fits (``greedy_prefix``, an op of its own
    that ONNX computes without the sort). ``capacity`` is a float64 scalar tensor; the checks of
    ``allocate`` are the caller's job. Equal to ``allocate`` for the same float64 inputs (tested).
    """
    s, c = scores.to(torch.float64), costs.to(torch.float64)
    n, k_steps = s.shape[0], len(options) - 1
    if k_steps == 0:
        return torch.zeros_like(s, dtype=torch.int64)
    gap, slope = _steps(options, s.device)
    gain = (slope[:, None] * (s / c)[None, :]).reshape(-1)  # step (k, i) at k * N + i
    step_cost = (gap[:, None] * c[None, :]).reshape(-1)
    spare = capacity * (1 + _RTOL) - options[0] * c.sum()
    return torch.ops.amq.greedy_prefix(gain, step_cost, spare).reshape(k_steps, n).sum(0)
