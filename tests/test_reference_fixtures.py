"""Every reference fixture in AMQ_REFERENCE_DIR must be reproduced by our own model classes.

New ``*.pt`` files dropped into that folder are picked up automatically.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from amq_export.models import run_reference_fixture

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("AMQ_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
FIXTURES = sorted(REFERENCE_DIR.glob("*.pt")) if REFERENCE_DIR.is_dir() else []
TOLERANCE = 1e-5


def test_reference_folder_has_fixtures():
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference folder {REFERENCE_DIR} does not exist (set AMQ_REFERENCE_DIR to check importers)")
    assert FIXTURES, f"{REFERENCE_DIR} exists but holds no *.pt fixture"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_reference_fixture_reproduced(path: Path):
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    pairs = run_reference_fixture(fixture)
    assert pairs, f"{path.name}: importer compared nothing"
    for name, (ours, ref) in pairs.items():
        assert ours.shape == ref.shape, f"{path.name}:{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
        rel = ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
        assert rel <= TOLERANCE, f"{path.name}:{name}: relative error {rel:.3e} > {TOLERANCE:g}"
