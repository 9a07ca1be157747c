"""`hpcft clone`, `hpcft list` (exact resource tokens, --since/--until, --sort, the --json schema) and
`hpcft delete` (many, live ones stopped first, --purge), through the real CLI on an isolated ledger whose rows
are made directly (hpcft.jobs.submit.create_jobs / Ledger.create_job: nothing trains unless marked `train`)."""

import json
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from support import hpcft_cli

FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8"]


def run(args, timeout=120, **kw):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def listed(*args):
    r = run(["list", "--json", *args])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ids(*args):
    return [j["id"] for j in listed(*args)]


def recorded_job(overrides=(), state="success"):
    """A job composed like `hpcft submit` (row, run dir, config.yaml) but never run; ended in `state`."""
    from hpcft.jobs import submit as hsubmit
    from hpcft.ledger.store import Ledger

    ledger = Ledger()
    (job,) = hsubmit.create_jobs(ledger, hsubmit.plan([*FAST, *overrides]))
    if state != "queued":
        ledger.transition(job.id, "running")
        ledger.transition(job.id, state, "made by the test")
    return ledger.get(job.id)


def row(**fields):
    """A bare ledger row (list tests: only the searched fields matter)."""
    from hpcft.ledger.store import Ledger

    fields = {"name": "job", "executor": "local", "state": "success", **fields}
    return Ledger().create_job(**fields)


def flat(d, prefix=""):
    if isinstance(d, dict) and d:
        return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: d}


def events(job_id):
    from hpcft.ledger.store import Ledger

    return [e.model_dump() for e in Ledger().events(job_id)]


def in_ledger(**search):
    """Job ids as Ledger.search finds them, in-process (the CLI's flags are tested with fewer subprocesses)."""
    from hpcft.ledger.store import Ledger

    return [j.id for j in Ledger().search(**search)]


# ------------------------------------------------------------------------------------------------------ clone

def test_clone_dry_run_shows_the_changes_and_creates_nothing(hpcft_home):
    src = recorded_job()
    r = run(["clone", str(src.id), "training.learning_rate=1e-3", "resources.time=02:00:00", "--dry-run"])
    assert r.returncode == 0, r.stderr
    changed = sorted(x for x in r.stdout.splitlines() if x.startswith("# changed: "))
    assert changed == [f"# changed: output_dir: {src.output_dir} -> None",
                       "# changed: resources.time: 01:00:00 -> 02:00:00",
                       "# changed: training.learning_rate: 0.0002 -> 0.001"], r.stdout
    assert f"a clone of job {src.id}" in r.stdout and "learning_rate: 0.001" in r.stdout
    assert in_ledger() == [src.id] and "cloned" not in [e["kind"] for e in events(src.id)]


@pytest.mark.parametrize("override,first", [
    ("training.nosuchkey=1", "error: training.nosuchkey=1: no such key in job 1's config"),
    ("training.epochs=abc", "error: training.epochs=abc: Value 'abc'"),
    ("training.learning_rate=-1", "error: training.learning_rate=-1.0: must be > 0"),
    ("method=dpo", "error: method=dpo: a config group cannot be swapped in job 1's recorded config; compose a new "
                   "job with `hpcft submit method=dpo ...` instead"),
    ("+experiment=dpo_tiny", "error: +experiment=dpo_tiny: a config group cannot be swapped"),
    ("training.epochs=1,2", "error: training.epochs=1,2: a clone is one job; sweep with `hpcft submit -m`"),
    ("description=${oc.env:HOME}", "error: description: ${...} interpolation is not allowed"),
])
def test_clone_refuses_a_bad_override_in_one_line_and_creates_nothing(override, first, hpcft_home):
    src = recorded_job()
    runs_before = sorted(p.name for p in (hpcft_home / "runs").iterdir())
    r = run(["clone", str(src.id), "training.epochs=2", override])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(first), r.stderr
    assert in_ledger() == [src.id]
    assert sorted(p.name for p in (hpcft_home / "runs").iterdir()) == runs_before
    assert "cloned" not in [e["kind"] for e in events(src.id)]


