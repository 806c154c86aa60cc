"""Bit allocation under a budget: exactness, ties, budget bounds, errors, edge rules."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amq_export.amq.allocation import (
    EMPTY_ITEM_COST,
    allocate,
    allocate_budget,
    allocate_levels_traceable,
    default_bits,
    edge_bits,
    edge_owner,
    fill_leftover,
    node_item_costs,
    random_scores,
    uniform_bits,
    validate_bits,
)
from amq_export.errors import AMQError

T = torch.tensor


def reference(scores: torch.Tensor, costs: torch.Tensor, bits: tuple[int, ...], capacity: float) -> torch.Tensor:
    """DESIGN item 6 literally (one stable sort of all steps, then a prefix): the in-graph allocator."""
    levels = allocate_levels_traceable(scores, costs, bits, torch.tensor(capacity, dtype=torch.float64))
    return torch.tensor(bits)[levels]


def objective(scores: torch.Tensor, bits: torch.Tensor) -> float:
    return float((scores.double() * torch.pow(4.0, -bits.double())).sum())


def next_steps(bits: torch.Tensor, options: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: the next option (or -1 at the top) and whether there is one."""
    table = torch.tensor(options)
    index = torch.searchsorted(table, bits)
    has_next = index < len(options) - 1
    return torch.where(has_next, table[(index + 1).clamp(max=len(options) - 1)], -1), has_next


problems = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(st.sampled_from([0.0, 1.0, 3.0]), st.floats(0, 1e3)), min_size=n, max_size=n),
    st.lists(st.integers(1, 40), min_size=n, max_size=n),
    st.sets(st.integers(2, 8), min_size=1).map(lambda bits: tuple(sorted(bits))),
    st.floats(0, 1),
))


@settings(max_examples=150, deadline=None)
@given(problems)
def test_budget_never_exceeded_and_within_one_step(problem):
    scores, costs, options, fraction = problem
    s, c = T(scores), T(costs, dtype=torch.float64)
    budget = options[0] + fraction * (options[-1] - options[0])
    capacity = budget * float(c.sum())
    bits = allocate_budget(s, c, options, budget)
    assert bits.dtype == torch.int64 and set(bits.tolist()) <= set(options)
    used = float((bits * c).sum())
    assert used <= capacity * (1 + 1e-9)
    upper, has_next = next_steps(bits, options)
    if has_next.any():
        assert capacity - used < float(((upper - bits) * c)[has_next].max())
    assert torch.equal(bits, reference(s, c, options, capacity))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 100), min_size=n, max_size=n),
    st.lists(st.integers(1, 9), min_size=n, max_size=n),
    st.sets(st.integers(2, 8), min_size=2, max_size=4).map(lambda bits: tuple(sorted(bits))),
    st.floats(0, 1),
)))
def test_objective_within_one_step_of_brute_force(problem):
    """f(greedy) - gain(first step not taken) <= f(optimum) <= f(greedy): the LP bound of the greedy."""
    scores, costs, options, fraction = problem
    s, c = T(scores, dtype=torch.float64), T(costs, dtype=torch.float64)
    capacity = (options[0] + fraction * (options[-1] - options[0])) * float(c.sum())
    bits = allocate(s, c, options, capacity)
    every = torch.tensor(list(itertools.product(options, repeat=len(scores))), dtype=torch.float64)
    feasible = every[(every * c).sum(1) <= capacity * (1 + 1e-9)]
    best = float((s * torch.pow(4.0, -feasible)).sum(1).min())
    greedy = objective(s, bits)
    upper, has_next = next_steps(bits, options)
    next_gain = s * (torch.pow(4.0, -bits.double()) - torch.pow(4.0, -upper.double()))
    slack = float(next_gain[has_next].max()) if has_next.any() else 0.0
    assert greedy - slack - 1e-12 <= best <= greedy + 1e-12


