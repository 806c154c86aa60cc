"""Does ONNX Runtime's ``ScatterND`` add sum every update? One node, the message sum of every exported mesh model.

A graph of a single ``ScatterND(zeros [N, 64], index [E, 1], updates [E, 64], reduction="add")`` runs on the
targets of the latency benchmark's mesh (224 x 224 grid: 50,176 nodes, 299,266 edges, in the mesh's edge order)
and on as many uniformly random targets, in three threadings (``runtimes.onnxruntime.OrtModel``): one intra-op
thread, two intra-op threads (ONNX Runtime's default on this machine; ``intra_op_scatter=True``) and two threads
on the parallel executor (what ``OrtModel(threads=2)`` runs for such graphs). Every run is compared with the
float64 sum (``numpy.add.at``): ``max_rel_err`` is the largest error of a summed value relative to its magnitude
(at least 1), ``wrong_values`` the fraction of values more than 1e-3 off over all runs (float32 rounding is far
below that: a wrong value is a lost update), ``runs_identical`` whether every run gave the same bits.

Prints a table and writes benchmarks/results/ort_scatter_race.json: {"onnxruntime": version, "rows": [{targets,
threading, runs, runs_identical, max_rel_err, wrong_values, median_ms, commit}]}.

    python benchmarks/ort_scatter_race.py             # 60 runs each
    python benchmarks/ort_scatter_race.py --runs 3    # quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _common import RESULTS, commit, print_table, write_json

from runtimes.onnxruntime.session import scatter_nd_model

COLUMNS = 64
THREADINGS = {"1 intra-op thread": {"threads": 1}, "2 intra-op threads": {"threads": 2, "intra_op_scatter": True},
              "2 threads, parallel executor": {"threads": 2}}


def mesh_targets(resolution: int) -> tuple[np.ndarray, int]:
    """Edge targets of the latency benchmark's grid mesh, in its edge order, and its node count."""
    from amq_export.data.darcy import darcy_coefficients
    from amq_export.data.mesh import mesh_from_grid

    mesh = mesh_from_grid(darcy_coefficients(1, resolution, seed=0)[0])
    return mesh.edge_index[1].numpy(), mesh.num_nodes


def measure(path: Path, targets: np.ndarray, nodes: int, runs: int, seed: int, **threading) -> dict:
    from runtimes.onnxruntime import OrtModel

    rng = np.random.default_rng(seed)
    updates = rng.random((targets.size, COLUMNS), dtype=np.float32) + 1.0  # every value at least 1: lost = visible
    expected = np.zeros((nodes, COLUMNS))
    np.add.at(expected, targets, updates)
    feeds = {"data": np.zeros((nodes, COLUMNS), np.float32), "index": targets[:, None].astype(np.int64),
             "updates": updates}
    model = OrtModel(path, **threading)
    model.run_feeds(feeds)
    outs, times = [], []
    for _ in range(runs):
        start = time.perf_counter()
        outs.append(model.run_feeds(feeds)["out"])
        times.append((time.perf_counter() - start) * 1e3)
    errors = [np.abs(out - expected) / np.maximum(np.abs(expected), 1.0) for out in outs]
    return {"runs": runs, "runs_identical": all(np.array_equal(outs[0], out) for out in outs),
            "max_rel_err": float(max(err.max() for err in errors)),
            "wrong_values": float(sum((err > 1e-3).sum() for err in errors) / (runs * expected.size)),
            "median_ms": round(statistics.median(times), 3), "threading_used": model.threading}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=224, help="grid side of the mesh (224: 50,176 nodes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "ort_scatter_race.json")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2 (runs_identical compares runs)")
    targets, nodes = mesh_targets(args.resolution)
    random_targets = np.random.default_rng(args.seed).integers(0, nodes, targets.size)
    rev, rows = commit(), []
    with tempfile.TemporaryDirectory(prefix="amq-scatter-race-") as tmp:
        path = Path(tmp) / "scatter_add.onnx"
        onnx.save(scatter_nd_model("add", COLUMNS), path)
        for name, index in (("mesh edge order", targets), ("uniformly random", random_targets)):
            for threading, kwargs in THREADINGS.items():
                rows.append({"targets": name, "threading": threading,
                             **measure(path, index, nodes, args.runs, args.seed, **kwargs), "commit": rev})
    print_table(f"ONNX Runtime {ort.__version__} ScatterND add: {targets.size:,} updates of {COLUMNS} values onto "
                f"{nodes:,} rows, {args.runs} runs each", rows,
                ["targets", "threading", "runs_identical", "max_rel_err", "wrong_values", "median_ms"])
    write_json(args.out, {"onnxruntime": ort.__version__, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
