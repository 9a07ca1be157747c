import multiprocessing as mp

import pytest

from hpcft.errors import NotFound, StateError
from hpcft.ledger import Ledger
from hpcft.states import State


MARIADB_SOCKET = "/run/mysqld/mysqld.sock"  # started by scripts/slurm-local up (slurmdbd's database)


def _mariadb_url(tmp_path) -> str:
    """A fresh database on the local MariaDB (as root over its socket), or skip."""
    import os
    import subprocess

    if not os.path.exists(MARIADB_SOCKET):
        pytest.skip("no local MariaDB (scripts/slurm-local up starts one)")
    pytest.importorskip("pymysql")
    db = f"hpcft_test_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    r = subprocess.run(["mysql", "-e", f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a MariaDB database: {r.stderr.decode()[:200]}")
    return f"mysql+pymysql://root@localhost/{db}?unix_socket={MARIADB_SOCKET}"


@pytest.fixture(params=["sqlite", "mariadb"])
def ledger(request, tmp_path):
    """The same ledger tests on the embedded default (SQLite) and on a server database (MariaDB)."""
    if request.param == "sqlite":
        yield Ledger(f"sqlite:///{tmp_path}/ledger.db")
        return
    import subprocess

    url = _mariadb_url(tmp_path)
    led = Ledger(url)
    yield led
    led._writer.dispose()
    db = url.split("/")[-1].split("?")[0]
    subprocess.run(["mysql", "-e", f"DROP DATABASE IF EXISTS {db}"], capture_output=True)


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


def test_retry_is_a_new_attempt(ledger):
    j = _job(ledger)
    ledger.transition(j.id, State.error, "boom")
    assert ledger.transition(j.id, State.queued, "retry")
    j = ledger.get(j.id)
    assert j.attempt == 2 and j.finished_at is None


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
