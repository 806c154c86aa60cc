"""The fused activation fake quantization: Brevitas' values bit for bit and its gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from brevitas.graph.calibrate import calibration_mode
from brevitas.nn import QuantIdentity
from brevitas.quant import ShiftedUint8ActPerTensorFloat

from amq_export.amq.fake_quant import FusedIntQuant, fuse_activation_quant, row_fake_quant


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fused_matches_brevitas_values_and_gradients(bits):
    torch.manual_seed(bits)
    reference = QuantIdentity(act_quant=ShiftedUint8ActPerTensorFloat, bit_width=bits, return_quant_tensor=False)
    with torch.no_grad(), calibration_mode(reference):  # as quantize() does: statistics, then learned parameters
        reference(torch.randn(256, 16) * 2)
    reference.train()
    fused = copy.deepcopy(reference)
    fuse_activation_quant(fused)
    assert isinstance(fused.act_quant.fused_activation_quant_proxy.tensor_quant.int_quant, FusedIntQuant)
    x = torch.randn(500, 16) * 3  # well outside the calibrated range on both sides
    x[:5] = 0.0
    upstream = torch.randn(500, 16)
    outputs = {}
    for name, module in (("reference", reference), ("fused", fused)):
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        (y * upstream).sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        outputs[name] = (y.detach(), xi.grad, grads)
    (y_ref, gx_ref, gp_ref), (y_fused, gx_fused, gp_fused) = outputs["reference"], outputs["fused"]
    assert torch.equal(y_ref, y_fused)
    # Brevitas' chain gives (g * s) / s, one rounding away from g; the fused backward gives g
    torch.testing.assert_close(gx_fused, gx_ref, rtol=1e-6, atol=0)
    assert gp_ref.keys() == gp_fused.keys() and gp_ref
    for name in gp_ref:
        torch.testing.assert_close(gp_fused[name], gp_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_row_fake_quant_matches_each_bucket_quantizer_on_its_rows():
    torch.manual_seed(0)
    quants = torch.nn.ModuleList(
        QuantIdentity(act_quant=ShiftedUint8ActPerTensorFloat, bit_width=b, return_quant_tensor=False) for b in (2, 4, 8))
    with torch.no_grad(), calibration_mode(quants):
        for quant in quants:
            quant(torch.randn(256, 16) * 2)
    quants.train()
    for quant in quants:
        fuse_activation_quant(quant)
    x = torch.randn(600, 16) * 3
    row_bucket = torch.randint(0, 3, (600,))
    row_bucket[:50] = 1  # and an empty bucket below
    row_bucket[row_bucket == 2] = 0
    upstream = torch.randn(600, 16)
    outputs = {}
    for name in ("per_bucket", "rows"):
        quants.zero_grad()
        xi = x.clone().requires_grad_(True)
        if name == "rows":
            y = row_fake_quant(quants, xi, row_bucket)
        else:
            y = torch.empty_like(x)
            for k, quant in enumerate(quants):
                rows = (row_bucket == k).nonzero().squeeze(1)
                if rows.numel():
                    y = y.index_put((rows,), quant(xi.index_select(0, rows)))
        (y * upstream).sum().backward()
        grads = {n: p.grad.clone() for n, p in quants.named_parameters() if p.grad is not None}
        outputs[name] = (y.detach(), xi.grad, grads)
    (y_ref, gx_ref, gp_ref), (y_rows, gx_rows, gp_rows) = outputs["per_bucket"], outputs["rows"]
    assert torch.equal(y_rows, y_ref)  # bit for bit
    assert torch.equal(gx_rows, gx_ref)
    assert gp_ref and set(gp_ref) <= set(gp_rows)  # the empty bucket's parameters get zero gradients
    for name, grad in gp_rows.items():
        torch.testing.assert_close(grad, gp_ref.get(name, torch.zeros_like(grad)), rtol=1e-4, atol=1e-6, msg=name)
