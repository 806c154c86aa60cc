"""Loader for user grid data: ``x`` (S, H, W) input fields and ``y`` (S, H, W) solutions.

Accepted files, as FNO-style Darcy data ships once converted: ``.npz`` (read without pickle) or a
weights-only ``.pt`` dict of tensors (read with ``torch.load(weights_only=True)``: a file that needs
arbitrary unpickling is refused, never executed). A trailing channel axis of size 1 is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amq_export.errors import AMQError
from amq_export.safe_io import read_weights_only

GRID_SUFFIXES = (".npz", ".pt", ".pth")
MIN_GRID_SIZE = 4
_FIX = "save a dict with x (S, H, W) inputs and y (S, H, W) solutions via numpy.savez or torch.save"


def _read(path: Path) -> dict[str, Any]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except Exception as exc:  # noqa: BLE001 (corrupt zip, pickled object arrays, truncated file, ...)
            raise AMQError(f"cannot read {path} as .npz ({type(exc).__name__}: {exc}); {_FIX}") from None
    content = read_weights_only(path, "grid file")
    if not isinstance(content, dict):
        raise AMQError(f"{path} holds a {type(content).__name__}, not a dict of tensors; {_FIX}")
    return content


def _field(path: Path, content: dict[str, Any], key: str) -> np.ndarray:
    if key not in content:
        raise AMQError(f"{path} has no key {key!r} (keys: {sorted(map(str, content))}); {_FIX}")
    value = content[key]
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise AMQError(f"{path}: {key!r} has dtype {array.dtype}, expected real numbers; {_FIX}")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise AMQError(f"{path}: {key!r} has shape {tuple(array.shape)}, expected (S, H, W) or (S, H, W, 1)")
    if min(array.shape[1:]) < MIN_GRID_SIZE:
        raise AMQError(f"{path}: {key!r} grids are {array.shape[1]}x{array.shape[2]}, need at least 4x4")
    if not np.all(np.isfinite(array)):
        raise AMQError(f"{path}: {key!r} holds NaN or infinite values; clean the data before loading")
    return array.astype(np.float32)


def load_grid_file(
    path: str | os.PathLike[str], n_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as (S, H, W) float32 arrays; the first ``n_samples`` samples if given."""
    path = Path(path)
    if not path.is_file():
        raise AMQError(f"grid data file {path} does not exist; pass the path of an existing .npz or .pt file")
    if path.suffix not in GRID_SUFFIXES:
        raise AMQError(f"{path}: unsupported grid file type {path.suffix!r}; use one of {GRID_SUFFIXES}")
    content = _read(path)
    x, y = _field(path, content, "x"), _field(path, content, "y")
    if x.shape != y.shape:
        raise AMQError(f"{path}: x has shape {x.shape} but y has shape {y.shape}; they must match")
    if n_samples is not None:
        if x.shape[0] < n_samples:
            raise AMQError(f"{path} holds {x.shape[0]} samples but {n_samples} are needed; ask for fewer")
        x, y = x[:n_samples], y[:n_samples]
    return x, y
