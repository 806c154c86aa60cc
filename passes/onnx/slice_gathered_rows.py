"""ONNX rewrites: a row slice of gathered rows -> the rows gathered by a slice of the indices.

The first Linear of an edge MLP runs on ``[h[i], h[j], rest]``: row gathers and the edge's own
columns, concatenated along the columns. On rows sorted by bucket it takes one segment at a time
(``exporter/onnx_lowering.py``), so it slices that E-row tensor into segments. Slicing the E-long
index vectors instead, before the gathers, moves 8 bytes per edge instead of the whole row. Two rules:

- ``SliceColumnConcat``: ``Slice(Concat(a, b, ..., axis=1 or -1), start, end, axes=[0])`` ->
  ``Concat(Slice(a, ...), Slice(b, ...), ..., axis=-1)``; check: every use of the concatenation is such
  a row slice, none a graph output (else the whole tensor is built anyway).
- ``SliceGather``: ``Slice(Gather(a, i, axis=0), start, end, axes=[0])`` -> ``Gather(a, Slice(i, ...))``;
  check: ``i`` is 1-D (so the gathered rows are whole rows of ``a``), and every use of the gather is such a
  row slice, none a graph output.

A slice of a concatenation of segments (the node rows gathered per bucket, ``amq::gather_bucket_rows``,
or the quantized ``rest``) is then left to ``skip_segment_concat``.
"""

from __future__ import annotations

import inspect

import onnx_ir as ir
from onnxscript.rewriter import pattern

MAX_COLUMN_PARTS = 4


def _rows_axis(axes) -> bool:
    value = ir.convenience.get_const_tensor(axes) if axes is not None else None
    return value is not None and value.numpy().tolist() == [0]


def _only_row_slices(value) -> bool:
    """Every use of ``value`` slices its rows (``Slice(value, start, end, axes=[0])``); none is a graph output."""
    return not value.is_graph_output() and all(
        user.op_type == "Slice" and user.inputs[0] is value and len(user.inputs) > 3 and _rows_axis(user.inputs[3])
        for user, _ in value.uses())


def _column_pattern(parts: int, axis: int):
    names = [f"c{p}" for p in range(parts)]

    def match(op, start, end, axes, *columns):
        return op.Slice(op.Concat(*columns, axis=axis, _outputs=["rows"]), start, end, axes)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD  # the rewriter names the pattern's inputs from the signature
    match.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in ["op", "start", "end", "axes", *names]])
    return match


def _column_check(context, axes, rows, **_) -> bool:
    return _rows_axis(axes) and _only_row_slices(rows)


def _column_rewrite(op, start, end, axes, rows, **columns):
    return op.Concat(*(op.Slice(columns[f"c{p}"], start, end, axes) for p in range(len(columns))), axis=-1)


def _gather_pattern(op, a, i, start, end, axes):
    return op.Slice(op.Gather(a, i, axis=0, _outputs=["rows"]), start, end, axes)


def _gather_check(context, a, i, axes, rows, **_) -> bool:
    return i.shape is not None and len(i.shape) == 1 and _rows_axis(axes) and _only_row_slices(rows)


def _gather_rewrite(op, a, i, start, end, axes, **_):
    return op.Gather(a, op.Slice(i, start, end, axes), axis=0)


# The concatenation (or gather) feeds one slice per segment: keep it while the others still use it (unused
# nodes are dropped after each sweep). The gathers' slices exist once the concatenations' are rewritten and
# the concatenations dropped: a second sweep.
COLUMN_RULES = [pattern.RewriteRule(_column_pattern(parts, axis), _column_rewrite, _column_check,
                                    name=f"SliceColumnConcat{parts}{axis}", remove_nodes=False)
                for parts in range(2, MAX_COLUMN_PARTS + 1) for axis in (1, -1)]
GATHER_RULES = [pattern.RewriteRule(_gather_pattern, _gather_rewrite, _gather_check, name="SliceGather",
                                    remove_nodes=False)]