def test_clone_of_a_derived_job_keeps_its_lineage_parent(hpcft_home, monkeypatch):
    """A config that starts from job 1's model (model.parent_job=1) keeps 1 as its parent when job 2 is cloned;
    the clone's source is still named in the `cloned` events."""
    from hpcft.jobs import clone as hclone
    from hpcft.jobs import executors
    from hpcft.ledger.store import Ledger

    class Recorder:
        def __init__(self):
            self.submitted = []

        def submit(self, ledger, jobs):
            self.submitted.extend(j.id for j in jobs)
            return jobs

    executor = Recorder()
    monkeypatch.setattr(executors, "get_executor", lambda name: executor)
    ledger = Ledger()
    recorded_job()  # job 1: the lineage parent
    src = recorded_job()
    config = dict(src.config, model=dict(src.config["model"], parent_job=1),
                  training=dict(src.config["training"], resume_from="/elsewhere/checkpoints/step-8"))
    src = ledger.update(src.id, config=config, parent_id=1)
    clone = hclone.submit(ledger, src, hclone.plan(src, ["training.epochs=3"]))
    assert executor.submitted == [clone.id] and clone.parent_id == 1
    assert clone.config["model"]["parent_job"] == 1 and clone.config["training"]["epochs"] == 3
    assert clone.config["training"]["resume_from"] == "latest"  # a fresh start in its own run directory
    (mine,) = [e for e in ledger.events(clone.id) if e.kind == "cloned"]
    (theirs,) = [e for e in ledger.events(src.id) if e.kind == "cloned"]
    assert mine.data["source"] == src.id and theirs.data["clone"] == clone.id
    # another model: the old lineage does not hold any more
    other = hclone.plan(src, ["model.source=config", "model.path=null"]).configs[0]
    assert other.model.parent_job is None


@pytest.mark.train
def test_clone_runs_then_delete_stops_it_first_and_purges(hpcft_home):
    """A clone is a new row (parent_id, `cloned` events on both jobs) whose config differs from its source only
    where asked, in its own run directory; it really runs on the local executor. `delete` of it and two ended jobs
    stops it first (its supervisor and trainer are gone afterwards), `--purge --yes` removes the run dirs."""
    src = recorded_job()
    other = recorded_job(state="error")
    r = run(["clone", str(src.id), "training.epochs=500", "resources.time=02:00:00", "--name", "again"])
    assert r.returncode == 0, r.stdout + r.stderr
    (clone,) = [j for j in listed() if j["id"] not in (src.id, other.id)]
    assert f"cloned job {src.id} as job {clone['id']} again" in r.stdout
    assert clone["parent_id"] == src.id and clone["name"] == "again"
    assert clone["output_dir"] != src.output_dir and Path(clone["output_dir"], "config.yaml").is_file()
    from hpcft.ledger.store import Ledger

    new = Ledger().get(clone["id"]).config
    before, after = flat(src.config), flat(new)
    diff = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert diff == {"name", "output_dir", "training.epochs", "resources.time"}, diff
    assert after["training.epochs"] == 500 and after["resources.time"] == "02:00:00"
    assert after["training.resume_from"] == "latest"
    assert [e["data"] for e in events(src.id) if e["kind"] == "cloned"] == [
        {"clone": clone["id"], "overrides": ["training.epochs=500", "resources.time=02:00:00", 'name="again"']}]
    assert [e["data"]["source"] for e in events(clone["id"]) if e["kind"] == "cloned"] == [src.id]

    deadline = time.time() + 120
    while (live := next(j for j in listed() if j["id"] == clone["id"]))["state"] != "running":
        assert time.time() < deadline and live["state"] == "queued", live
        time.sleep(0.5)
    d = run(["delete", str(clone["id"]), str(src.id), str(other.id), "--purge", "--yes"], timeout=90)
    assert d.returncode == 0, d.stdout + d.stderr
    assert f"job {clone['id']}: stop requested (it was running)" in d.stdout
    assert "deleted 3 job(s), removed 3 run directories" in d.stdout
    assert listed() == []
    assert not any(Path(p).exists() for p in (clone["output_dir"], src.output_dir, other.output_dir))
    # the supervisor's process group (it and the trainer) is gone; an orphaned supervisor may linger as a zombie
    # where PID 1 does not reap (CI containers), which is not a running process
    assert _live_group_members(live["pid"]) == []


