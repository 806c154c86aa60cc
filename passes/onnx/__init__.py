"""ONNX-level rewrites, each a small rule (pattern, check, rewrite) in its own module, applied per target."""

from __future__ import annotations

from collections import Counter

import onnx
from onnxscript.rewriter import rewrite

from passes.onnx.fuse_matmul_integer_to_float import RULES as FUSE_MATMUL_INTEGER_TO_FLOAT
from passes.onnx.narrow_exact_sqrt import RULE as NARROW_EXACT_SQRT
from passes.onnx.scatter_add_rows import RULE as SCATTER_ADD_ROWS
from passes.onnx.skip_segment_concat import skip_segment_concat
from passes.onnx.slice_gathered_rows import RULES as SLICE_GATHERED_ROWS

# Every artifact (float ones too, so that comparisons stay fair) gets the "onnx" rules; graph passes
# that are not one pattern run after a target's rules.
RULES_BY_TARGET = {"onnx": [SCATTER_ADD_ROWS, *SLICE_GATHERED_ROWS, NARROW_EXACT_SQRT],
                   "ort": FUSE_MATMUL_INTEGER_TO_FLOAT}
PASSES_BY_TARGET = {"onnx": [skip_segment_concat], "ort": []}


def apply_rules(model: onnx.ModelProto, target: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with the rules and passes of ``target`` applied; returns it and the change in op counts."""
    rules, passes = RULES_BY_TARGET[target], PASSES_BY_TARGET[target]
    before = Counter(node.op_type for node in model.graph.node)
    if rules:
        model = rewrite(model, pattern_rewrite_rules=rules)
    for graph_pass in passes:
        model = graph_pass(model)
    after = Counter(node.op_type for node in model.graph.node)
    return model, {op: after[op] - before[op] for op in before | after if after[op] != before[op]}
