"""The float computations of ``models/exact_float.py`` give the same float32 in PyTorch and in ONNX Runtime,
where the plain kernels do not."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper as h

from amq_export.models.exact_float import cos_sin


def _ort(nodes: list, x: np.ndarray) -> np.ndarray:
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, list(x.shape))],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_cos_sin_agree_with_onnx_runtime():
    freq = (2.0 ** np.arange(-3, 5) * np.pi).astype(np.float32)
    a = (np.random.default_rng(2).uniform(-1, 1, (50_000, 1)).astype(np.float32) * freq).reshape(-1)
    cos, sin = cos_sin(torch.from_numpy(a))
    for op, got in (("Cos", cos), ("Sin", sin)):
        nodes = [h.make_node("Cast", ["x"], ["xd"], to=T.DOUBLE), h.make_node(op, ["xd"], ["yd"]),
                 h.make_node("Cast", ["yd"], ["y"], to=T.FLOAT)]
        np.testing.assert_array_equal(got.numpy(), _ort(nodes, a))
        exact = getattr(np, op.lower())(a.astype(np.float64)).astype(np.float32)
        assert (got.numpy() != exact).mean() < 1e-4  # the correctly rounded float32, but for double roundings
