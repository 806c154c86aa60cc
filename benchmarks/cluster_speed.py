"""Speed of the size-capped k-means used for GraphViT clusters (target: thousands of nodes per second).

Prints a table and writes benchmarks/results/cluster_speed.json: rows {nodes, max_size, seconds,
nodes_per_s, commit}.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import RESULTS, commit, print_table, write_json

from amq_export.data.clusters import size_capped_kmeans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1024,10000,50000")
    parser.add_argument("--max-size", type=int, default=32)
    args = parser.parse_args()
    rows, rev = [], commit()
    for n in (int(v) for v in args.nodes.split(",")):
        pos = torch.rand(n, 2, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        size_capped_kmeans(pos, args.max_size)
        seconds = time.perf_counter() - start
        rows.append({"nodes": n, "max_size": args.max_size, "seconds": round(seconds, 3),
                     "nodes_per_s": round(n / seconds), "commit": rev})
    print_table("size-capped k-means", rows, ["nodes", "max_size", "seconds", "nodes_per_s", "commit"])
    write_json(RESULTS / "cluster_speed.json", rows)


if __name__ == "__main__":
    main()
