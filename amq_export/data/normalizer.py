"""Per-channel mean/std normalisation of the node fields ``x`` and ``y``, fitted on training meshes.

It serialises to a plain dict of lists of floats, so that it can live inside checkpoints loaded
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from amq_export.data.mesh_data import MeshData
from amq_export.errors import AMQError

FIELDS = ("x", "y")
# a channel whose std is below this is constant: it is centred but not scaled
MIN_STD = 1e-8


@dataclass(frozen=True)
class Normalizer:
    """``apply(t) = (t - mean) / std`` per channel of each field; ``invert`` undoes it."""

    x_mean: list[float]
    x_std: list[float]
    y_mean: list[float]
    y_std: list[float]

    @classmethod
    def fit(cls, meshes: Iterable[MeshData]) -> Normalizer:
        """Statistics over every node of every mesh (large meshes weigh more)."""
        meshes = list(meshes)
        if not meshes:
            raise AMQError("cannot fit a normalizer on zero meshes; give at least one training sample")
        stats: dict[str, list[float]] = {}
        for field in FIELDS:
            values = torch.cat([getattr(m, field).reshape(m.num_nodes, -1) for m in meshes]).double()
            std = values.std(dim=0, unbiased=False)
            stats[f"{field}_mean"] = values.mean(dim=0).tolist()
            stats[f"{field}_std"] = torch.where(std < MIN_STD, torch.ones_like(std), std).tolist()
        return cls(**stats)

    def _stats(self, field: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if field not in FIELDS:
            raise ValueError(f"unknown field {field!r}; normalised fields are {FIELDS}")
        mean = torch.tensor(getattr(self, f"{field}_mean"), dtype=t.dtype, device=t.device)
        std = torch.tensor(getattr(self, f"{field}_std"), dtype=t.dtype, device=t.device)
        return mean, std

    def apply(self, t: torch.Tensor, field: str) -> torch.Tensor:
        """Normalise ``t`` [..., C] of ``field`` ('x' or 'y')."""
        mean, std = self._stats(field, t)
        return (t - mean) / std

    def invert(self, t: torch.Tensor, field: str) -> torch.Tensor:
        """Back to physical units: the inverse of :meth:`apply`."""
        mean, std = self._stats(field, t)
        return t * std + mean

    def normalize(self, data: MeshData) -> MeshData:
        """A copy of ``data`` with ``x`` (and ``y`` if present) normalised; other fields shared."""
        out = copy.copy(data)
        out.x = self.apply(data.x, "x")
        if getattr(data, "y", None) is not None:
            out.y = self.apply(data.y, "y")
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists of floats, safe for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {
            "x_mean": list(self.x_mean),
            "x_std": list(self.x_std),
            "y_mean": list(self.y_mean),
            "y_std": list(self.y_std),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`; a malformed dict (e.g. from a damaged checkpoint) raises AMQError."""
        try:
            stats = {key: [float(v) for v in state[key]] for key in ("x_mean", "x_std", "y_mean", "y_std")}
        except (KeyError, TypeError, ValueError) as exc:
            raise AMQError(
                f"malformed normalizer state ({type(exc).__name__}: {exc}); "
                "expected lists of floats under x_mean, x_std, y_mean, y_std; re-create the checkpoint"
            ) from None
        for field in FIELDS:
            mean, std = stats[f"{field}_mean"], stats[f"{field}_std"]
            if len(mean) != len(std) or not all(s > 0 for s in std):
                raise AMQError(
                    f"malformed normalizer state: {field} needs as many means as stds, all stds > 0; "
                    "re-create the checkpoint"
                )
        return cls(**stats)
