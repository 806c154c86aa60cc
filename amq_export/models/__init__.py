"""Float models of the field (MP-PDE, GraphViT), built on PyG. They import nothing of quantization.

Every model class takes its whole configuration as keyword arguments of plain values and
keeps them in ``model.config``, so ``build_model(arch, model.config)`` rebuilds it and a
checkpoint needs nothing but that dict and the state_dict.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from amq_export.errors import AMQError
from amq_export.models.graphvit import GraphViT
from amq_export.models.mppde import MPPDE
from amq_export.models.reference import from_reference, reference_arch, run_reference_fixture

ARCHITECTURES: dict[str, type[nn.Module]] = {"mppde": MPPDE, "graphvit": GraphViT}


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate architecture ``arch`` from its config dict."""
    if arch not in ARCHITECTURES:
        raise AMQError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch](**config)
    except TypeError as exc:
        raise AMQError(f"invalid config for architecture {arch!r}: {exc}") from None


__all__ = [
    "ARCHITECTURES",
    "MPPDE",
    "GraphViT",
    "build_model",
    "from_reference",
    "reference_arch",
    "run_reference_fixture",
]
