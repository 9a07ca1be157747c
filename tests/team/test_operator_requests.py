"""The operator path cannot be steered (issue 19): `hpcft admin apply`, run by a Slurm operator, changes a Slurm job
only when Slurm's own record says it runs as the ledger row's owner and the request's author has rw on it; the
database refuses a second row for a Slurm job and a request event from someone without rw (or naming another
author). Real users, the real PostgreSQL with row-level security, the real Slurm cluster; the victim is alice's
`sleep 300` Slurm job.
"""

import subprocess
import time

import pytest

from support.team import ADMIN, ALICE, BOB, CAROL, SOCKDIR, as_user, run_as, team  # noqa: F401

pytestmark = [pytest.mark.team, pytest.mark.slurm]
DB = "hpcft_team_requests_test"
ENV = {"HPCFT_DB_URL": f"postgresql+psycopg:///{DB}?host={SOCKDIR}"}


def hp(user, *args):
    return as_user(user, list(args), env=ENV)


def sql(user, statement):
    r = run_as(user, ["psql", "-X", "-h", SOCKDIR, "-d", DB, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement])
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def root_psql(db, statement):
    return subprocess.run(["psql", "-X", "-h", SOCKDIR, "-d", db, "-c", statement], capture_output=True, text=True,
                          timeout=60)


def insert_job(user, project, slurm_id, executor="slurm"):
    sid = "NULL" if slurm_id is None else f"'{slurm_id}'"
    return sql(user, "INSERT INTO jobs (name, description, owner, project, method, state, executor, resource_spec, "
                     "output_dir, attempt, created_at, updated_at, access, slurm_job_id) VALUES ('j', '', "
                     f"'{user}', '{project}', 'lora', 'running', '{executor}', '', '', 1, now(), now(), 'none', "
                     f"{sid}) RETURNING id")


def insert_request(user, job_id, by, rid, **data):
    extra = "".join(f', "{k}": "{v}"' for k, v in data.items())
    return sql(user, "INSERT INTO events (job_id, ts, kind, message, attempt, data) VALUES "
                     f"({job_id}, now(), 'request', 'x', 1, '{{\"request\": \"{rid}\", \"by\": \"{by}\"{extra}}}')")


def slurm_job(sid):
    out = subprocess.run(["scontrol", "show", "job", "-o", sid], capture_output=True, text=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return fields["TimeLimit"], fields["QOS"]


@pytest.fixture(scope="module")
def victim(team):  # noqa: F811
    """alice's running `sleep 300` Slurm job (1:00:00, QoS normal, account proj-a) and her ledger row for it."""
    root_psql("hpcft", f"DROP DATABASE IF EXISTS {DB}")
    assert root_psql("hpcft", f"CREATE DATABASE {DB}").returncode == 0
    from support import hpcft_cli

    import os

    for args in (["admin", "init"], ["admin", "sync-projects"], ["admin", "grant", ADMIN]):
        r = subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=180,
                           env=dict(os.environ, **ENV))
        assert r.returncode == 0, r.stdout + r.stderr
    r = run_as(ALICE, ["sbatch", "--parsable", "-A", "proj-a", "--qos", "normal", "-t", "1:00:00", "-o", "/dev/null",
                       "--wrap", "sleep 300"])
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip().split(";")[0]
    rc, out, err = insert_job(ALICE, "proj-a", sid)
    assert rc == 0, err
    yield sid, int(out.splitlines()[0])
    subprocess.run(["scancel", sid], capture_output=True, timeout=60)
    time.sleep(1)
    root_psql("hpcft", f"DROP DATABASE IF EXISTS {DB}")


def test_the_database_refuses_a_second_row_and_a_forged_request(victim):
    sid, alices = victim
    rc, _, err = insert_job(CAROL, "proj-b", sid)  # a row of her own carrying alice's Slurm job id
    assert rc != 0 and "ix_jobs_slurm_job_id" in err, err
    rc, _, err = insert_request(CAROL, alices, CAROL, "r0", action="extend", time="05:00:00")
    assert rc != 0 and "row-level security" in err, err
    rc, out, err = insert_job(CAROL, "proj-b", None, executor="local")
    assert rc == 0, err
    own = int(out.splitlines()[0])
    rc, _, err = insert_request(CAROL, own, BOB, "r1", action="stop")  # on her own job, but naming bob its author
    assert rc != 0 and "row-level security" in err, err
    assert insert_request(CAROL, own, CAROL, "r2", action="stop")[0] == 0  # her own, in her own name: fine


def test_a_rw_member_is_applied_and_an_author_without_rw_refused(victim):
    sid, alices = victim
    assert hp(ALICE, "share", str(alices), "rw").returncode == 0
    assert hp(BOB, "extend", str(alices), "--time", "02:00:00").returncode == 0
    r = hp(ADMIN, "admin", "apply")
    assert "1 applied, 0 refused" in r.stdout and f"checked: Slurm job {sid} runs as {ALICE}" in r.stdout, r.stdout
    assert slurm_job(sid) == ("02:00:00", "normal")
    assert hp(BOB, "priority", str(alices), "low").returncode == 0
    assert hp(ALICE, "share", str(alices), "none").returncode == 0  # bob no longer has rw when the operator acts
    r = hp(ADMIN, "admin", "apply")
    assert "0 applied, 1 refused" in r.stdout and f"{BOB} has no access to job {alices}" in r.stdout, r.stdout
    assert slurm_job(sid) == ("02:00:00", "normal")
    rc, out, _ = sql(ALICE, f"SELECT message FROM events WHERE job_id={alices} AND kind='request_refused'")
    assert rc == 0 and f"priority requested by {BOB} refused: {BOB} has no access" in out, out


def test_the_operator_is_not_steered_to_another_users_slurm_job(victim):
    sid, alices = victim
    before = slurm_job(sid)
    # alice's row goes from the ledger; her Slurm job lives on: carol's row may now carry its id
    assert sql(ALICE, f"DELETE FROM events WHERE job_id={alices}; DELETE FROM jobs WHERE id={alices}")[0] == 0
    rc, out, err = insert_job(CAROL, "proj-b", sid)
    assert rc == 0, err
    forged = int(out.splitlines()[0])
    assert insert_request(CAROL, forged, CAROL, "f1", action="extend", time="05:00:00")[0] == 0
    assert insert_request(CAROL, forged, CAROL, "f2", action="priority", level="low")[0] == 0
    r = hp(ADMIN, "admin", "apply")
    assert r.returncode == 0 and "0 applied, 2 refused" in r.stdout, r.stdout + r.stderr
    assert f"runs as {ALICE}, not as the job's owner {CAROL}" in r.stdout, r.stdout
    assert slurm_job(sid) == before  # alice's time limit and QoS untouched
    rc, out, _ = sql(CAROL, f"SELECT kind || ': ' || message FROM events WHERE job_id={forged} ORDER BY id")
    assert f"request_refused: extend requested by {CAROL} refused: Slurm job {sid} runs as {ALICE}" in out, out
    assert out.count("request_done:") == 2, out
