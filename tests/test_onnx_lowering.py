"""The ONNX lowering of the integer Linear ops, on hand-made integer forms: ONNX Runtime computes the
PyTorch ops' numbers bit for bit, for rows sorted by bucket (one segment per bucket, each one
``MatMulIntegerToFloat`` for the ``ort`` target) and rows in any order (per-row parameters, with one
shared activation zero point and without one), and for edge rows of gathered node rows quantized before
the gather."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxscript.rewriter import rewrite
from torch import Tensor, nn
from torch_geometric.utils import scatter

from amq_export.amq.bucketed_linear import BucketedIntLinear, IntegerForm, counts_key
from amq_export.exporter.onnx_lowering import OPSET, translation_table
from amq_export.models.gathered_linear import gathered_linear
from passes.onnx import apply_rules
from passes.onnx.uint8_weights import RULES as UINT8_WEIGHTS


def _form(zero_points: tuple[int, ...], bits: tuple[int, ...], seed: int = 0, in_features: int = 24,
          out_features: int = 8) -> IntegerForm:
    gen = torch.Generator().manual_seed(seed)
    return IntegerForm(
        act_scale=torch.rand(len(bits), generator=gen) * 0.1 + 0.01,
        act_zero_point=torch.tensor(zero_points, dtype=torch.float32),
        act_qmax=torch.tensor([2.0 ** b - 1 for b in bits]),
        weight_int_t=torch.randint(-127, 128, (in_features, out_features), generator=gen, dtype=torch.int8),
        weight_scale=torch.rand(out_features, generator=gen) * 0.01 + 0.001,
        bias=torch.randn(out_features, generator=gen),
    )


class _Layer(nn.Module):
    def __init__(self, form: IntegerForm, segments: bool = False) -> None:
        super().__init__()
        self.form, self.flags = form, form.flags()  # Python values: traced code cannot branch on tensors
        self.segments = segments

    def forward(self, x: Tensor, row_bucket: Tensor) -> Tensor:
        counts = (row_bucket.unsqueeze(1) == torch.arange(len(self.flags[0]))).sum(0) if self.segments else None
        return torch.ops.amq.bucketed_linear(x, row_bucket, *self.form, *self.flags, bucket_counts=counts)


def _export(form: IntegerForm, x: Tensor, row_bucket: Tensor, segments: bool = False):
    rows = torch.export.Dim("rows")
    program = torch.onnx.export(_Layer(form, segments).eval(), (x, row_bucket), dynamo=True, opset_version=OPSET,
                                input_names=["x", "row_bucket"], dynamic_shapes=({0: rows}, {0: rows}),
                                custom_translation_table=translation_table(), verbose=False)
    # with uint8 weights, as every artifact runs them (ONNX Runtime's uint8 x int8 saturates without VNNI)
    return rewrite(program.model_proto, pattern_rewrite_rules=UINT8_WEIGHTS)


@pytest.mark.parametrize(("zero_points", "bits", "shared"), [
    ((2, 40), (4, 8), 40),  # 4-bit range shifted to 40: 38..53, inside uint8
    ((15, 3), (4, 8), -1),  # the 8-bit bucket leaves no room above zero point 15: per-row zero points
    ((7,), (8,), 7),  # uniform 8 bits: no clamp at all
])
def test_lowering_matches_the_op_bit_for_bit(zero_points, bits, shared) -> None:
    """Rows in any order: per-row parameters (one bucket: scalar ones, as a single segment)."""
    form = _form(zero_points, bits)
    assert form.shared_zero_point == shared
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 24, generator=gen) * 3  # many values outside every bucket's range
    row_bucket = torch.randint(0, len(bits), (300,), generator=gen)
    expected = form(x, row_bucket).numpy()
    model = _export(form, x[:7], row_bucket[:7])
    fused, changes = apply_rules(model, "ort")
    one_bucket = len(bits) == 1  # one segment, scalar parameters: the fused kernel takes scale and bias
    assert changes.get("MatMulIntegerToFloat", 0) == int(one_bucket)
    feeds = {"x": x.numpy(), "row_bucket": row_bucket.numpy()}
    for graph in (model, fused):
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, feeds)[0], expected)
    ops = Counter(node.op_type for node in model.graph.node)
    narrow = bits[0] < 8  # a narrow bucket is clamped at its top, and from below where it is shifted
    assert (ops["Min"], ops["Max"]) == (int(narrow), int(narrow and shared >= 0))
    assert ops["QuantizeLinear"] == 1


@pytest.mark.parametrize(("zero_points", "bits"), [((2, 40), (4, 8)), ((15, 3), (4, 8)), ((2, 40, 9), (3, 8, 4)),
                                                   ((7,), (8,))])
@pytest.mark.parametrize("rows", [300, 1, 0])
def test_sorted_rows_quantize_per_segment_bit_for_bit(zero_points, bits, rows) -> None:
    """Rows sorted by bucket (``bucket_counts``): one scalar QuantizeLinear per bucket, a scalar Clip per
    narrow bucket, no per-row bounds; the same integers as the op, empty buckets and no rows included."""
    form = _form(zero_points, bits)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 24, generator=gen) * 3
    row_bucket = torch.randint(0, max(len(bits) - 1, 1), (rows,), generator=gen).sort().values  # the last bucket empty (of several)
    expected = form(x, row_bucket).numpy()
    model = _export(form, torch.randn(7, 24), torch.tensor([0, 0, 0, 0, 0, 0, len(bits) - 1]), segments=True)
    ops = Counter(node.op_type for node in model.graph.node)
    assert (ops["Min"], ops["Max"]) == (0, 0)
    assert (ops["QuantizeLinear"], ops["Clip"]) == (len(bits), sum(b < 8 for b in bits))
    fused, changes = apply_rules(model, "ort")
    assert changes.get("MatMulIntegerToFloat") == len(bits) and changes["Add"] == -len(bits)  # bias in the kernel
    feeds = {"x": x.numpy(), "row_bucket": row_bucket.numpy()}
    for graph in (model, fused):
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, feeds)[0], expected)


class _EdgeLayer(nn.Module):
    """The first Linear of an edge MLP on [h_dst, h_src, rest], as ``gathered_linear`` calls it."""

    def __init__(self, form: IntegerForm, segments: bool) -> None:
        super().__init__()
        self.buckets: dict[str, Tensor] = {}
        self.linear = BucketedIntLinear(form, self.buckets, "edge_linear", "edge")
        self.segments = segments  # edge rows sorted by bucket, their counts given

    def forward(self, h: Tensor, edge_index: Tensor, rest: Tensor, row_bucket: Tensor) -> Tensor:
        self.buckets["edge"] = row_bucket
        if self.segments:
            self.buckets[counts_key("edge")] = (row_bucket.unsqueeze(1) == torch.arange(len(self.linear.flags[0]))).sum(0)
        return gathered_linear(self.linear, h, (edge_index[1], edge_index[0]), rest)


@pytest.mark.parametrize(("zero_points", "bits"), [((2, 40, 9), (3, 8, 4)), ((15, 3), (4, 8))])
@pytest.mark.parametrize("segments", [False, True])
def test_gathered_rows_quantize_before_the_gather_bit_for_bit(zero_points, bits, segments) -> None:
    form = _form(zero_points, bits)  # 24 inputs: 2 x 10 gathered node columns + 4 of the edge's own
    layer = _EdgeLayer(form, segments).eval()
    gen = torch.Generator().manual_seed(2)
    n, e = 50, 400
    h, rest = torch.randn(n, 10, generator=gen) * 3, torch.randn(e, 4, generator=gen)
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    row_bucket = torch.randint(0, len(bits), (e,), generator=gen)
    row_bucket = row_bucket.sort().values if segments else row_bucket
    got = layer(h, edge_index, rest, row_bucket)
    plain = torch.cat([h[edge_index[1]], h[edge_index[0]], rest], -1)
    assert torch.equal(got, form(plain, row_bucket))  # the same numbers as the plain concatenation
    nodes, edges = torch.export.Dim("nodes"), torch.export.Dim("edges")
    program = torch.onnx.export(layer, (h[:7], edge_index[:, :9] % 7, rest[:9], row_bucket[:9]), dynamo=True,
                                opset_version=OPSET, input_names=["h", "edge_index", "rest", "row_bucket"],
                                dynamic_shapes=({0: nodes}, {1: edges}, {0: edges}, {0: edges}),
                                custom_translation_table=translation_table(), verbose=False)
    model = program.model_proto
    ops = Counter(node.op_type for node in model.graph.node)
    shared = form.shared_zero_point >= 0
    rest_quantizations = len(bits) if segments else 1  # one per segment, or one per-row QuantizeLinear
    assert ops["QuantizeLinear"] == (len(bits) + 1 if shared else 1) + (rest_quantizations - 1)  # K node-row copies and the rest
    feeds = {"h": h.numpy(), "edge_index": edge_index.numpy(), "rest": rest.numpy(), "row_bucket": row_bucket.numpy()}
    rewritten, _ = apply_rules(model, "onnx")
    # node rows are gathered from each bucket's copy: per segment from its own copy (never concatenated), else
    # from the copies concatenated (GatherElements: single values, narrow_gather_scatter)
    producers = {out: node for node in rewritten.graph.node for out in node.output}
    row_gathers = [node for node in rewritten.graph.node if node.op_type in ("Gather", "GatherElements")
                   and producers.get(node.input[0]) is not None
                   and producers[node.input[0]].op_type in ("Concat", "QuantizeLinear", "Clip")]
    sources = Counter(producers[node.input[0]].op_type == "Concat" for node in row_gathers)
    expected = Counter({False: 2 * len(bits)}) if segments else Counter({True: 2})
    assert sources == (expected if shared else Counter())  # no shared zero point: float rows, gathered plainly
    for graph in (model, rewritten, apply_rules(rewritten, "ort")[0]):
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, feeds)[0], got.numpy())


class _SegmentMLP(nn.Module):
    """Linear, SiLU, Linear on rows sorted by bucket, as a frozen MLP runs; ``expose`` also returns the hidden
    rows (then they are needed whole)."""

    def __init__(self, first: IntegerForm, second: IntegerForm, expose: bool) -> None:
        super().__init__()
        self.buckets: dict[str, Tensor] = {}
        self.first = BucketedIntLinear(first, self.buckets, "first", "edge")
        self.second = BucketedIntLinear(second, self.buckets, "second", "edge")
        self.expose = expose

    def forward(self, x: Tensor, row_bucket: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        self.buckets["edge"] = row_bucket
        self.buckets[counts_key("edge")] = (row_bucket.unsqueeze(1) == torch.arange(len(self.first.flags[0]))).sum(0)
        hidden = torch.nn.functional.silu(self.first(x))
        messages = torch.nn.functional.silu(self.second(hidden))
        summed = scatter(messages, target, dim=0, dim_size=7, reduce="sum")  # as message passing aggregates
        return (summed, hidden) if self.expose else (summed,)


@pytest.mark.parametrize("expose", [False, True])
def test_mlp_on_segments_skips_the_concat_between_its_linears(expose) -> None:
    """``skip_segment_concat`` (an "onnx" pass): the second Linear takes the first's segments as they are,
    through the SiLU, instead of slicing their concatenation, and its segments are scatter-added one by
    one; not where the hidden rows are needed whole."""
    bits = (4, 8, 3)
    layer = _SegmentMLP(_form((2, 40, 9), bits), _form((3, 50, 1), bits, seed=1, in_features=8, out_features=5),
                        expose).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(200, 24, generator=gen) * 3
    row_bucket = torch.randint(0, len(bits), (200,), generator=gen).sort().values
    target = torch.randint(0, 7, (200,), generator=gen)
    expected = [t.numpy() for t in layer(x, row_bucket, target)]
    rows = torch.export.Dim("rows")
    model = torch.onnx.export(layer, (x[:9], row_bucket[:9], target[:9]), dynamo=True, opset_version=OPSET,
                              input_names=["x", "row_bucket", "target"], dynamic_shapes=({0: rows},) * 3,
                              custom_translation_table=translation_table(), verbose=False).model_proto
    rewritten, changes = apply_rules(model, "onnx")
    assert changes.get("ScatterND") == len(bits)  # one per segment (the element-wise scatter became ScatterND)
    def segment_concats(graph) -> int:
        return sum(node.op_type == "Concat" and len(node.input) == len(bits) for node in graph.graph.node)

    # both Linears' concatenations go; with the hidden rows exposed, only the second's (scatter-added per segment)
    assert (segment_concats(model), segment_concats(rewritten)) == (2, int(expose))
    assert changes["Sigmoid"] == (len(bits) - 1) * (1 + (not expose))
    feeds = {"x": x.numpy(), "row_bucket": row_bucket.numpy(), "target": target.numpy()}
    exact = rewrite(model, pattern_rewrite_rules=UINT8_WEIGHTS)  # uint8 x int8 saturates on CPUs without VNNI
    plain = ort.InferenceSession(exact.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(plain, expected):  # ONNX Runtime's Sigmoid is not PyTorch's to the last bit
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for graph in (rewritten, apply_rules(rewritten, "ort")[0]):  # the pass changes no number
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        for got, want in zip(session.run(None, feeds), plain):
            np.testing.assert_array_equal(got, want)


def test_rounding_follows_quantize_linear_just_below_half_steps() -> None:
    """``round(x / s) + z``, not ``round(x / s + z)``: in float32 the sum can round ``x / s`` up across a half
    step (3.4999998 + 40 is 43.5), which flipped a few roundings per mesh against ONNX Runtime."""
    form = _form((40,), (8,))._replace(act_scale=torch.tensor([1.0]))
    halves = np.arange(-40, 200, dtype=np.float32) + np.float32(0.5)
    x = np.stack([np.nextafter(halves, -np.inf), halves, np.nextafter(halves, np.inf)]).reshape(-1)
    x = torch.from_numpy(np.resize(x, (len(x) // 24 * 24,))).reshape(-1, 24)
    row_bucket = torch.zeros(x.shape[0], dtype=torch.long)
    expected = form(x, row_bucket).numpy()
    session = ort.InferenceSession(_export(form, x[:3], row_bucket[:3]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy(), "row_bucket": row_bucket.numpy()})[0]
    np.testing.assert_array_equal(got, expected)


class _GreedyPrefix(nn.Module):
    def forward(self, gain: Tensor, cost: Tensor, spare: Tensor) -> Tensor:
        return torch.ops.amq.greedy_prefix(gain, cost, spare)


def test_greedy_prefix_without_the_full_sort_takes_the_sorts_prefix() -> None:
    """The histogram lowering of ``amq::greedy_prefix`` marks exactly the steps of the sorted prefix: gains
    spread over many orders of magnitude, gains with many ties and zeros, all equal, all zero, no steps;
    budgets from below nothing to above everything, and budgets one prefix spends exactly; integer costs
    (MACs times bits, as the allocation's)."""
    import amq_export.amq.greedy_prefix  # noqa: F401

    steps = torch.export.Dim("steps")
    example = (torch.rand(10, dtype=torch.float64), torch.ones(10, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64))
    model = torch.onnx.export(_GreedyPrefix(), example, dynamo=True, opset_version=OPSET,
                              input_names=["gain", "cost", "spare"], dynamic_shapes=({0: steps}, {0: steps}, None),
                              custom_translation_table=translation_table(), verbose=False).model_proto
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["TopK"] == 1 and ops["ScatterElements"] == 2  # the one bin's sort; the histogram and the result
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    gains = [lambda n: torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * 3),
             lambda n: torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * 30),  # beyond the bins' range
             lambda n: torch.randint(0, 4, (n,), generator=gen).double(),
             lambda n: torch.full((n,), 0.5, dtype=torch.float64), lambda n: torch.zeros(n, dtype=torch.float64)]
    taken_some = 0
    for trial in range(100):
        n = [0, 1, 2000][trial % 3]
        gain = gains[trial % len(gains)](n)
        cost = torch.randint(1, 100, (n,), generator=gen).double() * 8
        spare = torch.tensor((float(torch.rand(1, generator=gen)) * 1.2 - 0.05) * float(cost.sum()), dtype=torch.float64)
        if trial % 4 == 0 and n:  # a budget that one prefix spends exactly
            order = torch.sort(gain, descending=True, stable=True).indices
            spare = cost[order].cumsum(0)[int(torch.randint(0, n, (1,), generator=gen))]
        expected = torch.ops.amq.greedy_prefix(gain, cost, spare).numpy()
        got = session.run(None, {"gain": gain.numpy(), "cost": cost.numpy(), "spare": spare.numpy()})[0]
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}")
        taken_some += 0 < expected.sum() < n
    assert taken_some > 20  # the budget ran out inside the steps, not only before or after them all
