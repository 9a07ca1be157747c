"""No database password is ever written into a run directory, a rendered sbatch script or submitit's pickles.

The ledger URL below carries a password; nothing connects to it. Jobs authenticate with PGPASSWORD or ~/.pgpass on
the compute node instead (the environment sbatch hands to the job, which is not written into the run directory)."""

import pickle
from pathlib import Path
from typing import List

import pytest

from hpcft.config import compose
from hpcft.paths import public_db_url

SECRET = "s3cr3t-TOKEN"
SECRET_URL = f"postgresql+psycopg://u:{SECRET}@127.0.0.1/hpcft"
PUBLIC_URL = "postgresql+psycopg://u@127.0.0.1/hpcft"


def files_with_secret(root: Path) -> List[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.parametrize("url,public", [
    (SECRET_URL, PUBLIC_URL),
    (f"postgresql+psycopg://u:{SECRET}@db:5433/hpcft?sslmode=require", "postgresql+psycopg://u@db:5433/hpcft?sslmode=require"),
    (f"postgresql+psycopg://u@db/hpcft?password={SECRET}&host=/run/pg", "postgresql+psycopg://u@db/hpcft?host=%2Frun%2Fpg"),
    (f"mysql+pymysql://root:{SECRET}@localhost/hpcft", "mysql+pymysql://root@localhost/hpcft"),
    ("postgresql+psycopg:///hpcft?host=/var/run/postgresql", "postgresql+psycopg:///hpcft?host=/var/run/postgresql"),
    ("sqlite:////tmp/a b/ledger.db", "sqlite:////tmp/a b/ledger.db"),
])
def test_public_db_url_drops_only_the_password(url, public):
    from sqlalchemy.engine import make_url

    assert public_db_url(url) == public
    assert SECRET not in public_db_url(url)
    u, p = make_url(url), make_url(public)
    assert (p.username, p.host, p.port, p.database) == (u.username, u.host, u.port, u.database)


def test_rendered_script_and_run_dir_carry_no_password(tmp_path, hpcft_home, monkeypatch):
    from hpcft.jobs.render import render

    monkeypatch.setenv("HPCFT_DB_URL", SECRET_URL)
    for resources in ("cpu_small", "multinode_4x8"):
        cfg = compose.compose([f"resources={resources}"])
        cfg.output_dir = str(tmp_path / f"run-{resources}")
        text = render(cfg)
        assert SECRET not in text
        assert f"export HPCFT_DB_URL={PUBLIC_URL}" in text  # the job still knows its ledger
        assert files_with_secret(tmp_path / f"run-{resources}") == []


def test_render_cli_writes_no_password(tmp_path, hpcft_home, monkeypatch):
    from typer.testing import CliRunner

    from hpcft.cli import app

    monkeypatch.setenv("HPCFT_DB_URL", SECRET_URL)
    out = tmp_path / "job.sbatch"
    r = CliRunner().invoke(app, ["render", "resources=cpu_small", f"output_dir={tmp_path / 'run'}", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert SECRET.encode() not in out.read_bytes()
    assert files_with_secret(tmp_path) == []


class SecretLedger:
    """A real SQLite ledger whose `url` says PostgreSQL with a password, as the Slurm executor would see it."""

    def __init__(self, ledger):
        self._ledger = ledger
        self.url = SECRET_URL

    def __getattr__(self, name):
        return getattr(self._ledger, name)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An sbatch that answers like Slurm and records the environment the job would get."""
    b = tmp_path / "bin"
    b.mkdir()
    (b / "sbatch").write_text(f'#!/bin/sh\nenv > "{tmp_path}/sbatch-env"\necho "Submitted batch job 4242"\n')
    (b / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{b}:/usr/bin:/bin")
    return tmp_path / "sbatch-env"


@pytest.mark.parametrize("points", [1, 2])  # one job, and a sweep (one job array, its folder beside the run dirs)
def test_submitit_pickles_carry_no_password(tmp_path, hpcft_home, fake_sbatch, points):
    from hpcft.jobs.executors.slurm import SlurmExecutor
    from hpcft.ledger.store import Ledger
    from hpcft.jobs.submit import Plan, create_jobs

    runs = tmp_path / "runs"
    cfgs = []
    for i in range(points):
        cfg = compose.compose(["executor=slurm", "resources=cpu_small", f"name=secret-{i}"])
        cfg.output_dir = str(runs / f"run-{i}")
        cfgs.append(cfg)
    ledger = SecretLedger(Ledger())
    jobs = create_jobs(ledger, Plan(cfgs, [[]] * points, "slurm"))
    submitted = SlurmExecutor().submit(ledger, jobs)
    assert [j.slurm_job_id for j in submitted] == (["4242"] if points == 1 else ["4242_0", "4242_1"])

    pickles = list(runs.rglob("*.pkl"))
    assert pickles, "submitit wrote no pickle"
    assert files_with_secret(runs) == []
    for pkl in pickles:  # what the job is handed: its ledger, named without the password
        with open(pkl, "rb") as f:
            delayed = pickle.load(f)
        assert delayed.function.__name__ == "run_in_allocation" and delayed.args[1] == PUBLIC_URL


def test_a_submitted_job_gets_the_password_only_from_the_environment(tmp_path, hpcft_home, fake_sbatch,
                                                                     monkeypatch):
    """sbatch hands the submitter's environment to the job (PGPASSWORD, or HPCFT_DB_URL with a password): that is how
    the job may authenticate; it is in the job's environment, never in its run directory."""
    from hpcft.jobs.executors.slurm import SlurmExecutor
    from hpcft.ledger.store import Ledger
    from hpcft.jobs.submit import Plan, create_jobs

    monkeypatch.setenv("PGPASSWORD", SECRET)
    cfg = compose.compose(["executor=slurm", "resources=cpu_small"])
    cfg.output_dir = str(tmp_path / "run")
    ledger = SecretLedger(Ledger())
    SlurmExecutor().submit(ledger, create_jobs(ledger, Plan([cfg], [[]], "slurm")))
    assert f"PGPASSWORD={SECRET}" in fake_sbatch.read_text()
    assert files_with_secret(tmp_path / "run") == []
