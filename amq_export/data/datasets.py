"""The one entry point training and evaluation use: normalised mesh datasets, built once and cached.

Samples are taken in file order: the first ``n_train`` are training samples, of which the last
``n_val`` become the validation split; the next ``n_test`` are the test split. Irregular meshes
differ per sample (sample ``i`` keeps the points drawn from ``(seed, i)``); grid meshes share one
topology, and their samples share the same ``pos``, ``edge_index``, ``node_type``, ``grid_id`` and
``cluster_index`` tensors (in memory and in the cache file): do not modify those in place.

The cache file (``meshes-<hash>.pt`` in the cache dir, hash of every argument and of the source
file's size and mtime) holds plain tensors, lists and dicts, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from amq_export.data.cache import cache_key, resolve_cache_dir
from amq_export.data.clusters import size_capped_kmeans
from amq_export.data.darcy import darcy_path
from amq_export.data.grid_loader import load_grid_file
from amq_export.data.mesh import MESH_KINDS, mesh_from_grid
from amq_export.data.mesh_data import MeshData
from amq_export.data.normalizer import Normalizer
from amq_export.errors import AMQError
from amq_export.safe_io import atomic_write

# bump when the cached meshes change meaning, so stale cache files are not reused
DATASET_VERSION = 1
# third seed word of the irregular-mesh point choice, apart from the Darcy field's (seed, i) stream
_MESH_STREAM = 1
SPLITS = ("train", "val", "test")


@dataclass
class MeshDataset:
    """Normalised meshes per split, the normaliser fitted on ``train``, and plain-valued ``meta``."""

    train: list[MeshData]
    val: list[MeshData]
    test: list[MeshData]
    normalizer: Normalizer
    meta: dict[str, Any]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AMQError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _source_identity(source: str | os.PathLike[str]) -> dict[str, Any]:
    if str(source) == "darcy":
        return {"source": "darcy"}
    path = Path(source).expanduser()
    if not path.is_file():
        raise AMQError(
            f"unknown data source {str(source)!r}: pass 'darcy' or the path of an existing .npz or .pt grid file"
        )
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _with_clusters(mesh: MeshData, cluster_size: int | None) -> MeshData:
    if cluster_size is not None:
        mesh.cluster_index = size_capped_kmeans(mesh.pos, cluster_size)
    return mesh


def _build_meshes(
    x: np.ndarray, y: np.ndarray, mesh: str, keep_fraction: float, cluster_size: int | None, seed: int
) -> list[MeshData]:
    if mesh == "irregular":
        return [
            _with_clusters(
                mesh_from_grid(
                    x[i], y[i], kind="irregular", keep_fraction=keep_fraction, seed=(seed, i, _MESH_STREAM)
                ),
                cluster_size,
            )
            for i in range(x.shape[0])
        ]
    template = _with_clusters(mesh_from_grid(x[0], y[0]), cluster_size)
    xs = torch.from_numpy(x.reshape(x.shape[0], -1, 1))
    ys = torch.from_numpy(y.reshape(y.shape[0], -1, 1))
    meshes = []
    for i in range(x.shape[0]):
        m = copy.copy(template)  # shares the topology tensors
        m.x, m.y = xs[i], ys[i]
        meshes.append(m)
    return meshes


def _build(
    source: dict[str, Any],
    resolution: int,
    counts: dict[str, int],
    n_train: int,
    mesh: str,
    keep_fraction: float,
    cluster_size: int | None,
    seed: int,
    cache_dir: Path,
) -> tuple[dict[str, list[MeshData]], Normalizer, list[int]]:
    """Meshes per split (normalised), the normaliser and the grid shape [H, W]."""
    total = n_train + counts["test"]
    if source["source"] == "darcy":
        path = darcy_path(total, resolution, seed, cache_dir)
    else:
        path = Path(source["source"])
    x, y = load_grid_file(path, total)
    meshes = _build_meshes(x, y, mesh, keep_fraction, cluster_size, seed)
    raw = {
        "train": meshes[: counts["train"]],
        "val": meshes[counts["train"] : n_train],
        "test": meshes[n_train:],
    }
    normalizer = Normalizer.fit(raw["train"])
    splits = {name: [normalizer.normalize(m) for m in raw[name]] for name in SPLITS}
    return splits, normalizer, list(x.shape[1:])


def _save(path: Path, dataset: MeshDataset) -> None:
    content = {
        "meta": dataset.meta,
        "normalizer": dataset.normalizer.to_dict(),
        "splits": {name: [m.to_dict() for m in getattr(dataset, name)] for name in SPLITS},
    }

    def write(f: BinaryIO) -> None:
        torch.save(content, f)

    atomic_write(path, write)


def _load(path: Path) -> MeshDataset | None:
    """The cached dataset, or None if the file is unreadable (then it is rebuilt)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        splits = {name: [MeshData(**fields) for fields in content["splits"][name]] for name in SPLITS}
        normalizer = Normalizer.from_dict(content["normalizer"])
        return MeshDataset(**splits, normalizer=normalizer, meta=dict(content["meta"]))
    except Exception:  # noqa: BLE001 (a truncated or foreign file of any kind: rebuild rather than fail)
        return None


