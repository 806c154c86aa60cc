"""ONNX rewrite: a row slice of gathered rows -> the rows gathered by a slice of the indices.

The first Linear of an edge MLP runs on ``[h[i], h[j], rest]``: two row gathers and the edge's own
columns, concatenated along the columns. On rows sorted by bucket it takes one segment at a time
(``exporter/onnx_lowering.py``), so it slices that E-row tensor into segments. Slicing the E-long
index vectors instead, before the gathers, moves 16 bytes per edge instead of the whole row, and the
slice of ``rest`` (itself a concatenation of segments) is then left to ``skip_segment_concat``.

Pattern::

    Slice(Concat(Gather(a, i), Gather(b, j), r, axis=1 or -1), start, end, axes=[0])

Check: the gathers take rows (axis 0) by 1-D indices (so the rows are rank 2), the slice is along the
rows, and every use of the concatenation is such a row slice, none a graph output (else the whole
tensor is built anyway). Rewrite: ``Concat(Gather(a, Slice(i, ...)), Gather(b, Slice(j, ...)),
Slice(r, ...), axis=-1)``: the same rows.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern


def _pattern(axis: int):  # the columns of rank-2 rows: axis 1, or -1 as torch.cat(..., -1) exports it
    def match(op, a, i, b, j, r, start, end, axes):
        rows = op.Concat(op.Gather(a, i, axis=0), op.Gather(b, j, axis=0), r, axis=axis, _outputs=["rows"])
        return op.Slice(rows, start, end, axes)
    return match


def _row_slice(node) -> bool:
    axes = node.inputs[3] if node.op_type == "Slice" and len(node.inputs) > 3 else None
    value = ir.convenience.get_const_tensor(axes) if axes is not None else None
    return value is not None and value.numpy().tolist() == [0]


def _check(context, a, i, b, j, r, start, end, axes, rows, **_) -> bool:
    if any(index.shape is None or len(index.shape) != 1 for index in (i, j)):
        return False
    return not rows.is_graph_output() and all(_row_slice(user) and user.inputs[0] is rows for user, _ in rows.uses())


def _rewrite(op, a, i, b, j, r, start, end, axes, **_):
    return op.Concat(op.Gather(a, op.Slice(i, start, end, axes), axis=0),
                     op.Gather(b, op.Slice(j, start, end, axes), axis=0),
                     op.Slice(r, start, end, axes), axis=-1)


# The concatenation feeds one slice per segment: keep it while the others still use it (unused nodes are
# dropped afterwards).
RULES = [pattern.RewriteRule(_pattern(axis), _rewrite, _check, name=f"SliceGatheredRows{axis}", remove_nodes=False)
         for axis in (1, -1)]
