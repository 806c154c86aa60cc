"""Run an exported mesh model in ONNX Runtime (CPU by default): feeds by input name, thread control,
saving the graph as ONNX Runtime optimizes it.

Threads: ONNX Runtime's CPU ``ScatterND`` with a reduction (the scatter-add that sums messages into nodes,
``passes/onnx/scatter_add_rows.py``) splits its updates over the intra-op threads and adds them without
synchronisation, so rows that two threads update at once lose updates (onnxruntime 1.32, measured: at 2
intra-op threads the float, uniform int8 and AMQ MP-PDE graphs on a 50k-node mesh gave predictions 26-32%
(relative L2) away from their 1-thread outputs, different on every run; one ``ScatterND`` over 300k random
targets lost updates on every run). A graph with such a node therefore runs its kernels on one intra-op thread;
more threads run independent nodes side by side (ONNX Runtime's parallel executor, ``inter_op_num_threads``),
which is correct. ``intra_op_scatter=True`` overrides this, to measure the race, never to deploy. Graphs
exported with AMQ's kernels (``runtimes/onnxruntime/kernels``) sum messages with ``amq.ort.ScatterAddRows``,
which is correct on intra-op threads: they run on as many as asked.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from amq_export.amq.inference_model import INTEGER_INPUTS
from amq_export.errors import AMQError
from runtimes.onnxruntime import kernels

META_KEY = "amq.meta"
ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.InvalidProtobuf,
              ort_state.NoSuchFile, ort_state.NotImplemented, ort_state.RuntimeException)
_LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
           "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
           "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def read_meta(model: onnx.ModelProto) -> dict[str, Any]:
    """The ``amq.meta`` JSON an exported model carries (empty if it has none)."""
    return next((json.loads(p.value) for p in model.metadata_props if p.key == META_KEY), {})


def session_options(threads: int | None = None, optimization: str = "all",
                    inter_op: bool = False) -> ort.SessionOptions:
    """Options for ``threads`` intra-op threads (None: ONNX Runtime's default, one per core), or with
    ``inter_op``, one intra-op thread and ``threads`` threads running independent nodes side by side."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.log_severity_level = 3
    if inter_op:
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = threads or 1
        if (threads or 1) > 1:
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    elif threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def threading_of(options: ort.SessionOptions) -> str:
    """What ``options`` run on, in words (for reports)."""
    if options.execution_mode == ort.ExecutionMode.ORT_PARALLEL:
        return f"{options.inter_op_num_threads} threads, parallel executor (1 intra-op thread: ScatterND reductions)"
    if options.intra_op_num_threads:  # 0: ONNX Runtime's default
        return f"{options.intra_op_num_threads} intra-op thread(s)"
    return "ONNX Runtime's default intra-op threads"


def racy_scatters(model: onnx.ModelProto) -> list[str]:
    """Nodes of ``model``'s main graph that ONNX Runtime's CPU kernels compute wrongly on several intra-op
    threads: ``ScatterND`` with a reduction (see the module docstring)."""
    def reduction(node: onnx.NodeProto) -> str:
        return next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")

    return [node.name or node.output[0] for node in model.graph.node
            if node.op_type == "ScatterND" and node.domain in ("", "ai.onnx") and reduction(node) != "none"]


def scatter_nd_model(reduction: str = "add", columns: int = 64) -> onnx.ModelProto:
    """The smallest graph with a message sum: ``ScatterND(data [N, columns], index [E, 1], updates [E, columns])``
    (node ``sum``), the probe of the race above (``benchmarks/ort_scatter_race.py``, the tests)."""
    from onnx import TensorProto, helper

    rows = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, columns])
            for name in ("data", "updates", "out")}
    index = helper.make_tensor_value_info("index", TensorProto.INT64, [None, 1])
    node = helper.make_node("ScatterND", ["data", "index", "updates"], ["out"], name="sum", reduction=reduction)
    graph = helper.make_graph([node], "scatter_nd", [rows["data"], index, rows["updates"]], [rows["out"]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


class OrtModel:
    """One exported model in one ONNX Runtime session; ``run(mesh, budget)`` -> ``{output name: array}``."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, optimization: str = "all",
                 providers: list[str] | None = None, profile_prefix: str | None = None,
                 intra_op_scatter: bool = False) -> None:
        """``threads``: how many threads the session uses (None: ONNX Runtime's default, one per core; a graph
        with ``racy_scatters``: 1); for such a graph, more than one means the parallel executor, unless
        ``intra_op_scatter`` (intra-op threads, wrong sums: for measuring the race only). ``threading`` says
        which. ``profile_prefix``: turn on ONNX Runtime's profiler (``session.end_profiling()`` writes the trace)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise AMQError(f"ONNX model {self.path} does not exist; export one with amq-export MODEL.pt --target onnx")
        try:
            graph = onnx.load(str(self.path), load_external_data=False)
        except (DecodeError, OSError, ValueError) as exc:
            raise AMQError(f"ONNX Runtime cannot load {self.path} ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
                           "re-export it with amq-export") from None
        inter_op = bool(racy_scatters(graph)) and not intra_op_scatter
        options = session_options(threads, optimization, inter_op=inter_op)
        if kernels.uses_kernels(graph):
            kernels.register(options)
        self.threading = threading_of(options)
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except ORT_ERRORS as exc:
            raise AMQError(f"ONNX Runtime cannot load {self.path} ({str(exc).splitlines()[0]}); "
                           "re-export it with amq-export") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        self.meta: dict[str, Any] = json.loads(meta) if meta else {}
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, mesh: Any, budget: float | None = None) -> dict[str, np.ndarray]:
        """Inputs for ``mesh`` (any object with the input names as tensor or array attributes)."""
        feeds = {}
        for name in self.input_names:
            if name == "budget":
                if budget is None:
                    budget = self.meta.get("budget")
                if budget is None:
                    raise AMQError(f"{self.path.name} needs a budget: pass --budget")
                feeds[name] = np.asarray(budget, dtype=np.float32)
                continue
            value = getattr(mesh, name, None)
            if value is None:
                raise AMQError(f"{self.path.name} needs input {name!r}, which the data does not have: "
                               f"give meshes with fields {', '.join(self.input_names)}")
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            feeds[name] = array.astype(np.int64 if name in INTEGER_INPUTS else np.float32, copy=False)
        return feeds

    def run(self, mesh: Any, budget: float | None = None) -> dict[str, np.ndarray]:
        return self.run_feeds(self.feeds(mesh, budget))

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds), strict=True))


def save_optimized(model: onnx.ModelProto, path: str | os.PathLike[str], optimization: str = "extended") -> Path:
    """Save ``model`` as ONNX Runtime's CPU provider optimizes it at ``optimization`` level
    (``extended``: fusions that stay portable across CPUs), written atomically."""
    path = Path(path)
    fd, target = tempfile.mkstemp(suffix=".onnx", dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        options = session_options(optimization=optimization)
        if kernels.uses_kernels(model):
            kernels.register(options)
        options.optimized_model_filepath = target
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        os.replace(target, path)
    finally:
        Path(target).unlink(missing_ok=True)
    return path
