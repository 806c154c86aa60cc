"""Safe file I/O used everywhere: atomic writes and weights-only reads with one-line errors.

Outputs are written to a temporary file beside the target and renamed into place, so a
crash or a full disk never leaves a half-written artifact. Inputs are read with
``torch.load(weights_only=True)``: a file that would need to unpickle Python objects is
refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from amq_export.errors import AMQError


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise AMQError(f"cannot write {path}: directory {directory} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise AMQError(f"cannot write {path}: {exc.strerror}; choose a writable location") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def read_weights_only(path: str | os.PathLike[str], what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)``; missing, corrupt and code-carrying files raise AMQError."""
    path = Path(path)
    if not path.exists():
        raise AMQError(f"{what} not found: {path}; check the path")
    if not path.is_file():
        raise AMQError(f"{what} {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise AMQError(
                f"refused to load {what} {path}: it would unpickle {found.group(1)}, which could run code; "
                "only weights-only files (tensors, dicts, lists, numbers, strings) are accepted"
            ) from None
        raise AMQError(f"cannot read {what} {path}: the file is corrupt ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 (random bytes reach the unpickler and fail in many ways: IndexError, KeyError, ...)
        raise AMQError(
            f"cannot read {what} {path}: the file is truncated or corrupt ({_first_line(exc)}); re-create it"
        ) from None