def _live_group_members(pgid: int) -> list:
    """Processes of process group `pgid` that are not zombies."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append((p.pid, p.info["status"], " ".join(p.cmdline())[:120]))
        except (ProcessLookupError, psutil.Error):
            continue
    return out


# ------------------------------------------------------------------------------------------------------ list

def test_list_resources_match_whole_tokens(hpcft_home):
    eight = row(resource_spec="nodes=1 gpus=8 tasks=8 cpus=4 mem=- time=01:00:00 partition=gpu_a qos=- "
                              "priority=normal")
    eighty = row(resource_spec="nodes=1 gpus=80 tasks=8 cpus=4 mem=- time=01:00:00 partition=gpuxa qos=- "
                               "priority=normal")
    assert ids("--resources", "gpus=8") == [eight.id]
    assert ids("--resources", "gpus=80") == [eighty.id]
    assert ids("-r", "GPUS=8") == [eight.id]  # case-insensitive
    assert ids("-r", "priority=normal", "-r", "gpus=8") == [eight.id]  # all must match
    assert in_ledger(resources="gpus=8 partition=gpuxa") == []
    assert in_ledger(resources=["nodes=1"]) == [eighty.id, eight.id]  # first and last tokens too
    assert in_ledger(resources=["priority=normal"]) == [eighty.id, eight.id]
    assert in_ledger(resources=["partition=gpu_a"]) == [eight.id]  # `_` is no wildcard
    assert in_ledger(resources=["partition=gpu%"]) == []
    for bad in ("gpu=8", "gpus"):
        r = run(["list", "-r", bad])
        assert r.returncode == 1 and r.stderr.startswith(f"error: --resources {bad}: expected key=value with a "
                                                         "key of nodes, gpus"), r.stderr


@pytest.mark.parametrize("backend", ["sqlite", "mariadb", "postgresql"])
def test_search_tokens_times_and_sort_on_every_database(backend, tmp_path):
    """The SQL behind --resources (concatenation, ILIKE with an escape), --since/--until and --sort on each
    backend (ledger_dbs skips a server that is not running)."""
    from support.ledger_dbs import fresh_database

    from hpcft.ledger.store import Ledger

    with fresh_database(backend, tmp_path) as url:
        ledger = Ledger(url)
        now = datetime.now(timezone.utc)
        a = ledger.create_job(name="b", owner="zoe", resource_spec="nodes=1 gpus=8 partition=gpu_a",
                              created_at=now - timedelta(hours=1))
        b = ledger.create_job(name="a", owner="al", resource_spec="nodes=1 gpus=80 partition=gpuxa",
                              created_at=now - timedelta(hours=3))

        def found(**search):
            return [j.id for j in ledger.search(**search)]

        assert found(resources="gpus=8") == [a.id] and found(resources=["GPUS=80"]) == [b.id]
        assert found(resources=["partition=gpu_a"]) == [a.id] and found(resources=["nodes=1"]) == [a.id, b.id]
        assert found(resources=["partition=gpu%"]) == [] and found(resources=["gpus=8", "nodes=2"]) == []
        assert found(since=now - timedelta(hours=2)) == [a.id] and found(until=now - timedelta(hours=2)) == [b.id]
        assert found(sort=["name"]) == [b.id, a.id] and found(sort=["-user"]) == [a.id, b.id]
        assert found(sort=["created"]) == [b.id, a.id] and found() == [a.id, b.id]
        c = ledger.create_job(name="50%_off!", owner="al", resource_spec="nodes=2 gpus=0", output_dir="/r/X_1",
                              created_at=now - timedelta(minutes=5))
        assert found(name="%_OFF!") == [c.id] and found(name="0_") == [] and found(output="x_1") == [c.id]
        assert found(since=(now - timedelta(hours=2)).astimezone(timezone(timedelta(hours=-7)))) == [c.id, a.id]
        assert found(ids=[a.id, c.id], sort=["id"]) == [a.id, c.id] and found(limit=1, sort=["name"]) == [c.id]
        if backend != "mariadb":  # `hpcft list` reads SQLite and PostgreSQL without SQLAlchemy: the same answers
            from hpcft.ledger import fastread as ledger_read
            from hpcft.ledger.jobjson import job_dict

            os.environ["HPCFT_DB_URL"] = url
            try:
                for search in ({}, {"resources": ["gpus=8"]}, {"resources": ["NODES=1", "partition=gpu_a"]},
                               {"name": "%_off"}, {"output": "X_"}, {"since": now - timedelta(hours=2)},
                               {"until": (now - timedelta(hours=2)).replace(tzinfo=None)}, {"sort": ["-user", "name"]},
                               {"state": ["queued"], "owner": "al", "limit": 1}, {"ids": [b.id, c.id]},
                               {"project": "nope"}, {"executor": "local", "sort": ["created"], "limit": 2}):
                    fast = ledger_read.search(**search)
                    assert fast is not None, search
                    assert [job_dict(j) for j in fast] == [job_dict(j) for j in ledger.search(**search)], search
            finally:
                del os.environ["HPCFT_DB_URL"]


def test_list_resource_keys_are_those_of_the_resource_spec():
    from omegaconf import OmegaConf

    from hpcft.cli.jobs import RESOURCE_KEYS
    from hpcft.ledger.record import resource_spec
    from hpcft.config.schema import ResourcesConfig

    r = OmegaConf.structured(ResourcesConfig(name="x", account="a", nodelist="n1", reservation="r", constraint="c"))
    assert tuple(tok.split("=")[0] for tok in resource_spec(r).split()) == RESOURCE_KEYS


def test_list_since_until(hpcft_home):
    now = datetime.now(timezone.utc)
    old = row(name="old", created_at=now - timedelta(days=10))
    mid = row(name="mid", created_at=now - timedelta(hours=5))
    new = row(name="new", created_at=now - timedelta(minutes=1))
    assert ids("--since", "1h") == [new.id]
    assert ids("--since", "1d", "--until", "2h") == [mid.id]
    assert in_ledger(since=now - timedelta(days=3)) == [new.id, mid.id]
    assert in_ledger(until=now - timedelta(days=3)) == [old.id]
    assert in_ledger(since=(now - timedelta(hours=1)).replace(tzinfo=None)) == [new.id]  # naive = UTC
    day = (now - timedelta(days=10)).astimezone()  # --since takes local time
    assert ids("--since", day.strftime("%Y-%m-%d"), "--until", (day + timedelta(days=1)).strftime("%Y-%m-%d")) \
        == [old.id]
    assert ids("--since", (now - timedelta(hours=6)).isoformat()) == [new.id, mid.id]  # with an offset
    bad = run(["list", "--since", "yesterday"])
    assert bad.returncode == 1 and bad.stderr.startswith("error: --since yesterday: not a date or a time ago")


def test_list_sort(hpcft_home):
    now = datetime.now(timezone.utc)
    a = row(name="b-job", state="success", owner="zoe", created_at=now - timedelta(hours=1))
    b = row(name="a-job", state="error", owner="al", created_at=now - timedelta(hours=3))
    c = row(name="c-job", state="running", owner="max", created_at=now - timedelta(hours=2))
    assert ids() == [a.id, c.id, b.id]  # default: newest first
    assert ids("--sort", "-name") == [c.id, a.id, b.id]
    assert in_ledger(sort=["created"]) == [b.id, c.id, a.id]
    assert in_ledger(sort=["id"]) == [a.id, b.id, c.id]
    assert in_ledger(sort=["-id"]) == [c.id, b.id, a.id]
    assert in_ledger(sort=["name"]) == [b.id, a.id, c.id]
    assert in_ledger(sort=["state"]) == [b.id, c.id, a.id]
    assert in_ledger(sort=["user"]) == [b.id, c.id, a.id]
    d = row(name="a-job", state="error", owner="al", created_at=now)
    assert ids("--sort", "name,created") == [b.id, d.id, a.id, c.id]
    assert ids("--sort", "name", "--sort", "-created", "--limit", "2") == [d.id, b.id]
    assert in_ledger(sort=["name"]) == [d.id, b.id, a.id, c.id]  # ties: newest first
    bad = run(["list", "--sort", "-size"])
    assert bad.returncode == 1 and "--sort -size: unknown key; use one of id, created, name, state, user" in bad.stderr


# the --json schema, version 1: a change here is a change of a documented interface (hpcft/ledger/jobjson.py)
SCHEMA_V1 = {
    "schema_version": int, "id": int, "name": str, "description": str, "owner": str, "project": str, "method": str,
    "state": str, "state_reason": (str, None), "executor": str, "resources": dict, "resource_spec": str,
    "output_dir": str, "slurm_job_id": (str, None), "array_job_id": (str, None), "array_task_id": (int, None),
    "pid": (int, None), "attempt": int, "parent_id": (int, None), "created_at": "datetime",
    "submitted_at": ("datetime", None), "started_at": ("datetime", None), "finished_at": ("datetime", None),
    "updated_at": "datetime", "uuid": (str, None),
}


def _is(value, typ):
    if isinstance(typ, tuple):
        return any(_is(value, t) for t in typ)
    if typ is None:
        return value is None
    if typ == "datetime":
        return isinstance(value, str) and datetime.fromisoformat(value).utcoffset() == timedelta(0)
    return isinstance(value, typ) and not isinstance(value, bool)


def test_list_json_schema_is_pinned(hpcft_home):
    job = recorded_job(["resources.gpus_per_node=2"])
    row(name="bare", state="queued")  # the nullable fields null
    jobs = listed()
    assert isinstance(jobs, list) and len(jobs) == 2  # a top-level array, as scripts read it
    for j in jobs:
        assert list(j) == list(SCHEMA_V1), list(j)
        for key, typ in SCHEMA_V1.items():
            assert _is(j[key], typ), (key, j[key])
        assert j["schema_version"] == 1
    ended = jobs[1]
    assert ended["id"] == job.id and ended["resources"]["gpus_per_node"] == 2 and "config" not in ended
    assert ended["finished_at"] is not None and ended["state_reason"] == "made by the test"
    assert datetime.fromisoformat(ended["finished_at"]) >= datetime.fromisoformat(ended["created_at"])
    schema = json.loads(run(["list", "--json-schema"]).stdout)
    assert schema["type"] == "array" and list(schema["items"]["properties"]) == list(SCHEMA_V1)
    assert schema["items"]["properties"]["parent_id"]["type"] == ["integer", "null"]


# ------------------------------------------------------------------------------------------------------ delete

def test_delete_purge_without_terminal_or_yes_changes_nothing(hpcft_home):
    a, b = recorded_job(), recorded_job(state="error")
    r = run(["delete", str(a.id), str(b.id), "--purge"])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --purge would remove 2 run directories ("), r.stderr
    assert "--yes" in lines[0]
    assert ids() == [b.id, a.id] and Path(a.output_dir).is_dir() and Path(b.output_dir).is_dir()
    assert run(["delete", str(a.id), "--files"]).returncode == 2  # the old name, still accepted


def test_delete_many_purge_yes_removes_run_dirs_only_of_deleted_jobs(hpcft_home, tmp_path):
    a, b, keep = recorded_job(), recorded_job(state="stopped"), recorded_job()
    (Path(a.output_dir) / "checkpoints").mkdir()
    (Path(a.output_dir) / "checkpoints" / "weights.bin").write_bytes(b"x" * 5000)
    r = run(["delete", str(a.id), str(b.id), "--purge", "--yes"])
    assert r.returncode == 0, r.stderr
    assert "deleted 2 job(s), removed 2 run directories" in r.stdout
    assert ids() == [keep.id] and Path(keep.output_dir, "config.yaml").is_file()
    assert not Path(a.output_dir).exists() and not Path(b.output_dir).exists()
    plain = run(["delete", str(keep.id)])  # without --purge the run directory stays
    assert plain.returncode == 0 and "deleted 1 job(s)" in plain.stdout and Path(keep.output_dir).is_dir()


def test_delete_checks_every_job_exists_first(hpcft_home):
    a = recorded_job()
    r = run(["delete", str(a.id), "99", "--purge", "--yes"])
    assert r.returncode == 3 and "job 99" in r.stderr
    assert ids() == [a.id] and Path(a.output_dir).is_dir()


def test_delete_purge_keeps_a_directory_another_job_uses(hpcft_home, tmp_path):
    shared = tmp_path / "shared-run"
    a = recorded_job([f"output_dir={shared}"])
    b = recorded_job()  # a submit refuses another job's output_dir (job.json): a row made before that rule shares it
    from hpcft.ledger.store import Ledger

    Ledger().update(b.id, output_dir=str(shared))
    r = run(["delete", str(a.id), "--purge", "--yes"])
    assert r.returncode == 0, r.stderr
    assert f"keeping {shared}: also the run directory of job(s) {b.id}" in r.stdout
    assert ids() == [b.id] and shared.is_dir()