def test_matches_reference_on_a_larger_problem():
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    scores = torch.randn(n, generator=gen).exp() * (torch.rand(n, generator=gen) > 0.1)  # 10% zeros
    costs = torch.randint(1, 100, (n,), generator=gen).double()
    for budget in (3.0, 4.37, 5.5, 7.9):
        capacity = budget * float(costs.sum())
        assert torch.equal(allocate(scores, costs, range(2, 9), capacity),
                           reference(scores, costs, tuple(range(2, 9)), capacity))


def test_hand_examples():
    # steps by gain per cost: item 1 (3/4), item 1 (3/16), item 0 (3/64), item 0 (3/256)
    assert allocate(T([1.0, 16.0]), T([1.0, 1.0]), (2, 3, 4), 6.0).tolist() == [2, 4]
    assert allocate(T([1.0, 16.0]), T([1.0, 1.0]), (2, 3, 4), 7.0).tolist() == [3, 4]
    # equal scores: the cheaper item is upgraded first
    assert allocate(T([1.0, 1.0]), T([1.0, 4.0]), (2, 3), 11.0).tolist() == [3, 2]
    # prefix: the first step that does not fit ends the allocation (leftover 3 < 4)
    assert allocate(T([1.0, 1.0]), T([1.0, 4.0]), (2, 3), 14.0).tolist() == [3, 2]
    assert allocate(T([1.0, 1.0]), T([1.0, 4.0]), (2, 3), 15.0).tolist() == [3, 3]
    # a non-uniform gap: 4 -> 8 in one step, gain per cost 16 * (4^-4 - 4^-8) / 4
    assert allocate(T([16.0, 1.0]), T([1.0, 1.0]), (4, 8), 12.0).tolist() == [8, 4]


def test_ties_go_to_lower_index_and_lower_option_first():
    assert allocate(T([2.0, 2.0, 2.0]), T([1.0, 1.0, 1.0]), (3, 4, 5), 10.0).tolist() == [4, 3, 3]
    assert allocate(T([2.0, 2.0, 2.0]), T([1.0, 1.0, 1.0]), (3, 4, 5), 13.0).tolist() == [5, 4, 4]


def test_ties_from_float_rounding_follow_item_index():
    """Two different scores whose gains per cost round to the same double: the lower index goes first,
    as in the sort of all steps, although the larger score sorts first among the items."""
    low, high = 1.5000000000000007, 1.5000000000000009
    slope = (4.0 ** -2 - 4.0 ** -7) / 5
    assert low < high and T(slope, dtype=torch.float64) * low == T(slope, dtype=torch.float64) * high
    scores = T([low, high], dtype=torch.float64)
    assert allocate(scores, T([1.0, 1.0]), (2, 7), 9.0).tolist() == [7, 2]


def test_single_item():
    for b in range(2, 9):
        assert allocate(T([0.5]), T([3.0]), range(2, 9), 3.0 * b).tolist() == [b]
    assert allocate(T([0.5]), T([3.0]), range(2, 9), 3.0 * 5.9).tolist() == [5]
    assert allocate(T([0.5]), T([3.0]), (4,), 12.0).tolist() == [4]


def test_equal_scores_give_uniform_bits():
    n = 10
    scores, costs = torch.full((n,), 0.3), torch.full((n,), 0.7)
    for b in range(3, 7):
        assert allocate_budget(scores, costs, (3, 4, 5, 6), float(b)).tolist() == [b] * n
    mixed = allocate_budget(scores, costs, (3, 4, 5, 6), 4.3)
    assert mixed.tolist() == [5] * 3 + [4] * 7


def test_uniform_bits_with_unequal_costs():
    costs = T([1.0, 10.0, 3.0, 7.0])
    assert uniform_bits(costs, (2, 3, 4), 3.0).tolist() == [3, 3, 3, 3]
    assert uniform_bits(costs, (2, 3, 4), 4.0).tolist() == [4, 4, 4, 4]
    between = uniform_bits(costs, (2, 3, 4), 3.5)
    assert set(between.tolist()) <= {3, 4} and float((between * costs).sum()) <= 3.5 * 21


