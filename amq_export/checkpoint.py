"""One-file checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict: format tag and version, architecture name, constructor
config, state_dict, data normaliser and task metadata. Nothing in it needs unpickling of
Python classes, so a file from anyone can be opened without running their code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amq_export.errors import AMQError
from amq_export.safe_io import atomic_write, read_weights_only

FORMAT = "amq-export/checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "arch", "config", "state_dict")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, with everything needed to rebuild and use the model."""

    arch: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    normalizer: dict[str, Any] | None = None
    task: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """The model with its weights, in eval mode; key and shape problems are listed in the error."""
        from amq_export.models import build_model

        model = build_model(self.arch, self.config)
        load_state_dict_checked(model, self.state_dict, what=f"{self.arch} checkpoint")
        return model.eval()


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict`` with one clear error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise AMQError(
            f"{what} does not fit the model: " + "; ".join(problems)
            + " (was it saved for another architecture or config?)"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()})


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    normalizer: dict[str, Any] | None = None,
    task: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a project model with ``arch`` and ``config``) to ``path`` atomically."""
    arch = getattr(model, "arch", None)
    config = getattr(model, "config", None)
    if arch is None or config is None:
        raise AMQError(
            f"{type(model).__name__} is not an amq-export model (no .arch/.config); "
            "build it with amq_export.models.build_model or from_reference"
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalizer": normalizer,
        "task": dict(task or {}),
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint file written by :func:`save_checkpoint`."""
    from amq_export.models import ARCHITECTURES

    blob = read_weights_only(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise AMQError(
            f"{path} is not an amq-export checkpoint (no '{FORMAT}' format tag); "
            "save models with amq_export.save_checkpoint or `amq-export train`"
        )
    missing = [k for k in _REQUIRED if k not in blob]
    if missing:
        raise AMQError(f"checkpoint {path} is incomplete: missing fields {missing}; re-save it")
    if not isinstance(blob["format_version"], int) or blob["format_version"] > FORMAT_VERSION:
        raise AMQError(
            f"checkpoint {path} has format version {blob['format_version']!r}, newer than this "
            f"amq-export understands ({FORMAT_VERSION}); upgrade amq-export"
        )
    if blob["arch"] not in ARCHITECTURES:
        raise AMQError(
            f"checkpoint {path} has unknown architecture {blob['arch']!r}; known: {sorted(ARCHITECTURES)}"
        )
    return Checkpoint(
        arch=blob["arch"],
        config=dict(blob["config"]),
        state_dict=dict(blob["state_dict"]),
        normalizer=blob.get("normalizer"),
        task=dict(blob.get("task") or {}),
    )


def load_model(path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint and return its model in eval mode."""
    return load_checkpoint(path).build_model()
