"""Import of state_dicts saved by the public reference implementations.

Each architecture module supplies two functions:

- ``from_reference(state_dict, config) -> model``: the project's own class with the
  reference weights (keys renamed, values only dtype-cast);
- ``reference_comparisons(model, fixture) -> dict[name, (ours, ref)]``: runs the model on a
  fixture's ``inputs`` (converted to the project's ``MeshData`` form) and returns pairs of
  tensors to compare, already restricted to what the reference's contract covers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from amq_export.errors import AMQError

# reference class name (as in a fixture's config["reference_class"]) -> our architecture name
_REFERENCE_CLASSES = {"MP_PDE_Solver": "mppde", "GraphViT": "graphvit"}


def _module(arch: str):
    if arch == "mppde":
        from amq_export.models import mppde as module
    elif arch == "graphvit":
        from amq_export.models import graphvit as module
    else:
        raise AMQError(f"no reference importer for architecture {arch!r}; choose 'mppde' or 'graphvit'")
    return module


def reference_arch(config: dict[str, Any]) -> str:
    """Our architecture name for a reference config (by its ``reference_class``)."""
    cls = str(config.get("reference_class", "")).rsplit("::", 1)[-1]
    if cls not in _REFERENCE_CLASSES:
        raise AMQError(
            f"unknown reference class {cls!r}; known: {sorted(_REFERENCE_CLASSES)} "
            "(config['reference_class'] must end in '::<ClassName>')"
        )
    return _REFERENCE_CLASSES[cls]


def from_reference(arch: str, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> nn.Module:
    """Build the project's own ``arch`` model holding a reference implementation's weights."""
    return _module(arch).from_reference(state_dict, config)


def run_reference_fixture(fixture: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load a reference fixture's weights into our model, run its inputs, return (ours, ref) pairs."""
    arch = reference_arch(fixture["config"])
    model = from_reference(arch, fixture["state_dict"], fixture["config"]).eval()
    with torch.no_grad():
        return _module(arch).reference_comparisons(model, fixture)