def test_budget_at_both_ends():
    scores, costs = T([5.0, 0.0, 1.0]), T([1.0, 2.0, 3.0])
    assert allocate_budget(scores, costs, (3, 5, 6), 3.0).tolist() == [3, 3, 3]
    assert allocate_budget(scores, costs, (3, 5, 6), 6.0).tolist() == [6, 6, 6]


def test_zero_scores():
    # all zero: every step ties; first steps of all items come before any second step
    assert allocate(torch.zeros(3), torch.ones(3), (2, 3, 4), 8.0).tolist() == [3, 3, 2]
    assert allocate(torch.zeros(3), torch.ones(3), (2, 3, 4), 10.0).tolist() == [4, 3, 3]
    # positive scores are served first, all the way up
    assert allocate(T([0.0, 1e-30, 0.0]), torch.ones(3), (2, 3, 4), 8.0).tolist() == [2, 4, 2]


def test_empty():
    assert allocate(torch.zeros(0), torch.zeros(0), (3, 4), 0.0).shape == (0,)
    assert allocate_budget(torch.zeros(0), torch.zeros(0), (3, 4), 3.5).dtype == torch.int64


def test_fixed_cost_is_charged():
    costs = torch.ones(4)
    assert allocate_budget(torch.ones(4), costs, (3, 4), 4.0, fixed_cost=2.0).tolist() == [4, 4, 3, 3]
    with pytest.raises(AMQError, match=r"budget 4\.5 leaves 3\.5 effective bits .*raise --budget to at least 5 "):
        allocate_budget(torch.ones(4), costs, (4, 5), 4.5, fixed_cost=4.0)
    with pytest.raises(AMQError, match="fixed cost"):
        allocate_budget(torch.ones(4), costs, (4, 5), 4.5, fixed_cost=-1.0)


@pytest.mark.parametrize("capacity", [5.9, 24.1, float("nan")])
def test_capacity_outside_feasible_range(capacity):
    with pytest.raises(AMQError, match=r"outside the feasible range 2\.\.8 bits"):
        allocate(T([1.0, 1.0]), T([1.0, 2.0]), range(2, 9), capacity)


def test_budget_outside_options():
    with pytest.raises(AMQError, match=r"budget 7\.0 is outside the range 3\.\.6 .*--budget between 3 and 6 "
                                       r"or --bits 6,7,8"):
        allocate_budget(torch.ones(2), torch.ones(2), (3, 4, 5, 6), 7.0)
    with pytest.raises(AMQError, match=r"budget 9\.0 .*between 3 and 6$"):
        allocate_budget(torch.ones(2), torch.ones(2), (3, 4, 5, 6), 9.0)


def test_bad_items():
    with pytest.raises(AMQError, match="shapes"):
        allocate(torch.ones(3), torch.ones(2), (3, 4), 7.0)
    with pytest.raises(AMQError, match="shapes"):
        allocate(torch.ones(2, 2), torch.ones(2, 2), (3, 4), 7.0)
    with pytest.raises(AMQError, match=r"scores must be finite and >= 0, but 1 are not \(first: index 1"):
        allocate(T([1.0, -1.0]), torch.ones(2), (3, 4), 7.0)
    with pytest.raises(AMQError, match="scores must be finite"):
        allocate(T([float("nan"), 1.0]), torch.ones(2), (3, 4), 7.0)
    with pytest.raises(AMQError, match=r"costs must be finite and > 0, but 2 are not"):
        allocate(torch.ones(3), T([0.0, 1.0, float("inf")]), (3, 4), 7.0)


def test_validate_and_default_bits():
    assert validate_bits([8, 4, 4]) == (4, 8)
    assert validate_bits(range(2, 9)) == (2, 3, 4, 5, 6, 7, 8)
    for bad in ([9], [1, 4], [4.5], ["4"], [True]):
        with pytest.raises(AMQError, match=r"bit options \[.*\] are not integers in 2\.\.8: pass --bits"):
            validate_bits(bad)
    with pytest.raises(AMQError, match="no bit options"):
        validate_bits([])
    with pytest.raises(AMQError, match="must be a list"):
        validate_bits(4)
    assert default_bits(4.0) == (3, 4, 5, 6)
    assert default_bits(4.5) == (3, 4, 5, 6, 7)
    assert default_bits(2.0) == (2, 3, 4)
    assert default_bits(7.5) == (6, 7, 8)
    with pytest.raises(AMQError, match=r"budget 1\.5 .*--budget between 2 and 8"):
        default_bits(1.5)


