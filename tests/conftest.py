import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["slurm_fixtures"]  # the `slurm_cluster` fixture, for every test module

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def hpcft_home(tmp_path, monkeypatch):
    """An isolated HPCFT_HOME (ledger + runs) for one test."""
    home = tmp_path / "hpcft-home"
    monkeypatch.setenv("HPCFT_HOME", str(home))
    monkeypatch.delenv("HPCFT_DB_URL", raising=False)
    monkeypatch.delenv("HPCFT_RUNS", raising=False)
    return home


def hpcft_cli():
    """argv prefix for the installed `hpcft` command of this venv."""
    exe = VENV_BIN / "hpcft"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hpcft"]

