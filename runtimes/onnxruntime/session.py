"""Run an exported mesh model in ONNX Runtime (CPU by default): feeds by input name, thread control,
saving the graph as ONNX Runtime optimizes it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from amq_export.amq.inference_model import INTEGER_INPUTS
from amq_export.errors import AMQError

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


def session_options(threads: int | None = None, optimization: str = "all") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OrtModel:
    """One exported model in one ONNX Runtime session; ``run(mesh, budget)`` -> ``{output name: array}``."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, optimization: str = "all",
                 providers: list[str] | None = None, profile_prefix: str | None = None) -> None:
        """``profile_prefix``: turn on ONNX Runtime's profiler (``session.end_profiling()`` writes the trace)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise AMQError(f"ONNX model {self.path} does not exist; export one with amq-export MODEL.pt --target onnx")
        options = session_options(threads, optimization)
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
        options.optimized_model_filepath = target
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        os.replace(target, path)
    finally:
        Path(target).unlink(missing_ok=True)
    return path