def test_edge_rules():
    node_bits = T([3, 5, 4])
    edge_index = T([[0, 1, 2, 2], [1, 0, 0, 1]])
    assert edge_bits(node_bits, edge_index).tolist() == [5, 3, 3, 5]
    assert edge_bits(node_bits, edge_index, "source").tolist() == [3, 5, 4, 4]
    assert edge_bits(node_bits, edge_index, "max").tolist() == [5, 5, 4, 5]
    with pytest.raises(AMQError, match="unknown edge rule 'min': use one of target, source, max"):
        edge_bits(node_bits, edge_index, "min")


def test_node_item_costs():
    """Every node has two items: its own rows and the rows of the edges it owns; items with no rows cost
    EMPTY_ITEM_COST, so that every item has a positive cost."""
    edge_index = T([[0, 1, 2, 2], [1, 0, 0, 1]])  # in-degrees 2, 2, 0, 0; out-degrees 1, 1, 2, 0
    costs = node_item_costs(100.0, 10.0, edge_index, num_nodes=4, weight_bits=8)
    assert costs.tolist() == [[800.0, 160.0], [800.0, 160.0], [800.0, EMPTY_ITEM_COST], [800.0, EMPTY_ITEM_COST]]
    by_source = node_item_costs(100.0, 10.0, edge_index, num_nodes=4, weight_bits=8, rule="source")
    assert by_source[:, 1].tolist() == [80.0, 80.0, 160.0, EMPTY_ITEM_COST]
    assert edge_owner(edge_index, "max").tolist() == [1, 0, 0, 1]
    no_edge_layers = node_item_costs(100.0, 0.0, edge_index, num_nodes=4, weight_bits=8)
    assert (no_edge_layers[:, 1] == EMPTY_ITEM_COST).all()


def test_random_scores():
    costs = T([1.0, 2.0, 3.0])
    first = random_scores(costs, torch.Generator().manual_seed(1))
    assert torch.equal(first, random_scores(costs, torch.Generator().manual_seed(1)))
    assert ((first >= 0) & (first < costs)).all()


def test_fill_leftover_spends_what_the_first_step_that_does_not_fit_leaves():
    scores, costs = torch.tensor([100.0, 1.0]), torch.tensor([10.0, 1.0])
    chosen = allocate_budget(scores, costs, (2, 3), 2.5)  # item 0's step (cost 10) does not fit the 5.5 left
    assert chosen.tolist() == [2, 2]
    assert fill_leftover(scores, costs, (2, 3), 2.5, chosen).tolist() == [2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_fill_leftover_keeps_the_budget_and_leaves_no_step_that_fits(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(12, generator=g, dtype=torch.float64)
    costs = torch.randint(1, 50, (12,), generator=g).double()
    options, budget = (2, 3, 4, 5, 6), 3.0 + 2.5 * float(torch.rand(1, generator=g))
    chosen = allocate_budget(scores, costs, options, budget)
    filled = fill_leftover(scores, costs, options, budget, chosen)
    assert (filled >= chosen).all()
    left = budget * float(costs.sum()) - float((filled.double() * costs).sum())
    assert left >= -1e-9
    index = {b: k for k, b in enumerate(options)}
    for b, c in zip(filled.tolist(), costs.tolist()):
        if b < options[-1]:
            assert (options[index[b] + 1] - b) * c > left


def test_fill_leftover_rejects_bits_that_are_not_options():
    with pytest.raises(AMQError, match="not one option"):
        fill_leftover(torch.ones(2), torch.ones(2), (3, 4), 3.5, torch.tensor([3, 7]))
