import multiprocessing as mp

import pytest

from hpcft.errors import NotFound, StateError
from hpcft.ledger.store import Ledger
from hpcft.states import State
from support.ledger_dbs import BACKENDS, fresh_database


@pytest.fixture(params=BACKENDS)
def ledger(request, tmp_path):
    """The same ledger tests on the embedded default (SQLite) and on the server databases (MariaDB, PostgreSQL)."""
    with fresh_database(request.param, tmp_path) as url:
        yield Ledger(url)


def _job(ledger, **kw):
    base = dict(name="t", method="lora", executor="local", resource_spec="nodes=1 gpus=0", output_dir="/tmp/x")
    base.update(kw)
    return ledger.create_job(**base)


def test_create_get_search(ledger):
    a = _job(ledger, name="alpha-run", owner="ann", resource_spec="nodes=2 gpus=8", output_dir="/data/a")
    b = _job(ledger, name="beta", owner="bob", project="p2")
    assert ledger.get(a.id).name == "alpha-run"
    assert [j.id for j in ledger.search(name="ALPHA")] == [a.id]
    assert [j.id for j in ledger.search(owner="bob")] == [b.id]
    assert [j.id for j in ledger.search(project="p2")] == [b.id]
    assert [j.id for j in ledger.search(resources="gpus=8")] == [a.id]
    assert [j.id for j in ledger.search(output="/data/")] == [a.id]
    assert [j.id for j in ledger.search(state=["queued"])] == [b.id, a.id]
    with pytest.raises(NotFound):
        ledger.get(999)


def test_transition_records_event_and_times(ledger):
    j = _job(ledger)
    assert ledger.transition(j.id, State.running, "go")
    assert not ledger.transition(j.id, State.running)  # same state: no-op, no event
    assert ledger.transition(j.id, State.success, "done")
    j = ledger.get(j.id)
    assert j.state == "success" and j.started_at and j.finished_at and j.state_reason == "done"
    kinds = [(e.kind, e.data.get("to")) for e in ledger.events(j.id)]
    assert kinds == [("created", None), ("state", "running"), ("state", "success")]


def test_first_terminal_state_wins(ledger):
    j = _job(ledger)
    ledger.transition(j.id, State.running)
    assert ledger.transition(j.id, State.stopped, "stopped by user")
    assert not ledger.transition(j.id, State.error, "killed")
    assert ledger.get(j.id).state == "stopped"
    with pytest.raises(StateError):
        ledger.transition(j.id, State.success, strict=True)


def test_retry_is_a_new_attempt_taken_only_by_claim(ledger):
    j = _job(ledger)
    ledger.transition(j.id, State.error, "boom")
    # a late writer (a sync that saw the job live) cannot resurrect an ended job with a plain transition
    assert not ledger.transition(j.id, State.queued, "requeued by Slurm")
    with pytest.raises(StateError):
        ledger.transition(j.id, State.queued, strict=True)
    assert ledger.get(j.id).attempt == 1
    assert ledger.claim(j.id, State.error, 1, "retry")
    j = ledger.get(j.id)
    assert j.attempt == 2 and j.finished_at is None and j.state == "queued"


def test_delete_many(ledger):
    ids = [_job(ledger).id for _ in range(3)]
    ledger.add_event(ids[0], "x", "y")
    assert ledger.delete(ids[:2]) == 2
    assert [j.id for j in ledger.search()] == [ids[2]]


def _hammer(url, job_ids, n):
    led = Ledger(url)
    for i in range(n):
        for jid in job_ids:
            led.add_event(jid, "tick", str(i))
        led.transition(job_ids[i % len(job_ids)], State.running)


