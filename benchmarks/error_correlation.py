"""Are the quantization errors of neighbouring mesh nodes independent, as the allocator's loss model assumes?

The allocation (DESIGN item 6) adds the items' expected losses ``s_i 4^-b_i`` as if each node's rounding error
were independent of its neighbours'. This probe measures it on the committed float model: for every Linear
whose rows are the mesh's nodes, its input rows on one test mesh are rounded by a uniform quantizer over the
layer's input range at each bit-width, the error rows are centred per feature, and the mean cosine between the
error rows of the two ends of every edge is compared with that of random node pairs (independent errors: about
0). Prints a table and writes benchmarks/results/error_correlation_darcy_<arch>.json:
{"layers": [{"layer", "bits", "neighbours", "random"}], "mesh", "commit"}.

    python benchmarks/error_correlation.py --arch mppde      # under a minute once the Darcy data is cached
"""

from __future__ import annotations

import argparse
import types

import torch
from _common import RESULTS, commit, print_table, write_json
from pareto import float_model

from amq_export.data.datasets import load_mesh_dataset
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mppde", choices=("mppde", "graphvit"))
    parser.add_argument("--bits", default="2,3,4,6")
    parser.add_argument("--mesh", type=int, default=0, help="which test mesh")
    parser.add_argument("--pairs", type=int, default=20000, help="random node pairs per layer")
    args = parser.parse_args()
    dataset = load_mesh_dataset("darcy", resolution=32, n_train=1000, n_test=100,
                                cluster_size=CLUSTER_SIZE if args.arch == "graphvit" else None)
    model, _ = float_model(types.SimpleNamespace(arch=args.arch, resolution=32, float_checkpoint=None,
                                                 float_epochs=None, float_time_budget=540.0), dataset)
    mesh = dataset.test[args.mesh]
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(_module, inp, _out) -> None:  # a hook that returns a value replaces the output
            inputs.setdefault(name, inp[0].detach())
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(keep_input(name))
    with torch.no_grad():
        model.eval()(mesh)
    src, dst = mesh.edge_index
    n = mesh.num_nodes
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, x in inputs.items():
        if x.dim() != 2 or x.shape[0] != n:  # node rows only
            continue
        for bits in (int(b) for b in args.bits.split(",")):
            error = rounding_error(x, bits)
            pick = [torch.randint(0, n, (args.pairs,), generator=generator) for _ in range(2)]
            rows.append({"layer": name, "bits": bits, "neighbours": round(mean_cosine(error, src, dst), 3),
                         "random": round(mean_cosine(error, *pick), 3)})
    print_table(f"Rounding errors of neighbouring nodes, {args.arch}, test mesh {args.mesh} ({n} nodes): mean cosine",
                rows, ["layer", "bits", "neighbours", "random"])
    out = RESULTS / f"error_correlation_darcy_{args.arch}.json"
    write_json(out, {"layers": rows, "mesh": args.mesh, "nodes": n, "commit": commit()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
