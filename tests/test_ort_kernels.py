"""AMQ's ONNX Runtime kernels (``runtimes/onnxruntime/kernels``) and the rules that use them
(``passes/onnx/amq_ort_kernels.py``): each op computes what the standard ops it replaces compute, bit for
bit, on one and two intra-op threads; exported models keep their predictions; the build's errors are clear.
The tests that run the library skip where it is not built (``make kernels``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h

from amq_export.data.mesh_data import MeshData
from amq_export.errors import AMQError
from amq_export.exporter import export
from passes.onnx import apply_rules
from runtimes.onnxruntime import OrtModel, kernels, save_optimized

built = pytest.mark.skipif(not kernels.available(), reason="AMQ's ONNX Runtime kernels are not built "
                                                           "(make kernels)")


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid(kernels.DOMAIN, 1)])


def _session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if kernels.uses_kernels(model):
        kernels.register(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _quantize_graph(slice_rows: bool, clip: bool, columns: int = 37) -> onnx.ModelProto:
    """What a bucket segment's quantization lowers to: [Clip(]QuantizeLinear([Slice(]x[)])[)]."""
    nodes, source = [], "x"
    if slice_rows:
        nodes.append(h.make_node("Slice", ["x", "start", "end", "axes"], ["rows"]))
        source = "rows"
    nodes.append(h.make_node("QuantizeLinear", [source, "scale", "zero_point"], ["q" if clip else "y"]))
    if clip:
        nodes.append(h.make_node("Clip", ["q", "low", "high"], ["y"]))
    inits = [h.make_tensor("axes", T.INT64, [1], [0]), h.make_tensor("scale", T.FLOAT, [], [0.25]),
             h.make_tensor("zero_point", T.UINT8, [], [7]), h.make_tensor("low", T.UINT8, [], [0]),
             h.make_tensor("high", T.UINT8, [], [15])]
    inputs = [h.make_tensor_value_info("x", T.FLOAT, ["n", columns]),
              h.make_tensor_value_info("start", T.INT64, [1]), h.make_tensor_value_info("end", T.INT64, [1])]
    return _model(nodes, inputs if slice_rows else inputs[:1], [h.make_tensor_value_info("y", T.UINT8, None)],
                  [i for i in inits if slice_rows or i.name != "axes"])


