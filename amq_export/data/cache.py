"""The on-disk cache of generated data and built meshes: where it lives and how files land in it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = "~/.cache/amq-export"
CACHE_ENV = "AMQ_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$AMQ_CACHE_DIR``, else ``~/.cache/amq-export``; created if missing."""
    path = Path(cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR))
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description of what a cached file holds."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
