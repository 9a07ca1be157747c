"""Job identity (issue 19): every job has a UUID, written into its run directory (job.json) and its checkpoints, so
that two ledgers sharing a runs root, or a ledger removed and made again, never take another job's run directory or
checkpoint; a missing ledger is loud; what a submit needs is checked before the ledger row; secrets are masked.

Real components: SQLite ledgers in tmp_path, the submit pipeline (hpcft.jobs.submit.plan + create_jobs: rows and run
directories, no executor, no training), the trainer core's CheckpointManager, and the `hpcft` CLI as a subprocess."""

import os
import subprocess
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from hpcft.errors import ConfigError
from hpcft.rundir.identity import IDENTITY_FILE, read_identity
from hpcft.train import checkpoint as ckpt
from support import hpcft_cli

SECRET = "S3cretPw-19"


def cli(args, env):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, env=env, timeout=120)


def one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, text
    return lines[0]


def submit_rows(ledger, *overrides):
    """Queued rows + run directories through the real submit pipeline (nothing handed to an executor)."""
    from hpcft.jobs import submit

    return submit.create_jobs(ledger, submit.plan(["executor=local", *overrides]))


def save_checkpoint(run_dir: Path, job_id: int, job_uuid=None) -> Path:
    """A checkpoint as the trainer core writes it (CheckpointManager), for job `job_id` (with its UUID when given)."""
    manager = ckpt.CheckpointManager(run_dir / "checkpoints", keep="all", job_uuid=job_uuid)
    return manager.save(3, lambda d: (d / "weights.bin").write_bytes(b"w"), {"job_id": job_id, "world_size": 1})


@pytest.fixture
def shared_runs(tmp_path, monkeypatch):
    """One runs root (HPCFT_RUNS) for ledgers given by HPCFT_DB_URL; returns a function that switches ledgers."""
    from hpcft.ledger.store import Ledger

    runs = tmp_path / "runs"
    monkeypatch.setenv("HPCFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPCFT_RUNS", str(runs))

    def use(name: str) -> Ledger:
        url = f"sqlite:///{tmp_path / name}.db"
        monkeypatch.setenv("HPCFT_DB_URL", url)
        return Ledger(url)

    return use


# ------------------------------------------------------------------------------------------------ two ledgers

def test_two_ledgers_sharing_a_runs_root_never_share_a_run_directory_or_checkpoint(shared_runs):
    from hpcft.train.context import RunContext

    led_a = shared_runs("a")
    (job_a,) = submit_rows(led_a)
    dir_a = Path(job_a.output_dir)
    assert job_a.id == 1 and len(job_a.uuid) == 36
    assert read_identity(dir_a) == {"uuid": job_a.uuid, "job_id": 1, "owner": job_a.owner,
                                    "created": read_identity(dir_a)["created"], "ledger": led_a.url}
    assert save_checkpoint(dir_a, 1, job_a.uuid) is not None

    led_b = shared_runs("b")  # a second ledger on the same runs root: its first job is job 1 too
    (job_b,) = submit_rows(led_b)
    dir_b = Path(job_b.output_dir)
    assert job_b.id == 1 and job_b.uuid != job_a.uuid
    assert dir_b != dir_a and dir_b.name == f"{dir_a.name}-{job_b.uuid[:8]}"  # a fresh directory
    assert read_identity(dir_a)["uuid"] == job_a.uuid and read_identity(dir_b)["uuid"] == job_b.uuid
    assert ckpt.resolve_resume("latest", dir_b, 1, job_b.uuid) is None  # nothing of job A's to resume

    # the trainer core of B's job 1 (its UUID from its ledger) never resumes A's job 1's checkpoint
    ctx_b = RunContext(output_dir=dir_a, job_id=1, db_url=led_b.url)
    assert ctx_b.job_uuid == job_b.uuid
    with pytest.raises(ConfigError, match="checkpoints of another job"):
        ckpt.resolve_resume("latest", dir_a, ctx_b.job_id, ctx_b.job_uuid)
    ctx_a = RunContext(output_dir=dir_a, job_id=1, db_url=led_a.url)
    assert ckpt.resolve_resume("latest", dir_a, ctx_a.job_id, ctx_a.job_uuid).name == "step-00000003"


def test_a_checkpoint_without_uuid_needs_the_id_and_the_identity_file(shared_runs):
    led = shared_runs("a")
    (job,) = submit_rows(led)
    run_dir = Path(job.output_dir)
    save_checkpoint(run_dir, 1)  # an older hpcft's checkpoint: no UUID in its state
    assert "job_uuid" not in ckpt.read_state(ckpt.latest_checkpoint(run_dir / "checkpoints"))
    assert ckpt.resolve_resume("latest", run_dir, 1, job.uuid) is not None  # id and job.json agree
    with pytest.raises(ConfigError, match="does not name this job"):
        ckpt.resolve_resume("latest", run_dir, 1, "00000000-0000-4000-8000-000000000000")  # job.json: another job
    (run_dir / IDENTITY_FILE).unlink()
    with pytest.raises(ConfigError, match="without a job identity"):
        ckpt.resolve_resume("latest", run_dir, 1, job.uuid)  # no job.json to vouch for it


def test_an_explicit_output_dir_of_another_job_is_refused_before_anything(shared_runs):
    led_a = shared_runs("a")
    (job_a,) = submit_rows(led_a)
    led_b = shared_runs("b")
    before = sorted(os.listdir(job_a.output_dir))
    with pytest.raises(ConfigError) as e:
        submit_rows(led_b, f"output_dir={job_a.output_dir}")
    assert e.value.exit_code == 2
    assert one_line(str(e.value)).startswith(f"output_dir={job_a.output_dir}: already the run directory of job 1")
    assert led_b.search() == []  # no row
    assert sorted(os.listdir(job_a.output_dir)) == before and read_identity(job_a.output_dir)["uuid"] == job_a.uuid


