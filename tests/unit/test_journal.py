"""The run directory is the record: the journal (hpcft.rundir.journal), its delivery to the ledger exactly once
(hpcft.ledger.deliver) and the worker's journaled ledger that keeps a job going while the database is down
(hpcft.ledger.courier)."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import datetime, timezone

import pytest

from hpcft.ledger import deliver as D
from hpcft.ledger.courier import JournaledLedger
from hpcft.ledger.store import Ledger
from hpcft.rundir import journal
from hpcft.states import State

DOWN = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"  # nothing listens on port 9: a database that is down


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCFT_RUNS", str(tmp_path / "runs"))
    return Ledger(f"sqlite:///{tmp_path}/ledger.db")


def _job(ledger, tmp_path, name="j"):
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    return ledger.create_job(name=name, output_dir=str(run)), run


def test_append_numbers_records_and_survives_a_torn_line(tmp_path):
    assert journal.last_seq(tmp_path) == 0 and journal.read(tmp_path) == []
    assert journal.append(tmp_path, "event", kind="a") == 1
    assert journal.append(tmp_path, "event", kind="b") == 2
    with open(journal.journal_path(tmp_path), "a") as f:
        f.write('{"seq": 3, "op": "ev')  # a crash in the middle of a write
    assert journal.last_seq(tmp_path) == 2
    assert journal.append(tmp_path, "event", kind="c") == 3  # on a line of its own
    recs = journal.read(tmp_path)
    assert [r["kind"] for r in recs] == ["a", "b", "c"] and [r["seq"] for r in recs] == [1, 2, 3]
    assert [r["kind"] for r in journal.read(tmp_path, after=2)] == ["c"]


def _append_many(run, n):
    for i in range(n):
        journal.append(run, "event", kind="k", data={"i": i})


def test_concurrent_appenders_never_share_a_number(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seqs = [r["seq"] for r in journal.read(tmp_path)]
    assert sorted(seqs) == list(range(1, 201))


def test_delivery_is_exactly_once_with_the_jobs_own_times(ledger, tmp_path):
    job, run = _job(ledger, tmp_path)
    journal.append(run, "state", to="running", reason="started", ts="2026-01-02T03:04:05+00:00", fields={"pid": 7})
    journal.append(run, "event", kind="checkpoint", message="step 10", data={"step": 10},
                   ts="2026-01-02T03:05:00+00:00")
    journal.append(run, "state", to="success", reason="trainer finished", ts="2026-01-02T03:06:00+00:00")
    first = D.deliver(ledger, job.id, run)
    assert first.applied == 3 and first.seq == 3 and first.ended is not None
    again = D.deliver(ledger, job.id, run)  # a second deliverer (sync, a retrying worker) finds nothing left
    assert again.applied == 0
    row = ledger.get(job.id)
    assert row.state == "success" and row.pid == 7 and row.journal_seq == 3
    assert row.started_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert row.finished_at == datetime(2026, 1, 2, 3, 6, tzinfo=timezone.utc)
    kinds = [e.kind for e in ledger.events(job.id)]
    assert kinds.count("checkpoint") == 1 and kinds.count("state") == 2
    ck = [e for e in ledger.events(job.id) if e.kind == "checkpoint"][0]
    assert ck.ts == datetime(2026, 1, 2, 3, 5, tzinfo=timezone.utc)


def test_a_refused_state_change_is_skipped_and_late_progress_is_marked(ledger, tmp_path):
    job, run = _job(ledger, tmp_path)
    ledger.transition(job.id, State.running, "started")
    ledger.transition(job.id, State.stopped, "stopped by user", cause="user_stop")
    journal.append(run, "event", kind="checkpoint", message="checkpoint at step 480", data={"step": 480})
    journal.append(run, "state", to="success", reason="trainer finished")
    D.deliver(ledger, job.id, run)
    row = ledger.get(job.id)
    assert row.state == "stopped" and row.journal_seq == 2  # first terminal state wins; the record is taken
    ck = [e for e in ledger.events(job.id) if e.kind == "checkpoint"][0]
    assert ck.data.get("late") is True and ck.message.startswith("(after the job ended stopped)")


def test_journaled_ledger_keeps_going_while_the_database_is_down(ledger, tmp_path):
    job, run = _job(ledger, tmp_path)
    jl = JournaledLedger(DOWN, job.id, run, job)
    assert jl.transition(job.id, State.running, "started") is None  # not known: in the journal, not refused
    jl.add_event(job.id, "checkpoint", "step 5", step=5)
    assert jl.get(job.id).id == job.id  # the row as last read
    assert [e.kind for e in jl.events(job.id)] == ["checkpoint"]  # from the journal
    assert jl.transition(job.id, State.success, "trainer finished") is None
    assert jl.down and ledger.get(job.id).state == "queued"
    # the database answers again: everything arrives, in order, once
    jl.url, jl._ledger = ledger.url, None
    assert jl.close(linger_s=0) is True
    row = ledger.get(job.id)
    assert row.state == "success" and row.journal_seq == 3
    states = [e.data["to"] for e in ledger.events(job.id) if e.kind == "state"]
    assert states == ["running", "success"]


def test_journaled_transition_reports_a_refusal(ledger, tmp_path):
    job, run = _job(ledger, tmp_path)
    ledger.transition(job.id, State.stopped, "stopped by user")
    jl = JournaledLedger(ledger.url, job.id, run, job)
    assert jl.transition(job.id, State.running, "started") is False
    assert ledger.get(job.id).state == "stopped"


def test_sync_takes_the_journal_and_judges_a_dead_supervisor_by_it(ledger, tmp_path):
    from hpcft.jobs.executors.local import LocalExecutor

    ok, run_ok = _job(ledger, tmp_path, "ok")
    lost, run_lost = _job(ledger, tmp_path, "lost")
    for job in (ok, lost):
        ledger.transition(job.id, State.running, "started", pid=2**22 + 12345)  # a pid no process has
    journal.append(run_ok, "event", kind="finished", message="trainer exited with code 0", data={"exit_code": 0},
                   attempt=1)
    changed = LocalExecutor().sync(ledger, [ledger.get(ok.id), ledger.get(lost.id)])
    assert changed == 2
    assert ledger.get(ok.id).state == "success"
    assert ledger.get(lost.id).state == "error" and ledger.last_cause(lost.id) == "supervisor_gone"
    assert ledger.get(ok.id).journal_seq == 1


def test_trainer_events_go_to_the_journal_first(ledger, tmp_path, monkeypatch):
    from hpcft.train.context import RunContext

    job, run = _job(ledger, tmp_path)
    monkeypatch.setenv("HPCFT_COURIER", "worker")  # a worker delivers: the trainer only journals
    ctx = RunContext(run, job.id, db_url=DOWN)
    ctx.event("checkpoint", "step 3", step=3)  # never raises, whatever the database does
    assert [json.loads(x)["kind"] for x in journal.journal_path(run).read_text().splitlines()] == ["checkpoint"]
    assert D.ahead(ledger.get(job.id))
    monkeypatch.delenv("HPCFT_COURIER")
    ctx2 = RunContext(run, job.id, db_url=ledger.url)  # no worker: it delivers itself
    ctx2.event("epoch", "epoch 1", epoch=1)
    assert [e.kind for e in ledger.events(job.id)].count("checkpoint") == 1
    assert not D.ahead(ledger.get(job.id))


def test_a_state_change_the_courier_delivered_first_still_counts_as_changed(ledger, tmp_path):
    """The courier thread, woken by the event just before, may deliver the state record before `transition` does:
    the transition still reports the change it made (the worker publishes and starts on it)."""
    job, run = _job(ledger, tmp_path)

    class CourierFirst(JournaledLedger):
        def _append(self, op, **fields):
            seq = super()._append(op, **fields)
            if op == "state":
                self.deliver_now()  # what the courier thread does when it wins the lock
            return seq

    jl = CourierFirst(ledger.url, job.id, run, job).start()
    jl.add_event(job.id, "started", "pid 1")
    assert jl.transition(job.id, State.running, "started") is True
    jl.add_event(job.id, "finished", "trainer exited with code 0", exit_code=0)
    assert jl.transition(job.id, State.success, "trainer finished") is True
    assert jl.close(linger_s=0) and ledger.get(job.id).state == "success"


def test_submit_time_events_are_in_the_record_and_the_ledger_once(ledger, tmp_path):
    job, run = _job(ledger, tmp_path)
    D.record_events(ledger, job.id, run, [("submitted", "to the slurm executor", {"executor": "slurm"}),
                                          ("after", "waits for job(s) 3", {"after": [3]})])
    assert [(r["kind"], r["data"]) for r in journal.read(run)] == [("submitted", {"executor": "slurm"}),
                                                                   ("after", {"after": [3]})]
    assert ledger.get(job.id).journal_seq == 2
    D.deliver(ledger, job.id, run)  # the worker's courier after it: nothing twice
    kinds = [e.kind for e in ledger.events(job.id)]
    assert kinds.count("submitted") == 1 and kinds.count("after") == 1
    gone = tmp_path / "not-there"  # a run directory the journal cannot take: straight into the ledger
    D.record_events(ledger, job.id, gone, [("slurm", "submitted as Slurm job 7", {"slurm_job_id": "7"})])
    assert [e.kind for e in ledger.events(job.id)].count("slurm") == 1 and not gone.exists()


def test_rebuild_gives_a_queued_slurm_job_its_slurm_id_back(tmp_path, monkeypatch):
    from hpcft.jobs import rebuild as R
    from hpcft.jobs.executors.slurm import record_slurm_id
    from hpcft.jobs.submit import create_jobs, plan

    monkeypatch.setenv("HPCFT_HOME", str(tmp_path))
    monkeypatch.setenv("HPCFT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("HPCFT_DB_URL", raising=False)
    first = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    p = plan(["+experiment=lora_tiny", "executor=slurm", "name=queued-in-slurm"])
    (job,) = create_jobs(first, p)
    record_slurm_id(first, job, "4242_3", "submitted as Slurm job 4242_3 (array task 3)")
    before = [(e.kind, e.message) for e in first.events(job.id) if e.kind != "created"]
    assert [k for k, _ in before] == ["submitted", "slurm"]

    again = Ledger(f"sqlite:///{tmp_path}/again.db")  # the ledger lost: another one made from the run directories
    out = R.rebuild(again, tmp_path / "runs", everything=True)
    assert out.made == [job.id], out
    row = again.get(job.id)
    assert (row.state, row.slurm_job_id, row.array_job_id, row.array_task_id) == ("queued", "4242_3", "4242", 3)
    assert [(e.kind, e.message) for e in again.events(job.id) if e.kind not in ("created", "rebuilt")] == before
