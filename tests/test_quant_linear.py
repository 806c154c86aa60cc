"""AdaptiveQuantLinear: per-bucket numerics, gradients, per-bucket weights, sensitivities, overrides."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_geometric.nn
from torch import Tensor, nn

from amq_export.amq.bit_state import BitState
from amq_export.amq.bucketed_linear import integer_form
from amq_export.amq.quant_linear import (
    AdaptiveQuantLinear,
    calibration_mode,
    fake_quant_eval,
    input_ulp_noise,
)

BITS = (3, 4, 8)


def _swish_rows(rows: int, features: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.silu(2 * torch.randn(rows, features, generator=g))


def _layer(bits: tuple[int, ...] = BITS, per_bucket: bool = False, seed: int = 0,
           linear: nn.Module | None = None, calibration: Tensor | None = None) -> AdaptiveQuantLinear:
    """A 6 -> 5 layer in the node domain, calibrated on ``calibration`` (default: 64 Swish rows)."""
    torch.manual_seed(seed)
    linear = nn.Linear(6, 5) if linear is None else linear
    layer = AdaptiveQuantLinear(linear, name="lin", domain="node", bits=bits, state=BitState(),
                                per_bucket_weight_bits=per_bucket)
    with torch.no_grad(), calibration_mode(layer):
        layer(_swish_rows(64, 6, seed=seed + 1) if calibration is None else calibration)
    return layer


def _row_bits(rows: int, bits: tuple[int, ...] = BITS, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(bits)[torch.randint(0, len(bits), (rows,), generator=g)]


def _set_act_quant(layer: AdaptiveQuantLinear, bucket: int, scale: float, zero_point: int) -> None:
    """Brevitas learns the range ``scale * qmax`` and the zero point in float units ``zero_point * scale``."""
    tensor_quant = layer.act_quants[bucket].act_quant.fused_activation_quant_proxy.tensor_quant
    with torch.no_grad():
        tensor_quant.scaling_impl.value.fill_(scale * (2 ** layer.bits[bucket] - 1))
        tensor_quant.zero_point_impl.value.fill_(zero_point * scale)


def _hand_quantize(x: Tensor, scale: float, zero_point: int, bits: int) -> Tensor:
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1)
    return (q - zero_point) * scale


def _hand_forward(layer: AdaptiveQuantLinear, x: Tensor, bits: Tensor) -> Tensor:
    """``Q_{b_r}(x_r) @ Q_w(W)^T + bias`` from the layer's exported parameters."""
    y = torch.empty(x.size(0), layer.out_features)
    for k, p in enumerate(layer.act_quant_params()):
        rows = bits == layer.bits[k]
        q = torch.clamp(torch.round(x[rows] / p.scale) + p.zero_point, p.qmin, p.qmax)
        w = layer.weight_quant_params(k if layer.per_bucket_weight_bits else 0)
        y[rows] = (q - p.zero_point) * p.scale @ (w.int_weight.float() * w.scale).T + layer.bias
    return y


def test_fixed_scales_match_hand_computation() -> None:
    layer = _layer()
    fixed = [(0.5, 1), (0.25, 2), (0.03, 10)]
    for k, (scale, zp) in enumerate(fixed):
        _set_act_quant(layer, k, scale, zp)
    layer.eval()
    x, bits = _swish_rows(40, 6, seed=5), _row_bits(40, seed=5)
    layer.state.bits["node"] = bits
    w = layer.weight_quant_params()
    assert w.int_weight.abs().max() <= 127 and w.scale.shape == (5, 1)
    assert torch.equal(w.scale.flatten(), layer.weight.detach().abs().amax(1) / 127)
    expected = torch.empty(40, 5)
    for k, (scale, zp) in enumerate(fixed):
        rows = bits == BITS[k]
        xq = _hand_quantize(x[rows], scale, zp, BITS[k])
        expected[rows] = xq @ (w.int_weight.float() * w.scale).T + layer.bias.detach()
        params = layer.act_quant_params()[k]
        assert (float(params.scale), float(params.zero_point)) == pytest.approx((scale, zp))
        assert (float(params.qmin), float(params.qmax), float(params.bit_width)) == (0, 2 ** BITS[k] - 1, BITS[k])
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x), _hand_forward(layer, x, bits), rtol=1e-5, atol=1e-5)


