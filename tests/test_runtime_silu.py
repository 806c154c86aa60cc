"""ONNX Runtime's SiLU in PyTorch: the emulated logistic against the runtime's kernels, the pass that puts it
into quantized models, and its export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto as T
from onnx import helper as h
from torch import nn

from amq_export.amq.config import AMQConfig
from amq_export.amq.runtime_silu import RuntimeSiLU, runtime_activations, runtime_logistic
from passes import PassContext, RuntimeActivations


def _ort(nodes: list, x: np.ndarray) -> np.ndarray:
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n"])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["n"])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.standard_normal(400_000).astype(np.float32) * 4,
                           rng.uniform(-30, 30, 100_000).astype(np.float32),
                           np.array([0.0, -0.0, 18.0, -18.0, 1e-30, -1e-30, 40.0, -40.0], np.float32)])


def test_logistic_is_onnx_runtimes_sigmoid():
    x = _inputs()
    got = runtime_logistic(torch.from_numpy(x)).numpy()
    want = _ort([h.make_node("Sigmoid", ["x"], ["y"])], x)
    assert (got != want).sum() <= 1  # a float64 double rounding may miss one FMA in a few hundred million
    np.testing.assert_allclose(got, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=0, atol=2e-7)  # its accuracy


def test_silu_is_onnx_runtimes_fused_silu():
    x = _inputs()
    got = torch.ops.amq.runtime_silu(torch.from_numpy(x)).numpy()
    want = _ort([h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["x", "s"], ["y"])], x)
    np.testing.assert_array_equal(got, want)


def test_pass_swaps_silu_and_the_module_is_pytorchs_outside_the_context():
    model = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Sequential(nn.SiLU(), nn.ReLU())).eval()
    changes = RuntimeActivations().run(model, PassContext.from_config(AMQConfig()))
    assert isinstance(model[1], RuntimeSiLU) and isinstance(model[2][0], RuntimeSiLU)
    assert isinstance(model[2][1], nn.ReLU) and "2 SiLU" in changes[0]
    x = torch.randn(2000, 4) * 4
    with torch.no_grad():
        assert torch.equal(model[1](x), F.silu(x))
        with runtime_activations(model):
            assert torch.equal(model[1](x), torch.ops.amq.runtime_silu(x))
        assert not model[1].exact
    model.train()
    with runtime_activations(model):  # training and autograd keep PyTorch's SiLU
        assert torch.equal(model[1](x), F.silu(x))
