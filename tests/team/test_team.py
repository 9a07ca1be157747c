"""The team ledger end to end: real Unix users (scripts/team-local), the real PostgreSQL with row-level security
(`hpcft admin init`), the real Slurm cluster. The access matrix through the CLI, and the same refusals with raw SQL
as the non-owner (refused by the database itself).

alice and bob are members of Slurm account proj-a, carol of proj-b; hpcft-admin is an administrator and a Slurm
operator. alice owns a finished job F and a running job R (a real Slurm job, training as alice).
"""

import json
import subprocess
import time

import pytest

from support.team import ADMIN, ALICE, BOB, CAROL, SOCKDIR, as_user, run_as, team  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.train, pytest.mark.slow]
DB = "hpcft_team_test"
URL = f"postgresql+psycopg:///{DB}?host={SOCKDIR}"
ENV = {"HPCFT_DB_URL": URL}
SLOW = {**ENV, "HPCFT_TEST_STEP_DELAY_S": "0.5"}
JOB = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", "resources.time=00:10:00"]


def hp(user, *args, env=ENV, timeout=180):
    return as_user(user, list(args), env=env, timeout=timeout)


def sql(user, statement):
    r = run_as(user, ["psql", "-X", "-h", SOCKDIR, "-d", DB, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement])
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def root_hp(*args):
    from support import hpcft_cli

    import os

    env = dict(os.environ, HPCFT_DB_URL=URL)
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=180, env=env)


def state(job_id, user=ALICE):
    r = hp(user, "list", "--json")
    return next(j for j in json.loads(r.stdout) if j["id"] == job_id)