def test_eval_runs_the_integer_arithmetic_and_training_the_fake_quantization() -> None:
    layer = _layer()
    x, bits = _swish_rows(300, 6, seed=9), _row_bits(300, seed=9)
    layer.state.bits["node"] = bits
    form = integer_form(layer)
    exact = form(x, torch.searchsorted(torch.tensor(BITS), bits))
    layer.eval()
    with torch.no_grad():
        integer = layer(x)
        with fake_quant_eval(layer):
            fake = layer(x)
    assert torch.equal(integer, exact)  # the exported model's arithmetic, bit for bit
    assert not torch.equal(integer, fake) and layer.integer_eval
    torch.testing.assert_close(integer, fake, rtol=1e-5, atol=1e-5)  # one computation, two roundings
    # the same quantized rows (test_fake_quant); one GEMM over all rows instead of one per bucket
    torch.testing.assert_close(fake, _hand_forward(layer, x, bits), rtol=1e-6, atol=1e-6)
    layer.train()
    with torch.no_grad():
        assert torch.equal(layer(x), fake)  # training (and autograd) keep the fake quantization


def test_each_bucket_uses_its_own_scale() -> None:
    layer = _layer()
    scales = [float(p.scale) for p in layer.act_quant_params()]
    assert len(set(scales)) == len(BITS)
    x = _swish_rows(1, 6, seed=3).repeat(3, 1)  # the same row three times, one per bucket
    layer.state.bits["node"] = torch.tensor(BITS)
    with torch.no_grad():
        y = layer(x)
        assert not torch.allclose(y[0], y[1]) and not torch.allclose(y[1], y[2])
        # A row's output depends only on its own bucket: equal to the layer with every row at that width.
        for k, b in enumerate(BITS):
            layer.state.layer_bits = {"lin": b}
            torch.testing.assert_close(layer(x)[k], y[k])


def test_8_bits_close_to_float() -> None:
    linear = nn.Linear(6, 5)
    x = _swish_rows(200, 6, seed=7)
    layer = _layer(bits=(8,), linear=linear, calibration=x)
    layer.state.bits["node"] = torch.full((200,), 8)
    with torch.no_grad():
        err = (layer(x) - linear(x)).norm() / linear(x).norm()
    assert err < 0.01


def test_pyg_linear_and_leading_dims() -> None:
    torch.manual_seed(0)
    pyg = torch_geometric.nn.Linear(6, 5)
    layer = _layer(linear=pyg)
    torch.testing.assert_close(layer.weight.detach(), pyg.weight.detach())
    x = _swish_rows(7, 6, seed=2).unsqueeze(0)  # [1, C, w], as GraphViT attention passes it
    bits = _row_bits(7, seed=2)
    layer.state.bits["node"] = bits
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (1, 7, 5)
    torch.testing.assert_close(y[0], _hand_forward(layer, x[0], bits), rtol=1e-5, atol=1e-5)


def test_ste_gradients_reach_input_weights_and_scales() -> None:
    layer = _layer()
    layer.train()
    x = _swish_rows(50, 6, seed=4).requires_grad_()
    layer.state.bits["node"] = _row_bits(50, bits=(3, 4), seed=4)  # no row at 8 bits
    layer(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    scale_grads = [q.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value.grad
                   for q in layer.act_quants]
    assert scale_grads[0].abs() > 0 and scale_grads[1].abs() > 0
    assert scale_grads[2] is None or scale_grads[2] == 0  # the empty bucket learns nothing


def test_per_bucket_weight_bits() -> None:
    layer = _layer(per_bucket=True)
    assert [int(layer.weight_quant_params(k).bit_width) for k in range(3)] == list(BITS)
    assert len([n for n, _ in layer.named_parameters() if n.endswith("weight")]) == 1  # one float weight
    assert layer.weight_quant_params(0).int_weight.abs().max() <= 3  # 3-bit narrow range
    x, bits = _swish_rows(30, 6, seed=6), _row_bits(30, seed=6)
    layer.state.bits["node"] = bits
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _hand_forward(layer, x, bits), rtol=1e-5, atol=1e-5)
    layer.train()
    layer(x).sum().backward()
    assert layer.weight.grad.abs().sum() > 0