def load_mesh_dataset(
    source: str | os.PathLike[str] = "darcy",
    *,
    resolution: int = 32,
    n_train: int = 1000,
    n_test: int = 100,
    n_val: int | None = None,
    mesh: str = "grid",
    keep_fraction: float = 0.7,
    cluster_size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> MeshDataset:
    """Normalised train/val/test meshes of Darcy data (``source="darcy"``) or of a user grid file.

    ``n_train`` samples are split into ``n_train - n_val`` training and ``n_val`` validation meshes
    (default ``n_val``: 10% of ``n_train``, at least 1). ``resolution`` applies to generated Darcy
    data only (a file brings its own grid). ``keep_fraction`` applies to ``mesh="irregular"``.
    With ``cluster_size``, every mesh gets a ``cluster_index`` (:func:`size_capped_kmeans`).
    """
    identity = _source_identity(source)
    _check_int("resolution", resolution, 4)
    _check_int("n_train", n_train, 2 if n_val is None else 1)
    _check_int("n_test", n_test, 0)
    _check_int("seed", seed, 0)
    if n_val is None:
        n_val = max(1, round(0.1 * n_train))
    _check_int("n_val", n_val, 0)
    if n_train - n_val < 1:
        raise AMQError(f"n_val={n_val} leaves no training samples out of n_train={n_train}; lower n_val")
    if mesh not in MESH_KINDS:
        raise AMQError(f"unknown mesh kind {mesh!r}; choose one of {MESH_KINDS}")
    if mesh == "irregular" and not (isinstance(keep_fraction, (int, float)) and 0.0 < keep_fraction <= 1.0):
        raise AMQError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
    if cluster_size is not None:
        _check_int("cluster_size", cluster_size, 1)

    counts = {"train": n_train - n_val, "val": n_val, "test": n_test}
    meta: dict[str, Any] = {
        "source": identity["source"],
        "resolution": resolution if identity["source"] == "darcy" else None,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "counts": counts,
        "mesh": mesh,
        "keep_fraction": float(keep_fraction) if mesh == "irregular" else None,
        "cluster_size": cluster_size,
        "seed": seed,
        "version": DATASET_VERSION,
    }
    root = resolve_cache_dir(cache_dir)
    path = root / f"meshes-{cache_key({**meta, 'identity': identity})}.pt"
    if path.exists() and (cached := _load(path)) is not None:
        return cached

    splits, normalizer, grid_shape = _build(
        identity, resolution, counts, n_train, mesh, keep_fraction, cluster_size, seed, root
    )
    meta["grid_shape"] = grid_shape
    meta["resolution"] = grid_shape[0] if grid_shape[0] == grid_shape[1] else None
    dataset = MeshDataset(**splits, normalizer=normalizer, meta=meta)
    _save(path, dataset)
    return dataset
