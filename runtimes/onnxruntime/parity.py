"""Parity of an exported model against its PyTorch source on the same meshes.

A quantized graph is not bit-exact across runtimes: a one-ulp difference (GEMM summation order,
a fused kernel's multiplication order, ONNX Runtime's sigmoid) now and then moves a value across a
rounding boundary, and that one flipped step of a 4-bit row moves a 64-node mesh's prediction by
~1e-3. So the bound is on the pooled relative L2 over all meshes; the worst mesh is reported beside it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def parity(pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]) -> dict[str, float]:
    """``pairs`` of (reference pred, exported pred, reference bits, exported bits) per mesh ->
    ``rel_l2`` (``||a - b|| / ||a||`` over all meshes together), ``rel_l2_worst_mesh``, ``max_abs``
    and ``bits_agreement`` (the fraction of nodes with the same bit-width)."""
    diff_sq = norm_sq = worst_rel = worst_abs = 0.0
    agree = total = 0
    for ref, out, ref_bits, out_bits in pairs:
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"prediction shapes differ: {ref.shape} vs {out.shape}")
        d, n = float(np.square(out - ref).sum()), float(np.square(ref).sum())
        diff_sq, norm_sq = diff_sq + d, norm_sq + n
        if ref.size:
            worst_rel = max(worst_rel, np.sqrt(d / n) if n > 0 else float(d > 0) * np.inf)
            worst_abs = max(worst_abs, float(np.abs(out - ref).max()))
        if ref_bits is not None and out_bits is not None:
            agree += int((np.asarray(ref_bits) == np.asarray(out_bits)).sum())
            total += int(np.asarray(ref_bits).size)
    rel = np.sqrt(diff_sq / norm_sq) if norm_sq > 0 else float(diff_sq > 0) * np.inf
    return {"rel_l2": float(rel), "rel_l2_worst_mesh": float(worst_rel), "max_abs": float(worst_abs),
            "bits_agreement": agree / total if total else 1.0}
