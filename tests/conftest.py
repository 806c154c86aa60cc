"""Fixtures shared by the test modules: a tiny Darcy dataset and a tiny quantized MP-PDE / GraphViT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from amq_export.amq.config import AMQConfig
from amq_export.api import quantize
from amq_export.data.datasets import load_mesh_dataset
from amq_export.models import build_model
from amq_export.models.presets import darcy_config

TINY_AUX = {"aux_hidden": 4, "aux_layers": 1}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """24 train (with validation) and 6 test meshes of 8x8 Darcy, with clusters of at most 16 nodes."""
    return load_mesh_dataset("darcy", resolution=8, n_train=24, n_test=6, cluster_size=16,
                             cache_dir=tmp_path_factory.mktemp("cache"))


def make_qmodel(dataset: Any, arch: str = "mppde", **overrides: Any) -> Any:
    """A seeded hidden-32, 2-layer model, quantized at budget 4 with a tiny auxiliary model, calibrated on
    ``dataset.train``; ``overrides`` go to ``AMQConfig``."""
    torch.manual_seed(0)
    model = build_model(arch, darcy_config(arch, hidden=32, layers=2))
    return quantize(model, AMQConfig(**{"budget": 4.0, **TINY_AUX, **overrides}), calibration=dataset.train)


@pytest.fixture(scope="session")
def qmodel_factory() -> Callable[..., Any]:
    return make_qmodel