def _quantize_feeds(rows: int, columns: int = 37, start: int = 5, end: int = 900) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, columns)) * 3).astype(np.float32)
    x.reshape(-1)[: x.size // 2] = np.round(x.reshape(-1)[: x.size // 2] * 8) / 8  # many exact halves of a step
    return {"x": x, "start": np.array([start], np.int64), "end": np.array([end], np.int64)}


@built
@pytest.mark.parametrize(("slice_rows", "clip"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_quantize_rows_is_slice_quantize_clip_bit_for_bit(slice_rows, clip, threads):
    model = _quantize_graph(slice_rows, clip)
    rewritten, changes = apply_rules(model, "ort-kernels")
    assert changes["QuantizeRows"] == 1 and changes["QuantizeLinear"] == -1
    assert not {"Slice", "Clip", "QuantizeLinear"} & {n.op_type for n in rewritten.graph.node}
    for rows, start, end in ((3000, 5, 2900), (3000, -10, 10**9), (3000, 2000, 1000), (0, 0, 5)):
        feeds = _quantize_feeds(rows, start=start, end=end)
        feeds = feeds if slice_rows else {"x": feeds["x"]}
        expected = _session(model).run(None, feeds)[0]
        got = _session(rewritten, threads).run(None, feeds)[0]
        assert got.shape == expected.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


_EVERY_PATH = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_ort_kernels import _quantize_feeds, _quantize_graph, _session
from onnx import numpy_helper
from passes.onnx import apply_rules

model = _quantize_graph(slice_rows=True, clip=True, columns=67)
scale = next(i for i in model.graph.initializer if i.name == "scale")
scale.CopyFrom(numpy_helper.from_array(np.array(0.0137, np.float32), "scale"))  # not a power of two
feeds = _quantize_feeds(4000, columns=67, start=3, end=3990)
feeds["x"] *= 0.01
expected = _session(model).run(None, feeds)[0]
got = _session(apply_rules(model, "ort-kernels")[0]).run(None, feeds)[0]
print(int((got != expected).sum()), expected.size)
"""


@built
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_every_vector_path_quantizes_alike(isa, tmp_path):
    """Each of QuantizeRows' paths (capped by $AMQ_ORT_KERNELS_ISA, in a fresh process: the library reads it
    when it loads) gives ONNX Runtime's integers, with a scale whose reciprocal is inexact and odd widths."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "paths.py"
    script.write_text(_EVERY_PATH.format(tests=str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False,
                          env={**os.environ, "AMQ_ORT_KERNELS_ISA": isa})
    assert done.returncode == 0, done.stderr[-2000:]
    mismatches, total = map(int, done.stdout.split()[-2:])
    assert mismatches == 0 and total == 3987 * 67


def test_a_lone_quantize_linear_is_left_alone():
    """One pass already: nothing to fuse, and the standard kernel is as fast."""
    assert apply_rules(_quantize_graph(slice_rows=False, clip=False), "ort-kernels")[1] == {}


def _scatter_graph(index_columns: int = 1, columns: int = 40) -> onnx.ModelProto:
    """Two message sums in a row into one accumulator (two bucket segments), as the exported graphs do."""
    nodes = [h.make_node("ScatterND", ["data", "i0", "u0"], ["a"], reduction="add"),
             h.make_node("ScatterND", ["a", "i1", "u1"], ["y"], reduction="add")]
    rows = {name: h.make_tensor_value_info(name, T.FLOAT, [dim, columns])
            for name, dim in (("data", "n"), ("u0", "e0"), ("u1", "e1"))}
    index = [h.make_tensor_value_info(name, T.INT64, [dim, index_columns]) for name, dim in (("i0", "e0"), ("i1", "e1"))]
    inputs = [rows["data"], index[0], rows["u0"], index[1], rows["u1"]]
    return _model(nodes, inputs, [h.make_tensor_value_info("y", T.FLOAT, ["n", columns])])


@built
@pytest.mark.parametrize("threads", [1, 2])
def test_scatter_add_rows_sums_every_update_in_edge_order(threads):
    """Bit for bit ScatterND's sums (each row's updates added in edge order), also on two intra-op threads,
    where ONNX Runtime's own ScatterND loses updates; negative indices count from the end; the input
    accumulator is left as it was."""
    model = _scatter_graph()
    rewritten, changes = apply_rules(model, "ort-kernels")
    assert changes == {"ScatterND": -2, "ScatterAddRows": 2}
    rng = np.random.default_rng(0)
    n, edges = 5000, 60_000
    index = rng.integers(-n, n, (edges, 1))
    feeds = {"data": rng.standard_normal((n, 40)).astype(np.float32), "i0": index[:50_000], "i1": index[50_000:],
             "u0": rng.standard_normal((50_000, 40)).astype(np.float32),
             "u1": rng.standard_normal((10_000, 40)).astype(np.float32)}
    data = feeds["data"].copy()
    expected = data.copy()
    np.add.at(expected, index[:50_000, 0], feeds["u0"])
    np.add.at(expected, index[50_000:, 0], feeds["u1"])
    session = _session(rewritten, threads)
    for _ in range(3):
        np.testing.assert_array_equal(session.run(None, feeds)[0], expected)
    np.testing.assert_array_equal(feeds["data"], data)
    np.testing.assert_array_equal(_session(model).run(None, feeds)[0], expected)  # ScatterND on one thread


@built
def test_scatter_add_rows_rejects_an_index_out_of_range():
    session = _session(apply_rules(_scatter_graph(), "ort-kernels")[0])
    feeds = {"data": np.zeros((4, 40), np.float32), "i0": np.array([[1], [4]]), "u0": np.ones((2, 40), np.float32),
             "i1": np.zeros((0, 1), np.int64), "u1": np.zeros((0, 40), np.float32)}
    with pytest.raises(Exception, match="index 4 is out of range for 4 rows"):
        session.run(None, feeds)


def _gathered_scatter_graph() -> onnx.ModelProto:
    """A message sum of gathered node rows (the auxiliary GNN's): ScatterND(data, index, Gather(rows, source))."""
    nodes = [h.make_node("Gather", ["rows", "source"], ["messages"], axis=0),
             h.make_node("ScatterND", ["data", "index", "messages"], ["y"], reduction="add")]
    inputs = [h.make_tensor_value_info("data", T.FLOAT, ["n", 8]), h.make_tensor_value_info("index", T.INT64, ["e", 1]),
              h.make_tensor_value_info("rows", T.FLOAT, ["m", 8]), h.make_tensor_value_info("source", T.INT64, ["e"])]
    return _model(nodes, inputs, [h.make_tensor_value_info("y", T.FLOAT, ["n", 8])])


@built
@pytest.mark.parametrize("threads", [1, 2])
def test_scatter_add_of_gathered_rows_reads_them_in_place(threads):
    model = _gathered_scatter_graph()
    rewritten, changes = apply_rules(model, "ort-kernels")
    assert changes == {"Gather": -1, "ScatterND": -1, "ScatterAddRows": 1}
    rng = np.random.default_rng(1)
    feeds = {"data": rng.standard_normal((3000, 8)).astype(np.float32), "index": rng.integers(-3000, 3000, (40_000, 1)),
             "rows": rng.standard_normal((2000, 8)).astype(np.float32), "source": rng.integers(-2000, 2000, 40_000)}
    expected = feeds["data"].copy()
    np.add.at(expected, feeds["index"][:, 0], feeds["rows"][feeds["source"]])
    np.testing.assert_array_equal(_session(rewritten, threads).run(None, feeds)[0], expected)
    np.testing.assert_array_equal(_session(model).run(None, feeds)[0], expected)
    feeds["source"][7] = 2000
    with pytest.raises(Exception, match="source 2000 is out of range for 2000 rows"):
        _session(rewritten, threads).run(None, feeds)


def _vector_scatter_graph(dtype: int, reduction: str) -> onnx.ModelProto:
    """ScatterElements on vectors, as the in-degree counts (float sums) and the bucket sort (int64 writes) lower."""
    nodes = [h.make_node("ScatterElements", ["data", "index", "updates"], ["y"], axis=0, reduction=reduction)]
    inputs = [h.make_tensor_value_info("data", dtype, ["n"]), h.make_tensor_value_info("index", T.INT64, ["m"]),
              h.make_tensor_value_info("updates", dtype, ["m"])]
    return _model(nodes, inputs, [h.make_tensor_value_info("y", dtype, ["n"])])


@built
@pytest.mark.parametrize("threads", [1, 2])
def test_vector_sums_add_in_index_order(threads):
    """Float vector scatter-adds (in-degree counts) run as ScatterAddRows on [N, 1] views: the same sums, bit for
    bit, on one and two threads; negative indices count from the end; the input is left as it was."""
    model = _vector_scatter_graph(T.FLOAT, "add")
    rewritten, changes = apply_rules(model, "ort-kernels")
    assert changes["ScatterElements"] == -1 and changes["ScatterAddRows"] == 1
    rng = np.random.default_rng(2)
    feeds = {"data": rng.standard_normal(3001).astype(np.float32), "index": rng.integers(-3001, 3001, 50_000),
             "updates": rng.standard_normal(50_000).astype(np.float32)}
    data = feeds["data"].copy()
    expected = data.copy()
    np.add.at(expected, feeds["index"], feeds["updates"])
    session = _session(rewritten, threads)
    for _ in range(2):
        got = session.run(None, feeds)[0]
        assert got.shape == (3001,)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(_session(model).run(None, feeds)[0], expected)
    np.testing.assert_array_equal(feeds["data"], data)


@built
def test_vector_writes_are_scatter_elements_bit_for_bit():
    """int64 vector writes (the bucket sort's inverse permutations) run as ScatterValues: the values ScatterElements
    writes, a later write to the same place winning, negatives from the end; out of range is an error."""
    model = _vector_scatter_graph(T.INT64, "none")
    rewritten, changes = apply_rules(model, "ort-kernels")
    assert changes == {"ScatterElements": -1, "ScatterValues": 1}
    rng = np.random.default_rng(3)
    permutation = {"data": np.zeros(40_000, np.int64), "index": rng.permutation(40_000) - 20_000,
                   "updates": np.arange(40_000, dtype=np.int64)}
    repeated = {"data": rng.integers(0, 9, 500), "index": np.array([3, 3, -1, 499, 0]),
                "updates": np.array([7, 8, 9, 10, 11])}
    for feeds in (permutation, repeated):
        expected = _session(model).run(None, feeds)[0]
        np.testing.assert_array_equal(_session(rewritten).run(None, feeds)[0], expected)
    assert list(_session(rewritten).run(None, repeated)[0][[0, 3, 499]]) == [11, 8, 10]
    repeated["index"][1] = 500
    with pytest.raises(Exception, match="index 500 is out of range for 500"):
        _session(rewritten).run(None, repeated)


def test_scatters_the_kernels_do_not_cover_are_left_alone():
    """Other element types or reductions stay ScatterElements (float64 sums, int64 sums, float writes)."""
    for dtype, reduction in ((T.DOUBLE, "add"), (T.INT64, "add"), (T.FLOAT, "none"), (T.FLOAT, "mul")):
        assert apply_rules(_vector_scatter_graph(dtype, reduction), "ort-kernels")[1] == {}


def test_element_scatters_are_left_alone():
    """An index with two columns addresses elements, not rows: not this kernel's."""
    assert apply_rules(_scatter_graph(index_columns=2), "ort-kernels")[1] == {}


@pytest.fixture(scope="module")
def exports(tiny, qmodel_factory, tmp_path_factory):
    """A tiny MP-PDE and GraphViT exported for ``ort`` with and without the kernels (MP-PDE through
    ``export(ort_kernels=True)``; GraphViT, whose export takes half a minute, by the same rules applied to
    its standard export)."""
    if not kernels.available():
        pytest.skip("AMQ's ONNX Runtime kernels are not built (make kernels)")
    out = {}
    for arch in ("mppde", "graphvit"):
        qmodel = qmodel_factory(tiny, arch).eval()
        folder = tmp_path_factory.mktemp(arch)
        plain = export(qmodel, folder / "plain.onnx", example=tiny.test[0], target="ort")
        if arch == "mppde":
            fast = export(qmodel, folder / "kernels.onnx", example=tiny.test[0], target="ort", ort_kernels=True).optimized_path
        else:
            fast = save_optimized(apply_rules(onnx.load(str(plain.path)), "ort-kernels")[0], folder / "kernels.ort.onnx")
        out[arch] = (plain.optimized_path, fast)
    return tiny, out


@pytest.mark.parametrize("arch", ["mppde", "graphvit"])
def test_exported_models_with_kernels_predict_what_the_standard_ones_do(exports, arch):
    """Same bits, same predictions to the last bit on every test mesh and budget, at 1 and 2 intra-op
    threads; the kernels replace every segment slice, narrow-bucket clip and message sum."""
    data, by_arch = exports
    plain, fast = by_arch[arch]
    graph = onnx.load(str(fast)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QuantizeRows"] > 0 and ops["ScatterAddRows"] > 0 and ops["ScatterND"] == 0, ops
    producer = {out: node.op_type for node in graph.node for out in node.output}
    chains = [(producer.get(node.input[0]), node.op_type) for node in graph.node]
    assert ("Slice", "QuantizeLinear") not in chains and ("QuantizeLinear", "Clip") not in chains
    assert ops["MatMulIntegerToFloat"] == Counter(
        node.op_type for node in onnx.load(str(plain)).graph.node)["MatMulIntegerToFloat"]
    reference = OrtModel(plain, threads=1)
    for threads in (1, 2):
        runner = OrtModel(fast, threads=threads)
        assert runner.threading == f"{threads} intra-op thread(s)"
        for budget in (3.6, 4.5):
            for mesh in data.test:
                want, got = reference.run(mesh, budget), runner.run(mesh, budget)
                for name in want:
                    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_random_meshes_predict_alike_with_and_without_kernels(exports):
    """Meshes of 1 to 300 nodes and 0 to 2000 edges with duplicate edges, self loops and isolated nodes, at
    random budgets: the kernel graph (2 intra-op threads) gives the standard graph's outputs bit for bit."""
    plain, fast = exports[1]["mppde"]
    reference, runner = OrtModel(plain, threads=1), OrtModel(fast, threads=2)
    rng = np.random.default_rng(7)
    for case in range(12):
        n, e = int(rng.integers(1, 301)), (0 if case == 0 else int(rng.integers(0, 2001)))
        edge_index = rng.integers(0, n, (2, e))
        if e:
            edge_index = np.concatenate([edge_index, edge_index[:, : e // 3]], axis=1)  # duplicates
        mesh = MeshData(x=torch.randn(n, 1), pos=torch.rand(n, 2), edge_index=torch.from_numpy(edge_index),
                        node_type=torch.from_numpy(rng.integers(0, 2, n)))
        budget = float(rng.uniform(3.6, 5.9))
        want, got = reference.run(mesh, budget), runner.run(mesh, budget)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name}, case {case}")


def test_empty_meshes_run_with_kernels(exports):
    runner = OrtModel(exports[1]["mppde"][1], threads=2)
    empty = MeshData(x=torch.zeros(0, 1), pos=torch.zeros(0, 2), edge_index=torch.zeros(2, 0, dtype=torch.long),
                     node_type=torch.zeros(0, dtype=torch.long))
    assert runner.run(empty, 4.0)["pred"].shape == (0, 1)
    lonely = MeshData(x=torch.randn(5, 1), pos=torch.rand(5, 2), edge_index=torch.zeros(2, 0, dtype=torch.long),
                      node_type=torch.zeros(5, dtype=torch.long))
    assert np.isfinite(runner.run(lonely, 4.0)["pred"]).all()


def test_unbuilt_kernels_are_a_clear_error(monkeypatch, tmp_path, qmodel_factory, tiny):
    monkeypatch.setenv("AMQ_CACHE_DIR", str(tmp_path))
    assert not kernels.available()
    with pytest.raises(AMQError, match="make kernels"):
        export(qmodel_factory(tiny), tmp_path / "m.onnx", example=tiny.test[0], target="ort", ort_kernels=True)
    with pytest.raises(AMQError, match="--target ort only"):
        export(qmodel_factory(tiny), tmp_path / "m.onnx", example=tiny.test[0], target="onnx", ort_kernels=True)
    assert not list(tmp_path.glob("*.onnx"))


def test_headers_folder_must_hold_the_headers(monkeypatch, tmp_path):
    monkeypatch.setenv(kernels.HEADERS_ENV, str(tmp_path))
    with pytest.raises(AMQError, match="has no onnxruntime_cxx_api.h"):
        kernels.headers_dir()
    monkeypatch.delenv(kernels.HEADERS_ENV)
    with pytest.raises(AMQError, match="run `make kernels`"):
        kernels.headers_dir()
