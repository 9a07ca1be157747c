import os
import stat

import pytest

from hpcft.errors import ConfigError
from hpcft.jobs.executors import get_executor, resolve_name


def test_auto_is_local_without_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_name("auto") == "local"
    assert get_executor("auto").name == "local"


def test_auto_is_slurm_when_sbatch_is_on_path(monkeypatch, tmp_path):
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert resolve_name("auto") == "slurm"


def test_explicit_choice_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_name("slurm") == "slurm" and resolve_name("local") == "local"
    with pytest.raises(ConfigError):
        resolve_name("kubernetes")
