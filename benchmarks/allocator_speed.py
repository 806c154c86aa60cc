"""Time ``allocate`` on a large mesh: median of several runs after one warm-up.

Writes benchmarks/results/allocator_speed.json (rows {nodes, options, median_s, commit}; a rerun
replaces the row with the same nodes, options and commit). Target: < 1 s for 1M nodes, 7 options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import RESULTS as RESULTS_DIR
from _common import commit, write_json

from amq_export.amq.allocation import allocate, validate_bits

RESULTS = RESULTS_DIR / "allocator_speed.json"


def time_allocate(nodes: int, options: int, repeats: int) -> float:
    bits = validate_bits(range(2, 2 + options))
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(nodes, generator=gen).exp()  # log-normal, like gradient sensitivities
    in_degree = torch.randint(3, 9, (nodes,), generator=gen)
    costs = ((64 * 64 + in_degree * 192 * 64) * 8).double()  # MP-PDE-like rows, 8-bit weights
    capacity = (bits[0] + bits[-1]) / 2 * float(costs.sum())
    allocate(scores, costs, bits, capacity)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        allocate(scores, costs, bits, capacity)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--options", type=int, default=7, choices=range(1, 8), help="bit options 2 .. 1 + OPTIONS (at most 7)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    row = {"nodes": args.nodes, "options": args.options,
           "median_s": round(time_allocate(args.nodes, args.options, args.repeats), 4), "commit": commit()}
    print(f"{'nodes':>10} {'options':>8} {'median_s':>9} {'threads':>8}  commit")
    print(f"{row['nodes']:>10} {row['options']:>8} {row['median_s']:>9.3f} {torch.get_num_threads():>8}  "
          f"{row['commit']}")
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows = [r for r in rows if (r["nodes"], r["options"], r["commit"]) != (args.nodes, args.options, row["commit"])]
    write_json(RESULTS, [*rows, row])


if __name__ == "__main__":
    main()
