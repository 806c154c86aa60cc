"""Checkpoint save/load and every way a checkpoint file can be bad."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from amq_export.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from amq_export.errors import AMQError
from amq_export.models import build_model


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mppde", {"mode": "steady", "in_features": 1, "out_features": 1, "spatial_dim": 2,
                                 "hidden": 16, "layers": 2})


def test_round_trip(tmp_path: Path, model: nn.Module):
    path = save_checkpoint(tmp_path / "m.pt", model, normalizer={"x_mean": [0.0]}, task={"name": "darcy"})
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "mppde" and ckpt.task == {"name": "darcy"} and ckpt.normalizer == {"x_mean": [0.0]}
    loaded = load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == FORMAT and blob["format_version"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_file(tmp_path: Path):
    with pytest.raises(AMQError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_truncated_file(tmp_path: Path, model: nn.Module):
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AMQError, match="truncated or corrupt"):
        load_model(path)


def test_garbage_file(tmp_path: Path):
    path = tmp_path / "g.pt"
    path.write_bytes(os.urandom(256))
    with pytest.raises(AMQError, match="corrupt"):
        load_model(path)


class _CreatesFile:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_code_running_pickle_is_refused_not_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _CreatesFile(str(marker))}, path)
    with pytest.raises(AMQError, match="refused"):
        load_model(path)
    assert not marker.exists()
    # the same file through plain pickle really would have run code: the test is not vacuous
    with open(path, "rb") as fh:
        assert fh.read(2) == b"PK"


def test_raw_pickle_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_CreatesFile(str(marker))))
    with pytest.raises(AMQError):
        load_model(path)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path: Path, model: nn.Module):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(AMQError, match="not an amq-export checkpoint"):
        load_model(path)


def _tampered(tmp_path: Path, model: nn.Module, edit) -> Path:
    path = save_checkpoint(tmp_path / "m.pt", model)
    blob = torch.load(path, weights_only=True)
    edit(blob)
    torch.save(blob, path)
    return path


def test_unknown_architecture(tmp_path: Path, model: nn.Module):
    path = _tampered(tmp_path, model, lambda b: b.update(arch="unet"))
    with pytest.raises(AMQError, match="unknown architecture 'unet'"):
        load_model(path)


def test_newer_format_version(tmp_path: Path, model: nn.Module):
    path = _tampered(tmp_path, model, lambda b: b.update(format_version=99))
    with pytest.raises(AMQError, match="upgrade"):
        load_model(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, model: nn.Module):
    first = next(iter(model.state_dict()))

    def edit(blob):
        blob["state_dict"]["bogus.weight"] = blob["state_dict"].pop(first)

    with pytest.raises(AMQError) as info:
        load_model(_tampered(tmp_path, model, edit))
    assert first in str(info.value) and "bogus.weight" in str(info.value)


def test_shape_mismatch_is_listed(tmp_path: Path, model: nn.Module):
    key = next(k for k, v in model.state_dict().items() if v.ndim == 2)

    def edit(blob):
        blob["state_dict"][key] = torch.zeros(3, 3)

    with pytest.raises(AMQError, match="shape mismatches") as info:
        load_model(_tampered(tmp_path, model, edit))
    assert key in str(info.value)


def test_cli_exit_code_2_on_bad_checkpoint(tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "amq_export.cli", "eval", str(bad), "--data", "darcy"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