def test_concurrent_processes(ledger):
    ids = [_job(ledger).id for _ in range(4)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(ledger.url, ids, 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for jid in ids:
        evs = ledger.events(jid)
        assert sum(e.kind == "tick" for e in evs) == 100  # nothing lost
        assert sum(e.kind == "state" for e in evs) == 1  # exactly one process won the transition


def test_transition_records_the_cause(ledger):
    a, b, c = _job(ledger), _job(ledger), _job(ledger)
    ledger.transition(a.id, State.running)
    assert ledger.transition(a.id, State.error, "Slurm NODE_FAIL", cause="node_fail")
    ledger.transition(b.id, State.error, "boom")
    assert ledger.last_cause(a.id) == "node_fail" and ledger.last_cause(b.id) is None
    assert ledger.causes([a.id, b.id, c.id]) == {a.id: "node_fail", b.id: None, c.id: None}
    assert ledger.events(a.id)[-1].data["cause"] == "node_fail"
    assert not ledger.transition(a.id, State.stopped, "late", cause="user_stop")  # refused: cause unchanged
    assert ledger.last_cause(a.id) == "node_fail"


def test_claim_is_a_compare_and_set(ledger):
    j = _job(ledger, slurm_job_id="77_1", array_job_id="77", array_task_id=1, pid=4242)
    with pytest.raises(StateError):
        ledger.claim(j.id, State.queued, 1, "not ended")
    ledger.transition(j.id, State.error, "Slurm NODE_FAIL", cause="node_fail")
    assert not ledger.claim(j.id, State.expired, 1, "wrong state")
    assert not ledger.claim(j.id, State.error, 2, "wrong attempt")
    assert ledger.claim(j.id, State.error, 1, "retry 2/3 after node_fail", cause="node_fail",
                        config={"training": {"resume_from": "latest"}})
    assert not ledger.claim(j.id, State.error, 1, "again")  # the loser
    got = ledger.get(j.id)
    assert (got.state, got.attempt, got.state_reason) == ("queued", 2, "retry 2/3 after node_fail")
    assert got.finished_at is None and got.config == {"training": {"resume_from": "latest"}}
    assert (got.slurm_job_id, got.array_job_id, got.array_task_id, got.pid) == (None, None, None, None)
    last = ledger.events(j.id)[-1]
    assert (last.kind, last.attempt, last.data["from"], last.data["to"], last.data["cause"]) == (
        "state", 2, "error", "queued", "node_fail")


def _claim_race(url, job_ids, barrier_path, out_path):
    import os
    import time

    led = Ledger(url)
    jobs = [led.get(j) for j in job_ids]  # everyone reads the same (state, attempt) before anyone writes
    open(f"{barrier_path}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(barrier_path):
        time.sleep(0.005)
    for job in jobs:
        if led.claim(job.id, job.state, job.attempt, f"retry by {os.getpid()}", cause="node_fail"):
            with open(out_path, "a") as f:  # "submit": one line per winner
                f.write(f"{job.id}\n")


def test_concurrent_claims_each_job_exactly_once(ledger, tmp_path):
    ids = []
    for _ in range(6):
        j = _job(ledger)
        ledger.transition(j.id, State.error, "Slurm NODE_FAIL", cause="node_fail")
        ids.append(j.id)
    barrier, out = tmp_path / "go", tmp_path / "submitted"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_claim_race, args=(ledger.url, ids, str(barrier), str(out))) for _ in range(3)]
    for p in procs:
        p.start()
    import time

    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)  # all have read the jobs and wait at the barrier
    barrier.write_text("go")
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(int(x) for x in out.read_text().split()) == ids  # one submission per job
    for jid in ids:
        assert ledger.get(jid).attempt == 2 and ledger.get(jid).state == "queued"
        assert sum(e.kind == "state" and e.data.get("to") == "queued" for e in ledger.events(jid)) == 1


# ------------------------------------------------------------------------------------------ PostgreSQL access
# scripts/postgres-local: peer authentication on the Unix socket (the role IS the Unix user), scram passwords over TCP
# from PGPASSWORD or ~/.pgpass (never in the URL or a file of ours).


