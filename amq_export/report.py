"""The export job's report: ``report.json``, ``report.md`` and ``allocation.png``.

``allocation.png`` shows one test mesh four times: coloured by the bit-width AMQ allocated to each
node's rows and to the edges each node receives, then the absolute error of the AMQ model and of
uniform quantization at equal cost on one colour scale, so a reader sees where bits went and whether
the error moved with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from amq_export.safe_io import atomic_write


def write_json(path: Path, report: dict[str, Any]) -> Path:
    text = json.dumps(report, indent=2, sort_keys=False, default=float) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """A one-page summary of ``report`` (the fields of ``report.json``)."""
    acc, parity, cost = report["test_rel_l2"], report["parity"], report["cost"]
    lines = [
        f"# amq-export report: {report['arch']} -> {report['target']}",
        "",
        (f"Model `{report['model']}`, data `{report['data']}` ({report['samples']['test']} test meshes), "
         f"activation bits {report['bits']}, weights {report['weight_bits']}-bit, budget {report['budget']:g} "
         f"effective bits, {report['epochs']} QAT epoch(s) on {report['samples']['train']} meshes, "
         f"seed {report['seed']}."),
        "",
        "| model | test rel-L2 | measured b_eff | GBOPs / mesh |",
        "|---|---|---|---|",
        f"| float | {_fmt(acc['float'])} | – | {_fmt(cost['float_gbops'], 3)} |",
        (f"| uniform (equal cost) | {_fmt(acc['uniform'])} | {_fmt(cost['uniform_b_eff'], 3)} | "
         f"{_fmt(cost['uniform_gbops'], 3)} |"),
        f"| AMQ (PyTorch) | {_fmt(acc['amq'])} | {_fmt(report['b_eff'], 3)} | {_fmt(cost['amq_gbops'], 3)} |",
        f"| AMQ (exported, ONNX Runtime) | {_fmt(acc['exported'])} | {_fmt(report['b_eff_exported'], 3)} | – |",
        "",
        (f"AMQ against uniform at equal cost: {_fmt(report['amq_vs_uniform'], 3)}x the error "
         f"({'better' if report['amq_vs_uniform'] < 1 else 'not better'})."),
        "",
        "## Parity of the exported model against PyTorch",
        "",
        f"- same bit-width on {100 * parity['bits_agreement']:.3f}% of node and edge rows (target >= 99.9%)",
        (f"- prediction relative L2 difference {_fmt(parity['rel_l2'], 3)} over all test meshes (target <= 1e-3); "
         f"worst mesh {_fmt(parity['rel_l2_worst_mesh'], 3)}, max abs {_fmt(parity['max_abs'], 3)}"),
        ("- PyTorch evaluates AMQ models with the artifact's integer arithmetic, here with ONNX Runtime's SiLU "
         f"(`runtime_activations`); with PyTorch's own SiLU it differs by {_fmt(parity.get('torch_silu_rel_l2'), 3)}, "
         f"and the float fake quantization of training by {_fmt(parity.get('fake_quant_rel_l2'), 3)}"),
        ("- one-ulp floor: PyTorch against itself with every quantized layer's input one ulp off differs by "
         f"{_fmt(parity.get('ulp_floor_rel_l2'), 3)} (bits the same on "
         f"{100 * parity.get('ulp_floor_bits_agreement', float('nan')):.3f}% of rows): what float kernels that "
         "differ in the last bit do to this model's roundings"),
        f"- verdict: **{'PASS' if parity['pass'] else 'FAIL'}** (bits and the 1e-3 bound)",
        "",
        "## Artifacts",
        "",
    ]
    lines += [f"- `{name}`: {what}" for name, what in report["artifacts"].items()]
    latency = report.get("latency_ms")
    if latency:
        lines += ["", (f"ONNX Runtime latency per mesh ({latency['nodes']} nodes, {latency['threads']}, "
                       f"median of {latency['runs']}): {latency['median']:.2f} ms.")]
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items() if k != "total")
    lines += ["", f"Wall time {report['seconds']['total']:.0f} s ({steps}).", "", "![allocation](allocation.png)", ""]
    return "\n".join(lines)


def write_markdown(path: Path, report: dict[str, Any]) -> Path:
    text = markdown(report)
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def plot_allocation(path: Path, pos: np.ndarray, bit_maps: list[tuple[np.ndarray, str]], error_amq: np.ndarray,
                    error_uniform: np.ndarray, error_titles: tuple[str, str]) -> Path:
    """Panels over the mesh nodes: each of ``bit_maps`` (integer bits per node, title) on one discrete
    colour scale, then |error| of AMQ and of uniform on one shared scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.tri import Triangulation

    tri = Triangulation(pos[:, 0], pos[:, 1])
    k = len(bit_maps)
    fig, axes = plt.subplots(1, k + 2, figsize=(5 * (k + 2), 4.6), constrained_layout=True)
    options = np.unique(np.concatenate([bits.ravel() for bits, _ in bit_maps]))
    edges = np.concatenate([options - 0.5, [options[-1] + 0.5]])
    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0, 1, max(len(options), 2)))[: len(options)])
    for ax, (bits, _) in zip(axes, bit_maps):
        shaded = ax.tripcolor(tri, bits.astype(float), cmap=cmap, norm=BoundaryNorm(edges, cmap.N), shading="flat")
    fig.colorbar(shaded, ax=axes[:k], ticks=options, label="activation bits")
    titles = [title for _, title in bit_maps] + list(error_titles)
    vmax = float(max(error_amq.max(initial=0.0), error_uniform.max(initial=0.0))) or 1.0
    for ax, err in ((axes[k], error_amq), (axes[k + 1], error_uniform)):
        shaded = ax.tripcolor(tri, err, cmap="magma", vmin=0.0, vmax=vmax, shading="gouraud")
    fig.colorbar(shaded, ax=axes[k:], label="|prediction - truth|")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return save_png(fig, path)


def save_png(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)