def wait_state(job_id, states, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hp(ALICE, "sync")
        j = state(job_id)
        if j["state"] in states:
            return j
        time.sleep(2)
    raise AssertionError(f"job {job_id} never reached {states}: {j}")


@pytest.fixture(scope="module")
def jobs(team):  # noqa: F811
    for u in (ALICE, BOB, CAROL):  # jobs left by an earlier run
        subprocess.run(["scancel", "-u", u], capture_output=True, timeout=60)
    import shutil

    from support.team import RUNS

    for d in RUNS.glob("*"):  # run directories of an earlier run (job ids start again at 1)
        shutil.rmtree(d, ignore_errors=True)
    for _ in range(30):  # the cancelled jobs' connections go away within seconds
        drop = subprocess.run(["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-c", f"DROP DATABASE IF EXISTS {DB}"],
                              capture_output=True, text=True, timeout=60)
        if drop.returncode == 0:
            break
        time.sleep(2)
    r = subprocess.run(["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-c", f"CREATE DATABASE {DB}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for args in (["admin", "init"], ["admin", "sync-projects"], ["admin", "grant", ADMIN]):
        r = root_hp(*args)
        assert r.returncode == 0, r.stdout + r.stderr
    f = hp(ALICE, "submit", *JOB, "training.max_steps=3", "name=finished", f"notify.urls=[{SECRET_URL}]",
           "notify.timeout=2", "--yes", "--wait", timeout=600)
    assert f.returncode == 0, f.stdout[-2000:] + f.stderr
    r = hp(ALICE, "submit", *JOB, "training.max_steps=2000", "name=running", "--yes", env=SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = {j["name"]: j["id"] for j in json.loads(hp(ALICE, "list", "--json").stdout)}
    wait_state(ids["running"], {"running"})
    yield ids["finished"], ids["running"]
    subprocess.run(["scancel", "-u", ALICE], capture_output=True, timeout=60)


SECRET = "T0pS3cret"
SECRET_URL = f"json://alice:{SECRET}@127.0.0.1:9/"  # a receiver URL with a password (nothing listens: not sent)


def refused(r, *words):
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_private_jobs_are_invisible_to_others_and_the_database_agrees(jobs):
    fin, run = jobs
    for user in (BOB, CAROL):
        refused(hp(user, "show", str(fin)), f"job {fin}: no such job, or you ({user}) have no access")
        assert json.loads(hp(user, "list", "--json").stdout) == []
        assert sql(user, "SELECT count(*) FROM jobs") == (0, "0", "")
        assert sql(user, f"UPDATE jobs SET state='stopped' WHERE id={run}")[1] == "UPDATE 0"
        assert sql(user, f"SELECT count(*) FROM events WHERE job_id={run}")[1] == "0"
    # nobody can record a job as someone else (the role is the Unix user: peer authentication)
    rc, _, err = sql(BOB, "INSERT INTO jobs (name, description, owner, project, method, state, executor, "
                          "resource_spec, output_dir, attempt, created_at, updated_at, access) VALUES ('x', '', "
                          f"'{ALICE}', 'proj-a', 'lora', 'queued', 'local', '', '', 1, now(), now(), 'none')")
    assert rc != 0 and "row-level security" in err
    # the run directory is private too
    out = state(fin)["output_dir"]
    assert run_as(BOB, ["ls", out]).returncode != 0


def test_read_only(jobs):
    fin, run = jobs
    assert hp(ALICE, "share", str(fin), "ro").returncode == 0
    assert hp(ALICE, "share", str(run), "ro").returncode == 0
    for args in (["show", str(fin)], ["logs", str(fin)], ["events", str(fin)], ["curve", str(fin)],
                 ["clone", str(fin), "training.learning_rate=1e-3", "--dry-run"]):
        r = hp(BOB, *args)
        assert r.returncode == 0, (args, r.stderr)
    out = state(fin)["output_dir"]
    assert run_as(BOB, ["cat", f"{out}/config.yaml"]).returncode == 0  # files follow the ledger (ACL)
    assert run_as(BOB, ["touch", f"{out}/bob-was-here"]).returncode != 0
    for args in (["stop", str(run)], ["extend", str(run), "--time", "00:20:00"], ["priority", str(run), "high"],
                 ["resume", str(fin)], ["delete", str(fin)], ["share", str(fin), "rw"]):
        refused(hp(BOB, *args), f"(owner {ALICE}, project proj-a): you ({BOB}) have read-only access",
                "you may clone, curve, events, logs, monitor, show, top it")
    refused(hp(CAROL, "show", str(fin)), "no such job")  # another project: still nothing
    # alice's receivers (a URL with a password) stay hers: not in the ledger, config.yaml or bob's show --config
    assert SECRET not in sql(BOB, f"SELECT config::text FROM jobs WHERE id={fin}")[1]
    assert SECRET not in run_as(BOB, ["cat", f"{out}/config.yaml"]).stdout
    assert run_as(BOB, ["cat", f"{out}/.secrets.json"]).returncode != 0
    assert SECRET not in hp(BOB, "show", str(fin), "--config").stdout
    assert SECRET in hp(ALICE, "show", str(fin), "--config").stdout
    # raw SQL: visible, not changeable
    assert sql(BOB, f"SELECT name FROM jobs WHERE id={fin}")[1] == "finished"
    assert sql(BOB, f"UPDATE jobs SET state='error' WHERE id={fin}")[1] == "UPDATE 0"
    assert sql(BOB, f"DELETE FROM jobs WHERE id={fin}")[1] == "DELETE 0"
    assert sql(BOB, f"INSERT INTO events (job_id, ts, kind, message, attempt) VALUES ({fin}, now(), 'stop', '', 1)"
               )[0] != 0


def test_read_write_requests_reach_the_owners_job(jobs):
    fin, run = jobs
    assert hp(ALICE, "share", str(run), "rw").returncode == 0
    # a time limit and a priority: requests an operator's `hpcft admin apply` carries out
    r = hp(BOB, "extend", str(run), "--time", "00:20:00")
    assert r.returncode == 0 and f"runs as {ALICE}" in r.stdout and "hpcft admin apply" in r.stdout, r.stdout
    r = hp(BOB, "priority", str(run), "high")
    assert r.returncode == 0 and "requested" in r.stdout, r.stdout
    r = hp(ADMIN, "admin", "apply")
    assert r.returncode == 0 and "carried out 2 request(s)" in r.stdout, r.stdout + r.stderr
    sid = state(run)["slurm_job_id"]
    show = subprocess.run(["scontrol", "show", "job", sid], capture_output=True, text=True).stdout
    assert "TimeLimit=00:20:00" in show, show
    # each request is closed with its outcome (Slurm may refuse a QoS change of a running job: that is said too)
    done = [e for e in json.loads(hp(BOB, "events", str(run), "--json").stdout) if e["kind"] == "request_done"]
    assert len(done) == 2 and any("time limit now 00:20:00" in e["message"] for e in done), done
    assert hp(ADMIN, "admin", "apply").stdout.strip().endswith("carried out 0 request(s): 0 applied, 0 refused")
    # the database refuses what the rules refuse, also to a read-write member
    rc, _, err = sql(BOB, f"UPDATE jobs SET access='none' WHERE id={run}")
    assert rc != 0 and "only its owner may change its access" in err
    # stop: the job's own worker (running as alice) carries it out within seconds
    r = hp(BOB, "stop", str(run))
    assert r.returncode == 0 and "stop requested (recorded)" in r.stdout, r.stdout
    j = wait_state(run, {"stopped", "error", "success", "expired"}, timeout=120)
    assert j["state"] == "stopped" and f"at the request of {BOB}" in j["state_reason"], j
    # delete (an ended job) is read-write too
    assert hp(ALICE, "share", str(fin), "rw").returncode == 0
    assert hp(BOB, "delete", str(fin)).returncode == 0
    assert sql(ALICE, f"SELECT count(*) FROM jobs WHERE id={fin}")[1] == "0"


def test_sharing_off_and_a_private_parent(jobs):
    _, run = jobs
    assert hp(ADMIN, "admin", "sharing", "off").returncode == 0
    try:
        refused(hp(BOB, "show", str(run)), "no such job")
        assert sql(BOB, "SELECT count(*) FROM jobs")[1] == "0"
        assert hp(ADMIN, "show", str(run)).returncode == 0  # administrators see everything
    finally:
        assert hp(ADMIN, "admin", "sharing", "on").returncode == 0
    # a job may not be more open than its parent: alice's private parent, a child shared ro
    assert hp(ALICE, "share", str(run), "none").returncode == 0
    rc, _, err = sql(ALICE, "INSERT INTO jobs (name, description, owner, project, method, state, executor, "
                            "resource_spec, output_dir, attempt, created_at, updated_at, access, parent_id) VALUES "
                            f"('child', '', '{ALICE}', 'proj-a', 'lora', 'queued', 'local', '', '', 1, now(), now(), "
                            f"'ro', {run})")
    assert rc != 0 and "more open than its parent" in err, err
