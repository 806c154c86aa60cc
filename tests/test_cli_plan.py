"""`amq-export plan`: the layer table and the cost summary of a checkpoint."""

from __future__ import annotations

import torch

from amq_export import save_checkpoint
from amq_export.cli import main
from amq_export.models import build_model
from amq_export.models.presets import darcy_config


def test_plan_lists_layers_domains_and_costs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AMQ_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "m.pt", build_model("mppde", darcy_config("mppde", hidden=32, layers=2)),
                           task={"resolution": 8})
    assert main(["plan", str(path), "--resolution", "8", "--budget", "4.5"]) == 0
    out = capsys.readouterr().out
    assert "layers.0.message_mlp.0" in out and "edge" in out and "node" in out
    assert "uniform 8-bit" in out and "uniform 4-bit" in out and "AMQ budget 4.5" in out
    assert main(["plan", str(path), "--resolution", "8", "--budget", "9"]) == 2
    assert main(["plan", str(path), "--resolution", "8", "--bits", "x,4"]) == 2
