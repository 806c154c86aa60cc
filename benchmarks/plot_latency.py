"""Plot the latency benchmark's JSON: median ms of float, uniform int8 and AMQ, one panel per thread count.

Reads ``benchmarks/results/latency.json`` (written by ``latency.py``, which also calls this) and writes a PNG
beside it: a bar per model at its median over all runs, a dot per fresh session (that session's median:
at 2 threads on this project's machines whole sessions run slow, and the dots show it), a cross at the
median on ONNX Runtime's intra-op threads where timed (for reference: their scatter-add loses updates), and the
two targets drawn where AMQ must stay under them (0.7x float, 1.15x uniform int8); graphs with AMQ's
ONNX Runtime kernels, where timed, as a second (hatched) group judged against its own baselines.

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
    """One panel per thread count in ``rows`` (``latency.json``'s list): the standard graphs, then (hatched)
    those with AMQ's kernels where timed; each AMQ bar is judged against the baselines of its own group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in rows})
    by = {(r["model"], r.get("kernels", False), r["threads"]): r for r in rows}
    groups = sorted({r.get("kernels", False) for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(2.1 * len(groups) * 2 + 0.6, 4.6), constrained_layout=True,
                             squeeze=False)
    for ax, t in zip(axes[0], threads, strict=True):
        present = [(m, k) for k in groups for m in MODELS if (m, k, t) in by]
        for x, (model, kernels) in enumerate(present):
            row = by[model, kernels, t]
            ax.bar(x, row["median_ms"], color=COLOURS[model], width=0.7, hatch="//" if kernels else None,
                   edgecolor="white", label="with AMQ's kernels" if kernels and model == "float" else None)
            sessions = row.get("session_medians_ms") or []
            ax.plot([x + 0.18] * len(sessions), sessions, "o", color="black", markersize=3, alpha=0.7,
                    label="one session's median" if x == 0 else None)
            if "intra_op_median_ms" in row:  # ONNX Runtime's own threading, timed for reference: wrong sums
                ax.plot([x - 0.18], [row["intra_op_median_ms"]], "x", color="#d62728" if model != "amq" else "black",
                        markersize=6, label="intra-op threads (lost updates: wrong sums)" if x == 0 else None)
            label = f"{row['median_ms']:.0f} ms"
            if model == "amq" and "ratio_vs_uniform_int8" in row:
                label += f"\n\n{row['ratio_vs_uniform_int8']:.3f}x\nuniform\nint8\n\n{row['ratio_vs_float']:.2f}x\nfloat"
            ax.text(x, 0.5 * row["median_ms"], label, ha="center", va="center", fontsize=7, color="white",
                    bbox={"facecolor": COLOURS[model], "edgecolor": "none", "pad": 1.5})
            if model == "amq":
                for base, limit, colour in TARGETS:
                    if (base, kernels, t) in by:
                        ax.hlines(limit * by[base, kernels, t]["median_ms"], x - 0.45, x + 0.45, colors=colour,
                                  linestyles="--", linewidth=1.2,
                                  label=f"AMQ target: {limit:g}x {base.replace('_', ' ')}" if not kernels else None)
        ax.set_xticks(range(len(present)), [m.replace("_", "\n") for m, _ in present], fontsize=8)
        ax.set_ylabel("ms per run (median)")
        nodes = by[present[0] + (t,)]["nodes"]
        executor = " (standard: parallel executor)" if "parallel executor" in by[present[0] + (t,)].get(
            "threading", "") else ""
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}{executor}, {nodes:,} nodes", fontsize=10)
        ax.set_ylim(0, 1.3 * max(max(r["median_ms"], *(r.get("session_medians_ms") or [0]))
                                 for (_, _, tt), r in by.items() if tt == t))
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