def _pg_connect_error(url, **env):
    """None when `Ledger(url)` works in a fresh process with this environment, else its stderr."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environ.update(env)
    code = f"from hpcft.ledger.store import Ledger; print(len(Ledger({url!r}).search()))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    return None if r.returncode == 0 else r.stderr


def test_postgres_socket_is_peer_authenticated(tmp_path):
    import getpass

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from support.ledger_dbs import drop_database, new_database

    url = new_database("postgresql", tmp_path)
    try:
        u = make_url(url)
        if u.host or "host" not in u.query:
            pytest.skip("HPCFT_TEST_PG_URL is not a Unix-socket URL")
        eng = create_engine(u)
        with eng.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user").scalar() == getpass.getuser()
        eng.dispose()
        other = "postgres" if getpass.getuser() != "postgres" else "root"
        # naming another role, in the URL or in the environment, is refused by the server
        assert "Peer authentication failed" in _pg_connect_error(u.set(username=other).render_as_string(False))
        assert "Peer authentication failed" in _pg_connect_error(url, PGUSER=other)
    finally:
        drop_database(url)


def test_postgres_tcp_password_from_environment_or_pgpass(tmp_path, monkeypatch):
    import os
    import secrets

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from support.ledger_dbs import pg_admin_engine, drop_database, new_database

    url = new_database("postgresql", tmp_path)
    db = make_url(url).database
    role, password = f"hpcft_tcp_{os.getpid()}", secrets.token_urlsafe(18)
    admin = pg_admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    in_db = create_engine(url, isolation_level="AUTOCOMMIT")
    with in_db.connect() as conn:
        conn.exec_driver_sql(f"GRANT CREATE ON SCHEMA public TO {role}")  # PostgreSQL 15: only the owner by default
    in_db.dispose()
    tcp = f"postgresql+psycopg://{role}@{os.environ.get('HPCFT_TEST_PG_TCP', '127.0.0.1:5432')}/{db}"
    try:
        monkeypatch.setenv("PGPASSWORD", password)
        led = Ledger(tcp)
        job = _job(led, owner=role)
        with led._writer.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user, inet_server_addr() IS NOT NULL").one() == (role, True)
        monkeypatch.delenv("PGPASSWORD")

        pgpass = tmp_path / "pgpass"
        pgpass.write_text(f"*:*:{db}:{role}:{password}\n")
        pgpass.chmod(0o600)
        assert _pg_connect_error(tcp, PGPASSFILE=str(pgpass)) is None  # what ~/.pgpass does for a user
        assert _pg_connect_error(tcp, PGPASSWORD=password) is None
        assert "password authentication failed" in _pg_connect_error(tcp, PGPASSWORD="wrong")
        assert "no password supplied" in _pg_connect_error(tcp, PGPASSFILE=str(tmp_path / "none"))
        assert Ledger(tcp).get(job.id).owner == role
    finally:
        drop_database(tcp)
        drop_database(url)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def test_one_live_row_per_slurm_job(ledger):
    """Migration 0006: a second queued/running row carrying a live job's Slurm id is refused by the database (how an
    operator's `admin apply` could be pointed at someone else's job); ended rows may share an id, as Slurm's ids come
    back after a cluster is remade. MariaDB has no partial index: there `admin apply` checks Slurm's own record."""
    from sqlalchemy.exc import IntegrityError

    a = ledger.create_job(name="a", executor="slurm", slurm_job_id="77")
    if ledger.url.startswith(("postgresql", "sqlite")):
        with pytest.raises(IntegrityError):
            ledger.create_job(name="forged", executor="slurm", slurm_job_id="77")
    ledger.transition(a.id, State.running, "started")
    ledger.transition(a.id, State.success, "done")
    b = ledger.create_job(name="b", executor="slurm", slurm_job_id="77")  # the id again, after a reinstall
    assert ledger.get(b.id).slurm_job_id == ledger.get(a.id).slurm_job_id == "77"
