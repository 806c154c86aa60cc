"""ONNX rewrite: a row scatter-add written element by element -> one ``ScatterND`` over whole rows.

Message passing sums edge rows into node rows. PyTorch (and PyG's ``scatter``) export that as

    ScatterElements(data, Expand(index [E, 1], [E, H]), updates [E, H], axis=0, reduction="add")

with an int64 index per element. Check: the expanded index has shape [E, 1] (so every element of
a row goes to the same row). Rewrite: ``ScatterND(data, index, updates, reduction="add")``, which
adds whole rows: the same sums, E instead of E x H indices. Measured in ONNX Runtime on CPU, the
element-wise form was the largest single cost of every exported mesh model.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern


def _pattern(op, data, index, shape, updates):
    return op.ScatterElements(data, op.Expand(index, shape), updates, axis=0, reduction="add")


def _check(context, data, index, shape, updates, **_) -> bool:
    dims = index.shape
    return dims is not None and len(dims) == 2 and dims[1] == 1 and updates.shape is not None and len(
        updates.shape) == 2


def _rewrite(op, data, index, shape, updates, **_):
    return op.ScatterND(data, index, updates, reduction="add")


# The expanded index is often shared by several scatters: keep it (unused nodes are dropped afterwards).
RULE = pattern.RewriteRule(_pattern, _rewrite, _check, name="ScatterAddRows", remove_nodes=False)
