"""Plot the Pareto benchmark's JSON: test relative L2 against the budget, one line per method.

Reads ``benchmarks/results/pareto_darcy_<arch>.json`` (written by ``pareto.py``) and writes a PNG beside it:
mean over seeds with the seeds' standard deviation as error bars, the float model's error as a floor. Methods
measured at one budget only (the ablations) are drawn as single markers.

    python benchmarks/plot_pareto.py                      # both architectures
    python benchmarks/plot_pareto.py --arch mppde --out /tmp/pareto.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import RESULTS

from amq_export.report import save_png

# method -> (colour, line style): AMQ in strong colours, baselines in greys and muted tones
STYLES = {
    "uniform": ("#444444", "-"), "layerwise": ("#1f77b4", "-"), "random": ("#999999", ":"),
    "oracle": ("#8c564b", "--"), "aux": ("#d62728", "-"), "aux-offsets": ("#ff7f0e", "-"),
    "aux-lwoffsets": ("#e377c2", "-"), "aux-frozen": ("#9467bd", "-"),
}
OTHER_COLOURS = ("#17becf", "#bcbd22", "#2ca02c", "#7f7f7f", "#aec7e8", "#98df8a", "#c5b0d5", "#f7b6d2")
OTHER_MARKERS = ("D", "s", "^", "v", "P", "X", "<", ">")


def plot_pareto(payload: dict[str, Any], title: str, path: Path) -> Path:
    """One panel: rel-L2 (log scale) against budget for every method in ``payload["rows"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in payload["rows"]:
        by_method[row["method"]].append(row)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), constrained_layout=True)
    others = 0
    for method, rows in sorted(by_method.items(), key=lambda kv: (kv[0].removesuffix("-all") not in STYLES, kv[0])):
        rows.sort(key=lambda r: r["budget"])
        base = method.removesuffix("-all")
        if base in STYLES:
            (colour, style), marker = STYLES[base], "o"
        else:
            colour, style = OTHER_COLOURS[others % len(OTHER_COLOURS)], "-"
            marker, others = OTHER_MARKERS[others % len(OTHER_MARKERS)], others + 1
        if method.endswith("-all"):
            style, marker = "-.", "x"
        budgets, errors, spreads = ([r[k] for r in rows] for k in ("budget", "rel_l2", "rel_l2_std"))
        ax.errorbar(budgets, errors, yerr=spreads, label=method, color=colour,
                    linestyle="none" if len(rows) == 1 else style, marker=marker, markersize=5, capsize=2,
                    linewidth=1.4)
    if payload.get("float_rel_l2"):
        ax.axhline(payload["float_rel_l2"], color="black", linewidth=0.8, linestyle=(0, (1, 3)), label="float")
    ax.set_yscale("log")
    ax.set_xlabel("budget (effective activation bits)")
    ax.set_ylabel("test relative L2 (mean over seeds, ± std)")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(sorted({r["budget"] for r in payload["rows"]}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("mppde", "graphvit"), action="append",
                        help="which JSON to plot (repeatable; default both)")
    parser.add_argument("--json", type=Path, default=None, help="plot this JSON instead (with one --arch)")
    parser.add_argument("--out", type=Path, default=None, help="the PNG (default: beside the JSON)")
    args = parser.parse_args()
    archs = args.arch or ["mppde", "graphvit"]
    if (args.json or args.out) and len(archs) != 1:
        parser.error("--json and --out need exactly one --arch")
    for arch in archs:
        source = args.json or RESULTS / f"pareto_darcy_{arch}.json"
        if not source.exists():
            parser.error(f"{source} does not exist: run benchmarks/pareto.py --arch {arch} first")
        payload = json.loads(source.read_text())
        out = args.out or source.with_suffix(".png")
        title = (f"Darcy, {arch}: {payload.get('epochs')} QAT epochs, {payload.get('n_test')} test meshes "
                 f"(float {payload.get('float_rel_l2', float('nan')):.4f})")
        print(f"wrote {plot_pareto(payload, title, out)}")


if __name__ == "__main__":
    main()
