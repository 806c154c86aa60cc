"""Float training loop and the train / data / eval / demo commands, on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amq_export import load_checkpoint, load_model
from amq_export.cli import main
from amq_export.errors import AMQError
from amq_export.models import build_model
from amq_export.models.presets import darcy_config
from amq_export.training import evaluate_float, train_float


@pytest.mark.parametrize("arch", ["mppde", "graphvit"])
def test_training_lowers_error_and_saves_best(tiny, arch: str, tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(arch, darcy_config(arch, hidden=16, layers=2))
    before = evaluate_float(model, tiny.val, tiny.normalizer)
    result = train_float(model, tiny, epochs=6, lr=3e-3, batch_size=4, out=tmp_path / "m.pt", progress=False)
    assert result.best_val_rel_l2 < before
    assert len(result.history) == 6 and 1 <= result.best_epoch <= 6
    # the model ends with the best weights, and the saved file holds the same ones
    assert evaluate_float(model, tiny.val, tiny.normalizer) == pytest.approx(result.best_val_rel_l2, rel=1e-5)
    reloaded = load_model(tmp_path / "m.pt")
    assert evaluate_float(reloaded, tiny.val, tiny.normalizer) == pytest.approx(result.best_val_rel_l2, rel=1e-5)
    assert load_checkpoint(tmp_path / "m.pt").normalizer == tiny.normalizer.to_dict()


def test_time_budget_stops_early(tiny):
    model = build_model("mppde", darcy_config("mppde", hidden=8, layers=1))
    result = train_float(model, tiny, epochs=1000, time_budget_s=0.5, progress=False)
    assert len(result.history) < 1000


def test_bad_training_arguments(tiny):
    model = build_model("mppde", darcy_config("mppde", hidden=8, layers=1))
    with pytest.raises(AMQError, match="epochs"):
        train_float(model, tiny, epochs=0)
    with pytest.raises(AMQError, match="time budget"):
        train_float(model, tiny, time_budget_s=-1)


def test_cli_data_train_eval(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("AMQ_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "d.npz"
    assert main(["data", "darcy", "--resolution", "8", "--samples", "30", "--out", str(data)]) == 0
    with np.load(data) as npz:
        assert npz["x"].shape == (30, 8, 8) and npz["y"].shape == (30, 8, 8)
    model = tmp_path / "m.pt"
    assert main(["train", "--arch", "mppde", "--data", str(data), "--n-train", "20", "--n-test", "5",
                 "--epochs", "2", "--hidden", "8", "--layers", "1", "--out", str(model)]) == 0
    assert model.exists()
    capsys.readouterr()
    assert main(["eval", str(model), "--data", str(data), "--n-train", "20", "--n-test", "5"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["arch"] == "mppde" and report["samples"] == 5 and 0 < report["rel_l2"] < 10


def test_cli_bad_input_exit_code_2(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "amq_export.cli", "train", "--arch", "mppde", "--data",
                           str(tmp_path / "missing.npz"), "--out", str(tmp_path / "m.pt")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "missing.npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.pt").exists()


def test_cli_unwritable_output(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AMQ_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["data", "darcy", "--resolution", "8", "--samples", "4",
                 "--out", str(tmp_path / "no" / "such" / "dir.npz")]) == 2


@pytest.mark.slow
def test_demo_runs_float_uniform_and_amq(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("AMQ_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n-train", "12", "--n-test", "3", "--epochs", "1",
                 "--qat-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "float" in out and "uniform" in out and "aux" in out
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"mppde_float.pt", "mppde_amq_uniform.pt",
                                                                 "mppde_amq_aux.pt"}
