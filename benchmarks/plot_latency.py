"""Plot the latency benchmark's JSON: median ms of float, uniform int8 and AMQ, one panel per thread count.

Reads ``benchmarks/results/latency.json`` (written by ``latency.py``, which also calls this) and writes a PNG
beside it: a bar per model at its median over all runs, a dot per fresh session (that session's median:
at 2 threads on this project's machines whole sessions run slow, and the dots show it), a cross at the
median on ONNX Runtime's intra-op threads where timed (for reference: their scatter-add loses updates), and the
two targets drawn where AMQ must stay under them (0.7x float, 1.15x uniform int8).

    python benchmarks/plot_latency.py
    python benchmarks/plot_latency.py --json /tmp/latency.json --out /tmp/latency.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import RESULTS

from amq_export.report import save_png

MODELS = ("float", "uniform_int8", "amq")
COLOURS = {"float": "#999999", "uniform_int8": "#444444", "amq": "#d62728"}
TARGETS = (("float", 0.7, "#1f77b4"), ("uniform_int8", 1.15, "#ff7f0e"))  # AMQ at most this times the model


def plot_latency(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per thread count in ``rows`` (``latency.json``'s list)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in rows})
    by = {(r["model"], r["threads"]): r for r in rows}
    fig, axes = plt.subplots(1, len(threads), figsize=(4.2 * len(threads), 4.2), constrained_layout=True,
                             squeeze=False)
    for ax, t in zip(axes[0], threads, strict=True):
        present = [m for m in MODELS if (m, t) in by]
        for x, model in enumerate(present):
            row = by[model, t]
            ax.bar(x, row["median_ms"], color=COLOURS[model], width=0.7)
            sessions = row.get("session_medians_ms") or []
            ax.plot([x + 0.18] * len(sessions), sessions, "o", color="black", markersize=3, alpha=0.7,
                    label="one session's median" if x == 0 else None)
            if "intra_op_median_ms" in row:  # ONNX Runtime's own threading, timed for reference: wrong sums
                ax.plot([x - 0.18], [row["intra_op_median_ms"]], "x", color="#d62728" if model != "amq" else "black",
                        markersize=6, label="intra-op threads (lost updates: wrong sums)" if x == 0 else None)
            label = f"{row['median_ms']:.0f} ms"
            if model == "amq" and "ratio_vs_uniform_int8" in row:
                label += f"\n\n{row['ratio_vs_uniform_int8']:.3f}x\nuniform int8\n\n{row['ratio_vs_float']:.2f}x\nfloat"
            ax.text(x, 0.5 * row["median_ms"], label, ha="center", va="center", fontsize=7, color="white")
        if "amq" in present:
            x = present.index("amq")
            for base, limit, colour in TARGETS:
                if (base, t) in by:
                    ax.hlines(limit * by[base, t]["median_ms"], x - 0.45, x + 0.45, colors=colour,
                              linestyles="--", linewidth=1.2, label=f"AMQ target: {limit:g}x {base.replace('_', ' ')}")
        ax.set_xticks(range(len(present)), [m.replace("_", " ") for m in present])
        ax.set_ylabel("ms per run (median)")
        nodes = by[present[0], t]["nodes"]
        executor = " (parallel executor)" if "parallel executor" in by[present[0], t].get("threading", "") else ""
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}{executor}, {nodes:,} nodes", fontsize=10)
        ax.set_ylim(0, 1.25 * max(max(r["median_ms"], *(r.get("session_medians_ms") or [0]))
                                  for (m, tt), r in by.items() if tt == t))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("ONNX Runtime latency, MP-PDE (float, uniform int8, AMQ (4, 8) at budget 5)", fontsize=10)
    return save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=RESULTS / "latency.json")
    parser.add_argument("--out", type=Path, default=None, help="the PNG (default: beside the JSON)")
    args = parser.parse_args()
    if not args.json.exists():
        parser.error(f"{args.json} does not exist: run benchmarks/latency.py first")
    print(f"wrote {plot_latency(json.loads(args.json.read_text()), args.out or args.json.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