def _loss(y: Tensor) -> Tensor:
    return (y * torch.linspace(-1, 1, y.numel()).view_as(y)).pow(2).sum()


def test_sensitivity_equals_grad_norm_times_range() -> None:
    layer = _layer()
    x, bits = _swish_rows(20, 6, seed=8).requires_grad_(), _row_bits(20, seed=8)
    state = layer.state
    state.bits["node"], state.collect = bits, True
    _loss(layer(x)).backward()
    # By hand: the gradient of the same loss at the quantized input rows.
    xq = layer.quantize_input(x.detach()).detach().requires_grad_()
    w = layer.weight_quant_params()
    (grad,) = torch.autograd.grad(_loss(F.linear(xq, w.int_weight.float() * w.scale, layer.bias)), xq)
    expected = grad.pow(2).sum(-1) * layer.input_range**2
    assert float(layer.input_range) > 0
    torch.testing.assert_close(state.sensitivity["node"], expected)
    assert state.layer_sensitivity["lin"] == pytest.approx(float(expected.sum()))


def test_collection_leaves_gradients_unchanged() -> None:
    grads = []
    for collect in (False, True):
        layer = _layer(seed=1)
        layer.train()
        x = _swish_rows(25, 6, seed=9).requires_grad_()
        layer.state.bits["node"], layer.state.collect = _row_bits(25, seed=9), collect
        y = layer(x)
        _loss(y).backward()
        grads.append([x.grad, y.detach()] + [p.grad for p in layer.parameters()])
        assert bool(layer.state.sensitivity) == collect
    for without, with_collection in zip(*grads, strict=True):
        torch.testing.assert_close(with_collection, without, rtol=0, atol=0)


def test_first_layer_collects_without_any_grad_upstream() -> None:
    first = _layer(seed=2)
    for p in first.parameters():
        p.requires_grad_(False)  # neither the input nor this layer's parameters need grad
    torch.manual_seed(3)
    head = nn.Linear(5, 1)
    first.state.bits["node"], first.state.collect = _row_bits(10, seed=1), True
    x = _swish_rows(10, 6, seed=1)
    head(first(x)).sum().backward()
    sensitivity = first.state.sensitivity["node"]
    assert sensitivity.shape == (10,) and (sensitivity > 0).all()
    assert head.weight.grad is not None and x.grad is None


def test_collect_before_calibration_is_an_error() -> None:
    layer = AdaptiveQuantLinear(nn.Linear(6, 5), name="lin", domain="node", bits=BITS, state=BitState())
    layer.state.bits["node"], layer.state.collect = _row_bits(4), True
    with pytest.raises(RuntimeError, match="calibrat"):
        layer(torch.randn(4, 6))


def test_layer_bits_override_and_bad_bits() -> None:
    layer = _layer()
    x = _swish_rows(12, 6, seed=10)
    with torch.no_grad():
        layer.state.layer_bits = {"lin": 4}  # no state.bits needed
        overridden = layer(x)
        layer.state.layer_bits = None
        layer.state.bits["node"] = torch.full((12,), 4)
        torch.testing.assert_close(overridden, layer(x))
        layer.state.layer_bits = {"lin": 5}
        with pytest.raises(ValueError, match="not one of its options"):
            layer(x)
        layer.state.layer_bits = {"other_layer": 3}
        for bits, match in [(torch.full((11,), 4), "12 rows"), (torch.full((12,), 5), "outside the options")]:
            layer.state.bits["node"] = bits
            with pytest.raises(ValueError, match=match):
                layer(x)
        del layer.state.bits["node"]
        with pytest.raises(ValueError, match="no row bit-widths for domain 'node'"):
            layer(x)


def test_cost_and_construction_checks() -> None:
    layer = _layer()
    assert layer.macs_per_row == 30
    cost = layer.cost()
    assert (cost.name, cost.domain, cost.in_features, cost.out_features, cost.weight_bits) == ("lin", "node", 6, 5, 8)
    with pytest.raises(ValueError, match="domain"):
        AdaptiveQuantLinear(nn.Linear(2, 2), name="x", domain="face", bits=BITS, state=BitState())
    with pytest.raises(ValueError, match="sorted"):
        AdaptiveQuantLinear(nn.Linear(2, 2), name="x", domain="node", bits=(4, 3), state=BitState())


