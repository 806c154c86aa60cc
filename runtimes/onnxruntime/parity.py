"""Parity of an exported model against its PyTorch source on the same meshes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def parity(pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]) -> dict[str, float]:
    """``pairs`` of (reference pred, exported pred, reference bits, exported bits) per mesh ->
    ``rel_l2`` (worst mesh, ``||a - b|| / ||a||``), ``max_abs`` and ``bits_agreement`` (over all nodes)."""
    worst_rel = worst_abs = 0.0
    agree = total = 0
    for ref, out, ref_bits, out_bits in pairs:
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"prediction shapes differ: {ref.shape} vs {out.shape}")
        diff = np.linalg.norm(out - ref)
        norm = np.linalg.norm(ref)
        if ref.size:
            worst_rel = max(worst_rel, diff / norm if norm > 0 else float(diff > 0) * np.inf)
            worst_abs = max(worst_abs, float(np.abs(out - ref).max()))
        if ref_bits is not None and out_bits is not None:
            agree += int((np.asarray(ref_bits) == np.asarray(out_bits)).sum())
            total += int(np.asarray(ref_bits).size)
    return {"rel_l2": float(worst_rel), "max_abs": float(worst_abs),
            "bits_agreement": agree / total if total else 1.0}