# ------------------------------------------------------------------------------------------------ missing ledger

def test_a_removed_ledger_file_is_loud_and_not_recreated(hpcft_home):
    from hpcft.ledger import fastread
    from hpcft.ledger.guard import MissingLedger
    from hpcft.ledger.store import Ledger

    submit_rows(Ledger())
    submit_rows(Ledger())
    db = hpcft_home / "ledger.db"
    for f in (db, db.with_name("ledger.db-wal"), db.with_name("ledger.db-shm")):
        f.unlink(missing_ok=True)
    env = dict(os.environ)
    for args in (["list"], ["list", "--json"], ["show", "1"]):  # fast read path, its JSON, the full ledger
        r = cli(args, env)
        assert r.returncode != 0, (args, r.stdout)
        line = one_line(r.stderr)
        assert f"the ledger {db} is missing, but 2 run directories under {hpcft_home / 'runs'}" in line, line
        assert "HPCFT_DB_URL" in line and "restore the file" in line
        assert not db.exists()  # no empty ledger made over the old runs
    with pytest.raises(MissingLedger):
        fastread.search()


def test_a_fresh_home_still_creates_its_ledger(hpcft_home):
    r = cli(["list"], dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert (hpcft_home / "ledger.db").exists()


# ------------------------------------------------------------------------------------------------ prerequisites

def _nothing_created(home: Path) -> None:
    from hpcft.ledger.store import Ledger

    assert not (home / "runs").exists() or list((home / "runs").iterdir()) == []
    assert Ledger().search() == []


def test_access_ro_without_setfacl_is_refused_before_the_row(hpcft_home, tmp_path):
    venv_bin = Path(hpcft_cli()[0]).parent
    env = dict(os.environ, PATH=f"{venv_bin}:{tmp_path / 'empty'}")  # no setfacl, no getfacl
    r = cli(["submit", "executor=local", "access=ro"], env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = one_line(r.stderr)
    assert "access=ro: setfacl not found on PATH" in line and "install the acl package" in line, line
    _nothing_created(hpcft_home)


def test_an_unwritable_runs_root_is_refused_before_the_row(hpcft_home, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = dict(os.environ, HPCFT_RUNS=str(blocker / "runs"))
    r = cli(["submit", "executor=local"], env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"runs root {blocker / 'runs'}: {blocker} is not a directory" in one_line(r.stderr)
    _nothing_created(hpcft_home)


def test_sync_settles_a_row_never_handed_to_its_executor(hpcft_home):
    from hpcft.jobs.control import settle_unsubmitted
    from hpcft.ledger.store import Ledger

    led = Ledger()
    stuck = led.create_job(name="stuck", executor="slurm", state="queued")
    fresh = led.create_job(name="fresh", executor="local", state="queued")
    handed = led.create_job(name="handed", executor="slurm", state="queued", slurm_job_id="77")
    now = led.get(stuck.id).updated_at.replace(tzinfo=timezone.utc)  # (SQLite: UTC without its offset)
    assert settle_unsubmitted(led, led.live_jobs(), now=now + timedelta(seconds=60)) == 0
    assert settle_unsubmitted(led, [led.get(stuck.id), led.get(handed.id)], now=now + timedelta(minutes=6)) == 1
    row = led.get(stuck.id)
    assert row.state == "error" and "never handed to the slurm executor" in row.state_reason
    assert led.last_cause(stuck.id) == "submit_failed"
    assert led.get(handed.id).state == "queued" and led.get(fresh.id).state == "queued"


# ------------------------------------------------------------------------------------------------ secrets

def test_masked_hides_every_secret_key_and_only_those():
    from omegaconf import OmegaConf

    from hpcft.config import compose
    from hpcft.config.secrets import MASK, clear_secrets, masked, secret_keys

    assert "notify.urls" in secret_keys()
    url = f"mailto://me:{SECRET}@example.org"
    raw = {"name": "x", "notify": {"urls": [url, "ntfy://ntfy.sh/t"], "on": ["error"]}}
    out = masked(raw)
    assert out == {"name": "x", "notify": {"urls": [MASK, MASK], "on": ["error"]}}
    assert raw["notify"]["urls"][0] == url  # the original is untouched
    assert masked({"notify": {"urls": []}}) == {"notify": {"urls": []}}  # nothing to hide
    assert masked({}) == {}
    cfg = compose.compose([f"notify.urls=[{url}]"])
    shown = masked(cfg)
    assert SECRET not in str(shown) and shown["notify"]["urls"] == [MASK] and shown["model"]["name"]
    assert SECRET not in OmegaConf.to_yaml(clear_secrets(cfg)) and list(cfg.notify.urls) == []


def test_show_config_shows_secrets_to_the_owner_only(hpcft_home):
    from hpcft.ledger.store import Ledger

    url = f"json://hook:{SECRET}@127.0.0.1:9/x"
    led = Ledger()
    led.set_projects({"p": ["alice", "bob"]})
    job = led.create_job(name="shared", owner="alice", project="p", access="ro",
                         config={"name": "shared", "notify": {"urls": [url], "on": ["error"]}})
    env = dict(os.environ)
    owner = cli(["show", str(job.id), "--config"], dict(env, HPCFT_USER="alice"))
    assert owner.returncode == 0 and url in owner.stdout, owner.stderr
    other = cli(["show", str(job.id), "--config"], dict(env, HPCFT_USER="bob"))
    assert other.returncode == 0, other.stderr
    assert SECRET not in other.stdout and "json://" not in other.stdout and "'***'" in other.stdout