def test_gathered_edge_rows_match_the_plain_concatenation() -> None:
    """``gathered`` (node rows fake-quantized once per bucket, then gathered) against the layer on the
    concatenated rows: the same values, input gradients, parameter gradients and sensitivities."""
    torch.manual_seed(0)
    n, e = 40, 300
    edge_index = torch.randint(0, n, (2, e))
    h, rest = _swish_rows(n, 8, seed=1), _swish_rows(e, 3, seed=2)
    calibration = torch.cat([h[edge_index[1]], h[edge_index[0]], rest], -1)
    layer = AdaptiveQuantLinear(nn.Linear(19, 5), name="edge_lin", domain="edge", bits=BITS, state=BitState())
    with torch.no_grad(), calibration_mode(layer):
        layer(calibration)
    layer.train()
    layer.state.bits["edge"], layer.state.collect = _row_bits(e, seed=3), True
    upstream = torch.randn(e, 5)
    results = []
    for gathered in (False, True):
        layer.zero_grad()
        layer.state.reset_sensitivity()
        hi, ri = h.clone().requires_grad_(True), rest.clone().requires_grad_(True)
        if gathered:
            y = layer.gathered(hi, (edge_index[1], edge_index[0]), ri)
        else:
            y = layer(torch.cat([hi[edge_index[1]], hi[edge_index[0]], ri], -1))
        (y * upstream).sum().backward()
        params = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
        results.append((y.detach(), hi.grad, ri.grad, params, layer.state.sensitivity["edge"].clone()))
    (y0, gh0, gr0, p0, s0), (y1, gh1, gr1, p1, s1) = results
    assert torch.equal(y1, y0)
    assert torch.equal(gr1, gr0)
    torch.testing.assert_close(gh1, gh0, rtol=1e-6, atol=1e-7)  # the same sums in another order
    torch.testing.assert_close(s1, s0, rtol=1e-6, atol=0)
    assert p0.keys() == p1.keys() and p0
    for name in p0:
        torch.testing.assert_close(p1[name], p0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_input_ulp_noise_moves_every_input_one_ulp_inside_only() -> None:
    layer = _layer().eval()
    x = _swish_rows(200, 6, seed=4)
    layer.state.bits["node"] = _row_bits(200, seed=4)
    with torch.no_grad():
        clean = layer(x)
        with input_ulp_noise(layer, seed=1):
            noisy = layer(x)
            nudged = layer._nudge(x)
        after = layer(x)
    ulps = (nudged.view(torch.int32).long() - x.view(torch.int32).long()).abs()
    assert int(ulps.max()) == 1 and bool((nudged != x).all())  # every element, exactly one ulp
    assert bool((nudged > x).any()) and bool((nudged < x).any())
    assert layer.ulp_noise is None and torch.equal(layer._nudge(x), x) and torch.equal(after, clean)
    torch.testing.assert_close(noisy, clean, rtol=0.5, atol=0.5)  # at most a few flipped roundings


def test_gathered_linear_keeps_forward_hooks_seeing_the_concatenated_rows() -> None:
    from amq_export.models.gathered_linear import gathered_linear

    n, e = 10, 30
    edge_index = torch.randint(0, n, (2, e), generator=torch.Generator().manual_seed(0))
    h, rest = _swish_rows(n, 8, seed=1), _swish_rows(e, 3, seed=2)
    layer = AdaptiveQuantLinear(nn.Linear(19, 5), name="edge_lin", domain="edge", bits=BITS, state=BitState())
    with torch.no_grad(), calibration_mode(layer):
        layer(torch.cat([h[edge_index[1]], h[edge_index[0]], rest], -1))
    layer.state.bits["edge"] = _row_bits(e, seed=3)
    seen = []
    layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    with torch.no_grad():
        hooked = gathered_linear(layer, h, (edge_index[1], edge_index[0]), rest)
    assert seen == [torch.Size([e, 19])]
    with torch.no_grad():
        torch.testing.assert_close(hooked, layer.gathered(h, (edge_index[1], edge_index[0]), rest))
