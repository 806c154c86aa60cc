"""ONNX-level rewrites, each a small rule (pattern, check, rewrite) in its own module, applied per target."""

from __future__ import annotations

from collections import Counter

import onnx
from onnxscript.rewriter import rewrite

from passes.onnx.amq_ort_kernels import STEPS as AMQ_ORT_KERNELS
from passes.onnx.fuse_matmul_integer_to_float import RULES as FUSE_MATMUL_INTEGER_TO_FLOAT
from passes.onnx.narrow_exact_sqrt import RULE as NARROW_EXACT_SQRT
from passes.onnx.narrow_gather_scatter import RULES as NARROW_GATHER_SCATTER
from passes.onnx.scatter_add_rows import RULE as SCATTER_ADD_ROWS
from passes.onnx.skip_segment_concat import skip_segment_concat
from passes.onnx.slice_gathered_rows import COLUMN_RULES as SLICE_COLUMN_CONCAT
from passes.onnx.slice_gathered_rows import GATHER_RULES as SLICE_GATHER
from passes.onnx.uint8_weights import RULES as UINT8_WEIGHTS

# Every artifact (float ones too, so that comparisons stay fair) gets the "onnx" steps, in order: a list
# of rules is one rewrite sweep, a function a graph pass that is not one pattern. The narrow gathers go
# last: ``skip_segment_concat`` follows segment rows through the ``Gather`` ops they replace. Integer GEMMs take
# uint8 weights (``uint8_weights``: ONNX Runtime's uint8 x int8 kernel saturates on CPUs without VNNI).
# ``ort-kernels`` is the ``ort`` target with AMQ's ONNX Runtime kernel library (``runtimes/onnxruntime/kernels``).
STEPS_BY_TARGET = {"onnx": [[SCATTER_ADD_ROWS, *SLICE_COLUMN_CONCAT, NARROW_EXACT_SQRT], SLICE_GATHER,
                            skip_segment_concat, NARROW_GATHER_SCATTER, UINT8_WEIGHTS],
                   "ort": [FUSE_MATMUL_INTEGER_TO_FLOAT],
                   "ort-kernels": [*AMQ_ORT_KERNELS, FUSE_MATMUL_INTEGER_TO_FLOAT]}


def apply_rules(model: onnx.ModelProto, target: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with the steps of ``target`` applied; returns it and the change in op counts."""
    before = Counter(node.op_type for node in model.graph.node)
    for step in STEPS_BY_TARGET[target]:
        model = rewrite(model, pattern_rewrite_rules=step) if isinstance(step, list) else step(model)
    after = Counter(node.op_type for node in model.graph.node)
    return model, {op: after[op] - before[op] for op in before | after if after[op] != before[op]}
