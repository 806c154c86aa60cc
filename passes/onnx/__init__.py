"""ONNX-level rewrites, each a small rule (pattern, check, rewrite) in its own module, applied per target."""

from __future__ import annotations

from collections import Counter

import onnx
from onnxscript.rewriter import rewrite

from passes.onnx.fuse_matmul_integer_to_float import RULES as FUSE_MATMUL_INTEGER_TO_FLOAT
from passes.onnx.scatter_add_rows import RULE as SCATTER_ADD_ROWS

# Every artifact (float ones too, so that comparisons stay fair) gets the "onnx" rules.
RULES_BY_TARGET = {"onnx": [SCATTER_ADD_ROWS], "ort": FUSE_MATMUL_INTEGER_TO_FLOAT}


def apply_rules(model: onnx.ModelProto, target: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with the rules of ``target`` applied; returns it and the change in op counts."""
    rules = RULES_BY_TARGET[target]
    if not rules:
        return model, {}
    before = Counter(node.op_type for node in model.graph.node)
    model = rewrite(model, pattern_rewrite_rules=rules)
    after = Counter(node.op_type for node in model.graph.node)
    return model, {op: after[op] - before[op] for op in before | after if after[op] != before[op]}
