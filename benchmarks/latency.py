"""ONNX Runtime latency of exported MP-PDE models on one large mesh: float, uniform int8 and AMQ.

Three artifacts from the same seeded float weights (``darcy_config("mppde")``):

- ``float``: ``export_float``, the plain .onnx;
- ``uniform_int8``: ``quantize`` with ``AMQConfig(budget=8.0, bits=(8,))``, ``export(target="ort")``,
  the optimized ``.ort.onnx`` (``MatMulIntegerToFloat`` kernels);
- ``amq``: ``AMQConfig(budget=5.0, bits=(4, 8))``, the same, run at budget 5.

Where AMQ's ONNX Runtime kernels are built (``amq-export build-kernels``; ``--kernels auto``, the default),
each model is also timed as ``--ort-kernels`` exports it (``kernels: true`` rows: the float graph with the
same message-sum rewrite, the quantized ones also with one-pass segment quantization). Those graphs are
correct on intra-op threads, so above one thread they run on intra-op threads, not the parallel executor.
Their ratios compare them with each other (same runtime, same kernels); ``ratio_vs_uniform_int8_standard``
compares them with the standard uniform int8 graph.

The quantized models are calibrated on a few small generated Darcy meshes and not fine-tuned: this
benchmark measures speed only; accuracy is not its concern (the weights are untrained).

The timed mesh is a triangulated grid (default 224 x 224 = 50,176 nodes) with a Darcy coefficient
field as input. For each thread count (``--threads``), ``--runs`` timed runs per model
(``time.perf_counter`` around ``run_feeds`` on pre-built feeds) spread over ``--sessions`` blocks; in each
block every model in turn (order rotated between blocks) opens a fresh ONNX Runtime session, runs 3 warm-up
runs, then its share of the timed runs, and closes it: one session alive at a time (``time_models``). Reported:
median, p10 and p90 in ms over all runs, and the median of each session. Peak memory: one fresh
subprocess per (model, threads) builds the session and runs it a few times; ``peak_mb`` is its absolute
peak RSS, ``base_mb`` the peak RSS before the session was created (Python, torch, the feeds), so
``peak_mb - base_mb`` is the model's own share.
Threads as ``runtimes.onnxruntime.OrtModel`` runs these graphs: their message sums are ``ScatterND`` adds,
which ONNX Runtime's intra-op threads compute wrongly (lost updates), so more than one thread means its parallel
executor over one intra-op thread each; every prediction is checked against the 1-thread one
(``rel_dev_vs_1_thread``). ONNX Runtime's default intra-op threading is timed too, for reference, with its
predictions' deviation (``intra_op_*``).
The peak is the process's ``VmHWM`` (Linux): ``getrusage(RUSAGE_SELF).ru_maxrss`` is carried over
from the parent through fork + exec, so in a child of this (large) process it reports the parent's
peak; ``ru_maxrss`` is used only where ``/proc`` is missing.

Targets: AMQ latency at most 0.7x float and at most 1.15x uniform int8, at every thread count.
The footer prints MET / NOT MET for each from the measured numbers, for the standard graphs and, where timed,
for the graphs with AMQ's kernels.

Prints a table and writes benchmarks/results/latency.json, with its plot beside it (``plot_latency.py``):
a list of rows {model, kernels, threads, nodes, edges, median_ms, p10_ms, p90_ms, session_medians_ms, runs,
sessions, peak_mb, base_mb, ratio_vs_float, ratio_vs_uniform_int8, session_ratios_vs_uniform_int8,
mean_node_bits, threading, rel_dev_vs_1_thread, commit}, above one thread also intra_op_median_ms,
intra_op_ratio_vs_uniform_int8 and intra_op_rel_dev_vs_1_thread; with ``--profile``, ONNX Runtime's profiler
at 1 thread: kernel time by graph stage (before and from the first quantized GEMM) and by op type, side by side.

    python benchmarks/latency.py                  # the benchmark: 50,176 nodes, 1 and 2 threads, 20 runs
    python benchmarks/latency.py --resolution 48 --runs 3 --out /tmp/latency.json --profile   # smoke test
    python benchmarks/latency.py --profile --profile-models uniform_int8+kernels,amq+kernels
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from _common import RESULTS, commit, peak_rss_mb, print_table, run_json_child, write_json
from plot_latency import plot_latency

if TYPE_CHECKING:
    from amq_export.data.normalizer import Normalizer

MODELS = ("float", "uniform_int8", "amq")
KERNELS = "+kernels"  # a model's name with AMQ's ONNX Runtime kernels
CONFIGS = {"uniform_int8": {"budget": 8.0, "bits": (8,)}, "amq": {"budget": 5.0, "bits": (4, 8)}}
MESH_FIELDS = ("x", "pos", "edge_index", "node_type")
WARMUP = 3
MIN_RUNS = 20
SESSIONS = 8  # blocks: this machine's speed drifts over minutes (a model's session medians 2.0-2.8 s on one
# run), and more, shorter blocks spread that drift more evenly over the models (4 blocks until 2026-12-08)
MIN_NODES = 50_000
TARGETS = (("float", 0.7), ("uniform_int8", 1.15))  # AMQ median at most this times the model's


def variant(model: str, kernels: bool) -> str:
    return model + KERNELS if kernels else model


def model_of(name: str) -> str:
    return name.removesuffix(KERNELS)


def build_artifacts(workdir: Path, calib_resolution: int, n_calib: int, seed: int,
                    kernels: bool) -> tuple[dict[str, Path], Normalizer]:
    """Export the three models into ``workdir`` (and with ``kernels``, each again with AMQ's kernels):
    ({name: artifact path}, the calibration normaliser)."""
    import onnx
    import torch

    from amq_export.amq.config import AMQConfig
    from amq_export.api import quantize
    from amq_export.data.datasets import load_mesh_dataset
    from amq_export.exporter import export, export_float
    from amq_export.models import build_model
    from amq_export.models.presets import darcy_config
    from passes.onnx import apply_rules
    from runtimes.onnxruntime import save_optimized

    data = load_mesh_dataset("darcy", resolution=calib_resolution, n_train=n_calib + 1, n_val=1, n_test=1,
                             seed=seed, cache_dir=workdir / "cache")
    example = data.test[0]  # traced with a small mesh; the graphs take any size
    torch.manual_seed(seed)
    model = build_model("mppde", darcy_config("mppde")).eval()
    def kernel_variant(name: str, exported: Path) -> None:
        """The same export with the ``--ort-kernels`` rewrites, from its standard ``.onnx`` (one trace each)."""
        fused, _ = apply_rules(onnx.load(str(exported)), "ort-kernels")
        paths[variant(name, True)] = save_optimized(fused, workdir / f"{name}.kernels.ort.onnx")

    paths = {"float": export_float(model, workdir / "float.onnx", example=example).path}
    for name, overrides in CONFIGS.items():
        qmodel = quantize(copy.deepcopy(model), AMQConfig(**overrides), calibration=data.train).eval()
        result = export(qmodel, workdir / f"{name}.onnx", example=example, target="ort")
        if result.optimized_path is None:
            raise RuntimeError(f"export(target='ort') gave no optimized artifact for {name}")
        paths[name] = result.optimized_path
    if kernels:
        for name in MODELS:
            kernel_variant(name, workdir / f"{name}.onnx")
    return paths, data.normalizer


def bench_mesh(resolution: int, normalizer: Normalizer, seed: int) -> dict[str, np.ndarray]:
    """Arrays of a resolution x resolution triangulated grid with a (normalised) Darcy coefficient field."""
    from amq_export.data.darcy import darcy_coefficients
    from amq_export.data.mesh import mesh_from_grid

    mesh = mesh_from_grid(darcy_coefficients(1, resolution, seed=seed + 1000)[0])
    mesh = normalizer.normalize(mesh)
    return {name: getattr(mesh, name).numpy() for name in MESH_FIELDS}


def budget_of(model: str) -> float | None:
    """The budget input a model (or its kernels variant) runs at (None: the float graph has none)."""
    return CONFIGS[model_of(model)]["budget"] if model_of(model) in CONFIGS else None


def percentile(times: list[float], q: int) -> float:
    """``q``-th percentile (q a multiple of 10) by linear interpolation between the sorted values."""
    if len(times) == 1:
        return times[0]
    return statistics.quantiles(times, n=10, method="inclusive")[q // 10 - 1]


def time_models(paths: dict[str, Path], arrays: dict[str, np.ndarray], threads: int, runs: int,
                sessions: int, intra_op_scatter: bool = False) -> dict[str, dict[str, Any]]:
    """Median / p10 / p90 ms of every model at ``threads`` over ``runs`` timed runs, taken in ``sessions``
    blocks: in each block every model in turn (the order rotated from block to block) opens a fresh session,
    warms it up, times its share of the runs and closes it, so that machine noise reaches every model over
    the blocks and only one session is alive at a time. (With all models' sessions open at once, each session's
    idle thread pool spins after its run on the 2 cores the running one needs: at 2 threads that made whole
    blocks slow, AMQ's most, uniform int8 424 ms against 352-368 alone, AMQ 1.25-1.31x against 1.15-1.24x.)
    ``threads`` as ``OrtModel`` takes them: for the standard graphs more than one means the parallel executor,
    unless ``intra_op_scatter`` (intra-op threads: ONNX Runtime's default, whose scatter-add loses updates; timed
    for reference); graphs with AMQ's kernels take intra-op threads. Also returned: each model's last prediction
    and its threading."""
    import gc

    from runtimes.onnxruntime import OrtModel

    mesh = SimpleNamespace(**arrays)
    names = list(paths)
    times: dict[str, list[float]] = defaultdict(list)
    per_session: dict[str, list[float]] = defaultdict(list)
    outputs, threading = {}, {}
    share = [runs // sessions + (b < runs % sessions) for b in range(sessions)]
    for block, block_runs in enumerate(share):
        block_times: dict[str, list[float]] = defaultdict(list)
        for k in range(len(names)):  # rotate the order so no model always follows the same one
            name = names[(block + k) % len(names)]
            model = OrtModel(paths[name], threads=threads, intra_op_scatter=intra_op_scatter)
            threading[name] = model.threading
            feeds = model.feeds(mesh, budget_of(name))
            for _ in range(WARMUP):
                outputs[name] = model.run_feeds(feeds)
            for _ in range(block_runs):
                start = time.perf_counter()
                model.run_feeds(feeds)
                block_times[name].append((time.perf_counter() - start) * 1e3)
            del model, feeds
            gc.collect()
        for name in names:
            times[name] += block_times[name]
            per_session[name].append(round(statistics.median(block_times[name]), 1))
    stats = {}
    for name in names:
        ms = times[name]
        bits = outputs[name].get("node_bits")
        stats[name] = {"median_ms": statistics.median(ms), "p10_ms": percentile(ms, 10),
                       "p90_ms": percentile(ms, 90), "session_medians_ms": per_session[name],
                       "mean_node_bits": float(bits.mean()) if bits is not None and bits.size else None,
                       "pred": outputs[name]["pred"], "threading": threading[name]}
    return stats


def deviation(pred: np.ndarray, reference: np.ndarray) -> float:
    """Relative L2 distance of a prediction from the 1-thread one (``runtimes.onnxruntime.parity``'s)."""
    from runtimes.onnxruntime import parity

    return parity([(reference, pred, None, None)])["rel_l2"]


def peak_child(args: argparse.Namespace) -> dict[str, float]:
    """In a fresh process: peak RSS before and after building the session and running it a few times."""
    from runtimes.onnxruntime import OrtModel

    with np.load(args.feeds_file) as blob:
        mesh = SimpleNamespace(**{name: blob[name] for name in blob.files})
    base = peak_rss_mb()
    session = OrtModel(args.artifact, threads=args.peak_threads)
    feeds = session.feeds(mesh, budget_of(args.peak_only))
    for _ in range(WARMUP):
        session.run_feeds(feeds)
    return {"base_mb": base, "peak_mb": peak_rss_mb()}


def peak_memory(model: str, artifact: Path, feeds_file: Path, threads: int) -> dict[str, float]:
    """``peak_child`` in a fresh interpreter (this script again, with --peak-only)."""
    return run_json_child([str(Path(__file__).resolve()), "--peak-only", model, "--artifact", str(artifact),
                           "--feeds-file", str(feeds_file), "--peak-threads", str(threads)])


QUANTIZED_GEMMS = ("MatMulIntegerToFloat", "MatMulInteger")
STAGES = ("before the first quantized GEMM", "from the first quantized GEMM on")


def profile_model(name: str, path: Path, arrays: dict[str, np.ndarray], runs: int,
                  workdir: Path) -> dict[str, dict[str, tuple[float, int]]]:
    """ONNX Runtime's profiler on one graph at 1 thread, over the timed runs only (warm-up runs allocate and
    can cost seconds): ``{"ops": {op type: (median kernel ms per run, nodes)}, "stages": {stage: (ms,
    nodes)}}``. The stages split each run's nodes, in execution order, at the first quantized GEMM: before
    it, AMQ runs its auxiliary model, the allocation and the bucket sort, uniform int8 almost nothing; from
    it on, both run the main model (no split for a float graph)."""
    from runtimes.onnxruntime import OrtModel

    model = OrtModel(path, threads=1, profile_prefix=str(workdir / f"{name}_profile"))
    feeds = model.feeds(SimpleNamespace(**arrays), budget_of(name))
    for _ in range(WARMUP + runs):
        model.run_feeds(feeds)
    trace = json.loads(Path(model.session.end_profiling()).read_text())
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in trace
               if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    kernels = sorted((e["ts"], e["args"]["op_name"], e["dur"] / 1e3) for e in trace
                     if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                     and e.get("args", {}).get("op_name"))
    per_op: dict[str, list[float]] = defaultdict(list)
    per_stage: dict[str, list[float]] = defaultdict(list)
    nodes: dict[str, int] = {}
    for lo, hi in windows:
        run = [(op, ms) for ts, op, ms in kernels if lo <= ts <= hi]
        first = next((i for i, (op, _) in enumerate(run) if op in QUANTIZED_GEMMS), None)
        for op in {op for op, _ in run}:
            per_op[op].append(sum(ms for o, ms in run if o == op))
            nodes[op] = sum(o == op for o, _ in run)
        if first is not None:
            for stage, part in zip(STAGES, (run[:first], run[first:]), strict=True):
                per_stage[stage].append(sum(ms for _, ms in part))
                nodes[stage] = len(part)
    return {"ops": {op: (statistics.median(ms), nodes[op]) for op, ms in per_op.items()},
            "stages": {stage: (statistics.median(ms), nodes[stage]) for stage, ms in per_stage.items()}}


def print_profiles(profiles: dict[str, dict[str, dict[str, tuple[float, int]]]], top: int = 20) -> None:
    """Two tables of kernel ms per run, one column per profiled model and, with two or more, the last model's
    ms minus the first's (where the difference between them goes): by graph stage, then by op type (the
    op types that cost the most)."""
    for title, key, keep in (("by graph stage", "stages", None), (f"by op type (top {top})", "ops", top)):
        parts = {name: p[key] for name, p in profiles.items() if p[key]}
        names = list(parts)
        if not names:
            continue
        totals = {name: (sum(ms for ms, _ in p.values()), sum(n for _, n in p.values())) for name, p in parts.items()}
        labels = sorted({label for p in parts.values() for label in p},
                        key=lambda label: -max(p.get(label, (0.0, 0))[0] for p in parts.values()))[:keep]
        if key == "stages":
            labels = [stage for stage in STAGES if stage in labels]
        rows = []
        for label in [*labels, "total"]:
            row: dict[str, Any] = {key[:-1]: label}
            for name in names:
                ms, count = totals[name] if label == "total" else parts[name].get(label, (0.0, 0))
                row[f"{name}_ms"], row[f"{name}_nodes"] = ms, count
            if len(names) > 1:
                row["difference_ms"] = row[f"{names[-1]}_ms"] - row[f"{names[0]}_ms"]
            rows.append(row)
        columns = [key[:-1], *(f"{n}_{k}" for n in names for k in ("ms", "nodes"))]
        columns += ["difference_ms"] if len(names) > 1 else []
        print_table(f"ONNX Runtime profiler, 1 thread, median of the timed runs: kernel ms per run {title}",
                    rows, columns)


def targets_footer(rows: list[dict[str, Any]], threads: list[int]) -> list[str]:
    """One MET / NOT MET line per (graphs, target, thread count), from the measured ratios."""
    lines = []
    by = {(r["model"], r["kernels"], r["threads"]): r for r in rows}
    for kernels in sorted({r["kernels"] for r in rows}):
        graphs = "with AMQ's kernels" if kernels else "standard graphs"
        for base, limit in TARGETS:
            for t in threads:
                ratio = by["amq", kernels, t][f"ratio_vs_{base}"]
                verdict = "MET" if ratio <= limit else "NOT MET"
                lines.append(f"{graphs}: target AMQ <= {limit:g}x {base} at {t} thread(s): {ratio:.3f}x -> {verdict}")
    return lines


def main() -> None:
    """Export, time, measure memory, print, write JSON (or, with --peak-only, one memory probe)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224,
                        help="grid side of the timed mesh (224: 50,176 nodes)")
    parser.add_argument("--nodes", type=int,
                        help="instead of --resolution: the smallest square grid with >= this many nodes")
    parser.add_argument("--threads", default="1,2", help="ONNX Runtime intra-op thread counts")
    parser.add_argument("--runs", type=int, default=MIN_RUNS,
                        help=f"timed runs per (model, threads), after {WARMUP} warm-up runs")
    parser.add_argument("--sessions", type=int, default=SESSIONS,
                        help="fresh ONNX Runtime sessions per (model, threads) the runs are spread over")
    parser.add_argument("--calib-resolution", type=int, default=32)
    parser.add_argument("--calib-meshes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="also run ONNX Runtime's profiler at 1 thread: kernel time by op type, side by side")
    parser.add_argument("--profile-models", default="uniform_int8,amq",
                        help="with --profile: which models to profile (the last minus the first: the difference)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the artifacts here (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    parser.add_argument("--kernels", choices=("auto", "on", "off"), default="auto",
                        help="also time the graphs with AMQ's ONNX Runtime kernels (auto: where they are built)")
    parser.add_argument("--peak-only", choices=[variant(m, k) for m in MODELS for k in (False, True)],
                        help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--feeds-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peak-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_only:
        print(json.dumps(peak_child(args)))
        return
    from runtimes.onnxruntime import kernels as ort_kernels

    if args.kernels == "on":
        ort_kernels.require()
    with_kernels = args.kernels == "on" or (args.kernels == "auto" and ort_kernels.available())
    resolution = max(3, math.ceil(math.sqrt(args.nodes))) if args.nodes else args.resolution
    threads = [int(t) for t in args.threads.split(",")]
    if args.runs < 2:
        parser.error("--runs must be at least 2 (p10 / p90 need two)")
    if not 1 <= args.sessions <= args.runs:
        parser.error("--sessions must be between 1 and --runs")
    names = [variant(m, k) for m in MODELS for k in (False, True)]
    if unknown := set(args.profile_models.split(",")) - set(names):
        parser.error(f"--profile-models: unknown {sorted(unknown)}; choose from {', '.join(names)}")

    with tempfile.TemporaryDirectory(prefix="amq-latency-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        paths, normalizer = build_artifacts(workdir, args.calib_resolution, args.calib_meshes, args.seed, with_kernels)
        arrays = bench_mesh(resolution, normalizer, args.seed)
        nodes, edges = arrays["x"].shape[0], arrays["edge_index"].shape[1]
        feeds_file = workdir / "mesh.npz"
        np.savez(feeds_file, **arrays)
        print(f"exported {', '.join(paths)} in {time.perf_counter() - start:.1f}s; timing on {nodes:,} "
              f"nodes, {edges:,} edges; {args.runs} runs in {args.sessions} fresh sessions per model "
              f"({WARMUP} warm-up runs each), one session alive at a time")

        rev = commit()
        rows = []
        reference = {}  # the 1-thread predictions, which every threading must reproduce
        for t in sorted(threads):
            stats = time_models(paths, arrays, t, args.runs, args.sessions)
            if not reference:
                reference = {name: stats[name]["pred"] if t == 1 else time_models(
                    {name: paths[name]}, arrays, 1, 2, 1)[name]["pred"] for name in paths}
            standard = {name: paths[name] for name in MODELS}
            intra = time_models(standard, arrays, t, args.runs, args.sessions, intra_op_scatter=True) if t > 1 else {}
            for name in paths:
                memory = peak_memory(name, paths[name], feeds_file, t)
                rows.append({"model": model_of(name), "kernels": name != model_of(name), "threads": t,
                             "nodes": nodes, "edges": edges,
                             **{k: round(stats[name][k], 3) for k in ("median_ms", "p10_ms", "p90_ms")},
                             "session_medians_ms": stats[name]["session_medians_ms"],
                             "runs": args.runs, "sessions": args.sessions,
                             "peak_mb": round(memory["peak_mb"], 1), "base_mb": round(memory["base_mb"], 1),
                             "mean_node_bits": stats[name]["mean_node_bits"], "threading": stats[name]["threading"],
                             "rel_dev_vs_1_thread": deviation(stats[name]["pred"], reference[name]), "commit": rev})
                if name != model_of(name):  # the same model without the kernels: the same numbers
                    rows[-1]["rel_dev_vs_standard"] = deviation(stats[name]["pred"], reference[model_of(name)])
                if intra and name in intra:  # ONNX Runtime's own multi-threading: faster, but its scatter-add loses updates
                    rows[-1] |= {"intra_op_median_ms": round(intra[name]["median_ms"], 3),
                                 "intra_op_rel_dev_vs_1_thread": deviation(intra[name]["pred"], reference[name])}
        by = {(r["model"], r["kernels"], r["threads"]): r for r in rows}
        for row in rows:
            ref = {name: by[name, row["kernels"], row["threads"]] for name in MODELS}
            row["ratio_vs_float"] = round(row["median_ms"] / ref["float"]["median_ms"], 3)
            row["ratio_vs_uniform_int8"] = round(row["median_ms"] / ref["uniform_int8"]["median_ms"], 3)
            row["session_ratios_vs_uniform_int8"] = [  # each session against uniform int8's, timed in turn with it
                round(m / u, 3) for m, u in zip(row["session_medians_ms"], ref["uniform_int8"]["session_medians_ms"],
                                                strict=True)]
            if row["kernels"]:
                row["ratio_vs_uniform_int8_standard"] = round(
                    row["median_ms"] / by["uniform_int8", False, row["threads"]]["median_ms"], 3)
            if "intra_op_median_ms" in row:
                row["intra_op_ratio_vs_uniform_int8"] = round(
                    row["intra_op_median_ms"] / ref["uniform_int8"]["intra_op_median_ms"], 3)

        print_table(f"ONNX Runtime latency, MP-PDE, {nodes:,} nodes ({resolution}x{resolution} grid)", rows,
                    ["model", "kernels", "threads", "nodes", "median_ms", "p10_ms", "p90_ms", "peak_mb", "base_mb",
                     "ratio_vs_float", "ratio_vs_uniform_int8", "rel_dev_vs_1_thread"])
        for line in targets_footer(rows, threads):
            print(line)
        for row in rows:
            print(f"{variant(row['model'], row['kernels']):>20s} at {row['threads']} thread(s): {row['threading']}"
                  + (f"; {row['ratio_vs_uniform_int8_standard']:.3f}x the standard uniform int8, predictions "
                     f"{row['rel_dev_vs_standard']:.1e} from its own standard graph's" if row["kernels"] else ""))
        intra_rows = [r for r in rows if "intra_op_median_ms" in r]
        if intra_rows:
            print_table("For reference, the same graphs on ONNX Runtime's intra-op threads (its default), whose "
                        "ScatterND add loses updates: predictions off by rel_dev from the 1-thread ones, no target "
                        "counts here", intra_rows, ["model", "threads", "intra_op_median_ms",
                                                    "intra_op_ratio_vs_uniform_int8", "intra_op_rel_dev_vs_1_thread"])
        for row in rows:
            print(f"{variant(row['model'], row['kernels']):>20s} at {row['threads']} thread(s), median of each session (ms): "
                  + ", ".join(f"{m:g}" for m in row["session_medians_ms"])
                  + ("; over uniform int8's: " + ", ".join(f"{r:.3f}" for r in row["session_ratios_vs_uniform_int8"])
                     if row["model"] == "amq" else ""))
        if nodes < MIN_NODES or args.runs < MIN_RUNS:
            print(f"note: {nodes:,} nodes, {args.runs} runs: below the benchmark's {MIN_NODES:,} nodes / "
                  f"{MIN_RUNS} runs, a smoke test only")
        write_json(args.out, rows)
        print(f"wrote {args.out} and {plot_latency(rows, args.out.with_suffix('.png'))}")
        if args.profile:
            print_profiles({name: profile_model(name, paths[name], arrays, args.runs, workdir)
                            for name in args.profile_models.split(",")})


if __name__ == "__main__":
    main()
