"""Threads in the ONNX Runtime backend: a graph with a reducing ``ScatterND`` (the message sum of every mesh
model) runs its kernels on one intra-op thread, extra threads as the parallel executor, and sums every update;
other graphs take intra-op threads as asked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from runtimes.onnxruntime import OrtModel
from runtimes.onnxruntime.session import racy_scatters, scatter_nd_model


def _scatter_model(path, reduction: str) -> None:
    onnx.save(scatter_nd_model(reduction), path)


def test_racy_scatters_are_the_reducing_scatter_nds(tmp_path) -> None:
    for reduction, expected in (("add", ["sum"]), ("none", [])):
        _scatter_model(tmp_path / "m.onnx", reduction)
        assert racy_scatters(onnx.load(tmp_path / "m.onnx")) == expected


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_scatter_add_sums_every_update_whatever_the_threads(tmp_path, threads) -> None:
    """300k updates of 64 values onto 50k rows in random order: on two intra-op threads ONNX Runtime 1.32 loses
    some (rows far off, differently on every run); the session here runs them on one and gets every sum."""
    _scatter_model(tmp_path / "m.onnx", "add")
    model = OrtModel(tmp_path / "m.onnx", threads=threads)
    assert model.threading.startswith("2 threads, parallel executor" if threads == 2 else "1 intra-op")
    rng = np.random.default_rng(0)
    index = rng.integers(0, 50_000, (300_000, 1))
    updates = rng.random((300_000, 64), dtype=np.float32) + 1
    expected = np.zeros((50_000, 64))
    np.add.at(expected, index[:, 0], updates)
    feeds = {"data": np.zeros((50_000, 64), np.float32), "index": index, "updates": updates}
    for _ in range(3):
        np.testing.assert_allclose(model.run_feeds(feeds)["out"], expected, rtol=1e-5)


def test_graphs_without_reducing_scatters_take_intra_op_threads(tmp_path) -> None:
    _scatter_model(tmp_path / "m.onnx", "none")
    assert OrtModel(tmp_path / "m.onnx", threads=2).threading == "2 intra-op thread(s)"
    _scatter_model(tmp_path / "m.onnx", "add")
    assert OrtModel(tmp_path / "m.onnx", threads=2, intra_op_scatter=True).threading == "2 intra-op thread(s)"
