"""The test folders are grouped by what they need, and each folder marks its tests so that `-m` selects them:

  tests/unit     nothing: no training, no cluster (`pytest tests/unit` is the one-minute loop)
  tests/train    trains tiny models on CPU                                      (marker `train`)
  tests/cluster  the local Slurm cluster, scripts/slurm-local                   (marker `slurm`)
  tests/team     real Unix users and PostgreSQL, scripts/team-local            (marker `team`)
"""

import os
from pathlib import Path

import pytest

pytest_plugins = ["support.slurm_fixtures", "support.receiver"]  # the `slurm_cluster` and `receiver` fixtures

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

FOLDER_MARKERS = {"train": "train", "cluster": "slurm", "team": "team"}
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(HERE).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])


@pytest.fixture
def hpcft_home(tmp_path, monkeypatch):
    """An isolated HPCFT_HOME (ledger + runs) for one test."""
    home = tmp_path / "hpcft-home"
    monkeypatch.setenv("HPCFT_HOME", str(home))
    monkeypatch.delenv("HPCFT_DB_URL", raising=False)
    monkeypatch.delenv("HPCFT_RUNS", raising=False)
    return home
