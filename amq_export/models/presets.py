"""Default model configurations for the built-in tasks (the float baselines' settings)."""

from __future__ import annotations

from typing import Any

from amq_export.errors import AMQError

#: cluster size cap used when GraphViT meshes are built (about 32 clusters on a 32x32 grid)
CLUSTER_SIZE = 32

_DARCY = {
    "mppde": {"mode": "steady", "in_features": 1, "out_features": 1, "spatial_dim": 2, "hidden": 64, "layers": 6},
    "graphvit": {"mode": "steady", "in_features": 1, "out_features": 1, "spatial_dim": 2, "hidden": 64,
                 "w_size": 128, "n_attention": 2, "nb_gn": 2, "n_heads": 4},
}
# which config key the generic --hidden / --layers knobs set, per architecture
_KNOBS = {"mppde": ("hidden", "layers"), "graphvit": ("hidden", "nb_gn")}


def darcy_config(arch: str, hidden: int | None = None, layers: int | None = None) -> dict[str, Any]:
    """The steady 2-D Darcy configuration of ``arch``; ``hidden`` / ``layers`` override width and depth."""
    if arch not in _DARCY:
        raise AMQError(f"unknown architecture {arch!r}; choose one of {sorted(_DARCY)}")
    config = dict(_DARCY[arch])
    for key, value in zip(_KNOBS[arch], (hidden, layers)):
        if value is not None:
            if value < 1:
                raise AMQError(f"--{'hidden' if key == _KNOBS[arch][0] else 'layers'} must be >= 1, got {value}")
            config[key] = value
    return config
