"""Are the quantization errors of neighbouring mesh nodes independent, as the allocator's loss model assumes?

The allocation (DESIGN item 6) adds the items' expected losses ``s_i 4^-b_i`` as if each node's rounding error
were independent of its neighbours'. Two measurements on the committed float model and one test mesh:

1. *Rounding errors*: for every Linear whose rows are the mesh's nodes, its input rows are rounded by a uniform
   quantizer over the layer's input range at each bit-width, the error rows are centred per feature, and the
   mean cosine between the error rows of the two ends of every edge is compared with that of random node pairs
   (independent errors: about 0).
2. *Their effect on the prediction*: the calibrated quantized model (options 2..8, no fine-tuning) runs with
   every node item at 8 bits but a set ``S`` of ``k`` nodes (its rows and its edges' rows) at ``--low`` bits;
   ``D(S)`` is the squared deviation of the prediction from the all-8-bit one. With independent errors,
   ``D(S)`` is about the sum of ``D({i})`` over ``i`` in ``S``. The ratio is measured for ``--sets`` spatial
   patches (a breadth-first ball around a random node) and as many random sets of the same size.

Prints two tables and writes benchmarks/results/error_correlation_darcy_<arch>.json:
{"layers": [{"layer", "bits", "neighbours", "random"}], "sets": [{"kind", "low", "k", "ratio_mean",
"ratio_median", "deviation_mean", "sum_mean", "sets"}], "mesh", "nodes", "commit"}.

    python benchmarks/error_correlation.py --arch mppde      # a few minutes once the Darcy data is cached
"""

from __future__ import annotations

import argparse
import copy
import statistics
import types
from collections.abc import Callable

import torch
from _common import RESULTS, commit, print_table, write_json
from pareto import float_model

from amq_export.amq.config import AMQConfig
from amq_export.api import quantize
from amq_export.data.datasets import load_mesh_dataset
from amq_export.data.mesh_data import num_clusters
from amq_export.models.presets import CLUSTER_SIZE


def mean_cosine(errors: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine between rows ``a`` and rows ``b`` of ``errors`` (zero rows count as orthogonal)."""
    unit = errors / errors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((unit[a] * unit[b]).sum(1).mean())


def rounding_error(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``Q_b(x) - x`` for a uniform quantizer over ``x``'s range, centred per feature."""
    low, step = x.min(), (x.max() - x.min()).clamp_min(1e-12) / (2**bits - 1)
    error = torch.round((x - low) / step) * step + low - x
    return error - error.mean(0)


def node_row_inputs(model: torch.nn.Module, mesh) -> dict[str, torch.Tensor]:
    """The input of every Linear whose rows are ``mesh``'s nodes, from one float forward pass."""
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str) -> Callable:
        def hook(_module, inp, _out) -> None:  # a hook that returns a value replaces the output
            inputs.setdefault(name, inp[0].detach())
        return hook

    handles = [module.register_forward_hook(keep_input(name)) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()(mesh)
    for handle in handles:
        handle.remove()
    return {name: x for name, x in inputs.items() if x.dim() == 2 and x.shape[0] == mesh.num_nodes}


def error_correlations(model, mesh, bits: list[int], pairs: int, generator) -> list[dict]:
    src, dst = mesh.edge_index
    rows = []
    for name, x in node_row_inputs(model, mesh).items():
        for b in bits:
            error = rounding_error(x, b)
            pick = [torch.randint(0, mesh.num_nodes, (pairs,), generator=generator) for _ in range(2)]
            rows.append({"layer": name, "bits": b, "neighbours": round(mean_cosine(error, src, dst), 3),
                         "random": round(mean_cosine(error, *pick), 3)})
    return rows


def ball(neighbours: list[list[int]], centre: int, k: int) -> list[int]:
    """Up to ``k`` nodes in breadth-first order from ``centre``."""
    seen, frontier = [centre], [centre]
    while len(seen) < k and frontier:
        reached = []
        for u in frontier:
            for v in neighbours[u]:
                if v not in seen and len(seen) < k:
                    seen.append(v)
                    reached.append(v)
        frontier = reached
    return seen


def set_deviations(qmodel, mesh, low: int, k: int, sets: int, generator) -> list[dict]:
    """``D(S) / sum_i D({i})`` for ``sets`` patches and ``sets`` random sets of ``k`` nodes at ``low`` bits, on the
    calibrated ``qmodel`` (options 2..8)."""
    n, clusters = mesh.num_nodes, num_clusters(mesh)
    chosen: dict[str, torch.Tensor] = {}
    qmodel.allocate = lambda *_args, **_kw: (chosen["bits"], torch.full((clusters,), 8) if clusters else None)

    def predict(nodes: list[int]) -> torch.Tensor:
        chosen["bits"] = torch.full((n, 2), 8, dtype=torch.int64)
        chosen["bits"][torch.as_tensor(nodes, dtype=torch.int64)] = low
        with torch.no_grad():
            return qmodel(mesh, budget=5.0, mode="uniform").pred

    reference = predict([])

    def deviation(nodes: list[int]) -> float:
        return float(((predict(nodes) - reference) ** 2).sum())

    single: dict[int, float] = {}
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in mesh.edge_index.t().tolist():
        neighbours[a].append(b)
    found: dict[str, list[tuple[float, float]]] = {"patch": [], "random": []}
    for _ in range(sets):
        centre = int(torch.randint(0, n, (1,), generator=generator))
        for kind, nodes in (("patch", ball(neighbours, centre, k)),
                            ("random", torch.randperm(n, generator=generator)[:k].tolist())):
            for i in nodes:
                if i not in single:  # each node's own deviation once
                    single[i] = deviation([i])
            found[kind].append((deviation(nodes), sum(single[i] for i in nodes)))
    rows = []
    for kind, pairs in found.items():
        ratios = [d / s for d, s in pairs if s > 0]
        rows.append({"kind": kind, "low": low, "k": k, "ratio_mean": round(statistics.mean(ratios), 3),
                     "ratio_median": round(statistics.median(ratios), 3),
                     "deviation_mean": round(statistics.mean(d for d, _ in pairs), 4),
                     "sum_mean": round(statistics.mean(s for _, s in pairs), 4), "sets": len(pairs)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mppde", choices=("mppde", "graphvit"))
    parser.add_argument("--bits", default="2,3,4,6", help="bit-widths of the rounding-error correlations")
    parser.add_argument("--mesh", type=int, default=0, help="which test mesh")
    parser.add_argument("--pairs", type=int, default=20000, help="random node pairs per layer")
    parser.add_argument("--low", default="2,3", help="bit-widths of the low sets")
    parser.add_argument("--k", default="16,64", help="sizes of the low sets")
    parser.add_argument("--sets", type=int, default=20, help="patches (and random sets) per size and bit-width")
    args = parser.parse_args()
    dataset = load_mesh_dataset("darcy", resolution=32, n_train=1000, n_test=100,
                                cluster_size=CLUSTER_SIZE if args.arch == "graphvit" else None)
    model, _ = float_model(types.SimpleNamespace(arch=args.arch, resolution=32, float_checkpoint=None,
                                                 float_epochs=None, float_time_budget=540.0), dataset)
    mesh = dataset.test[args.mesh]
    generator = torch.Generator().manual_seed(0)
    layers = error_correlations(model, mesh, [int(b) for b in args.bits.split(",")], args.pairs, generator)
    print_table(f"Rounding errors of neighbouring nodes, {args.arch}, test mesh {args.mesh} "
                f"({mesh.num_nodes} nodes): mean cosine", layers, ["layer", "bits", "neighbours", "random"])
    qmodel = quantize(copy.deepcopy(model), AMQConfig(budget=5.0, bits=(2, 3, 4, 5, 6, 7, 8), aux_hidden=16),
                      calibration=dataset.train[:32]).eval()
    sets = [row for low in args.low.split(",") for k in args.k.split(",")
            for row in set_deviations(qmodel, mesh, int(low), int(k), args.sets, generator)]
    print_table("Deviation of the prediction with a set of nodes at low bits, against the sum of its nodes' "
                "(1: additive; > 1: the set costs more than its items)", sets,
                ["kind", "low", "k", "ratio_mean", "ratio_median", "deviation_mean", "sum_mean", "sets"])
    out = RESULTS / f"error_correlation_darcy_{args.arch}.json"
    write_json(out, {"layers": layers, "sets": sets, "mesh": args.mesh, "nodes": mesh.num_nodes, "commit": commit()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
