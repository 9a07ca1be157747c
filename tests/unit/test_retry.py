"""`hpcft retry` for cron: only transient failures, with a backoff, never a double submission.

In-process tests use an executor whose submissions are recorded; the race runs two real `hpcft retry` processes on
one SQLite ledger with the real local executor; the requeue test is in tests/cluster/test_slurm_cluster.py.
"""

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from hpcft.jobs import control as jobctl
from hpcft.errors import HpcftError, SchedulerError
from hpcft.ledger.store import Ledger
from hpcft.states import State, exit_cause, is_cause

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------------ classification

@pytest.mark.parametrize("cause,default,with_oom,with_codes,with_expired", [
    ("node_fail", True, True, True, True),
    ("preempted", True, True, True, True),
    ("boot_fail", True, True, True, True),
    ("oom", False, True, False, False),
    ("exit:1", False, False, True, False),
    ("exit:137", False, False, True, False),
    ("signal:9", False, False, True, False),  # 128 + 9 = 137, as a shell reports a SIGKILL
    ("signal:15", False, False, False, False),
    ("exit:3", False, False, False, False),
    ("timeout", False, False, False, True),
    ("exit:75", False, False, False, True),  # saved a checkpoint at the time-limit warning
    ("user_stop", False, False, False, False),
    ("bad_input", False, False, False, False),
    ("exit:2", False, False, False, False),
    ("submit_failed", False, False, False, False),
    ("supervisor_gone", False, False, False, False),
    ("requeued", False, False, False, False),
    (None, False, False, False, False),  # a failure recorded without a cause
])
def test_which_causes_are_retried(cause, default, with_oom, with_codes, with_expired):
    def verdict(**kw):
        return jobctl.retry_verdict(cause, **kw)[0]

    assert verdict() is default
    assert verdict(oom=True) is with_oom
    assert verdict(exit_codes=[1, 137]) is with_codes
    assert verdict(time_limit=True) is with_expired
    assert cause is None or is_cause(cause)


def test_exit_codes_option_and_exit_causes():
    assert jobctl.parse_exit_codes("1, 137") == [1, 137] and jobctl.parse_exit_codes("") == []
    with pytest.raises(HpcftError, match="config or the data"):
        jobctl.parse_exit_codes("1,2")
    with pytest.raises(HpcftError, match="not an exit code"):
        jobctl.parse_exit_codes("x")
    assert [exit_cause(rc) for rc in (1, 2, 75, -9)] == ["exit:1", "bad_input", "exit:75", "signal:9"]


def test_backoff_doubles_per_attempt():
    assert [jobctl.backoff_s(300, a) for a in (1, 2, 3)] == [300, 600, 1200]


# ------------------------------------------------------------------------------------------------ retry_failed

class Recorder:
    """An executor that records submissions (and refuses the jobs named in `refuse`)."""

    name = "local"

    def __init__(self, refuse=()):
        self.submitted, self.refuse = [], set(refuse)

    def submit(self, ledger, jobs):
        for j in jobs:
            if j.id in self.refuse:
                raise SchedulerError("sbatch: error: Batch job submission failed: Invalid account")
            self.submitted.append((j.id, j.attempt))
        return [ledger.update(j.id, slurm_job_id=f"9{j.id}") for j in jobs]


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path}/ledger.db")


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr("hpcft.jobs.executors.get_executor", lambda name: rec)
    return rec


def failed_job(ledger, tmp_path, cause, state=State.error, ended_s_ago=3600.0, attempt=1, name="j"):
    out = tmp_path / f"run-{name}-{cause}-{time.monotonic_ns()}"
    out.mkdir()
    job = ledger.create_job(name=name, executor="local", output_dir=str(out), attempt=attempt,
                            config={"name": name, "training": {"resume_from": None}}, slurm_job_id="41")
    ledger.transition(job.id, State.running, "started")
    ledger.transition(job.id, state, f"failed: {cause}", cause=cause)
    return ledger.update(job.id, finished_at=NOW - timedelta(seconds=ended_s_ago))


def test_retry_resubmits_transient_failures_once(ledger, tmp_path, recorder):
    nf = failed_job(ledger, tmp_path, "node_fail")
    pre = failed_job(ledger, tmp_path, "preempted")
    never = [failed_job(ledger, tmp_path, c) for c in ("user_stop", "bad_input", "exit:2", "submit_failed", "oom",
                                                       "exit:1", None)]
    stopped = failed_job(ledger, tmp_path, "user_stop", state=State.stopped)
    report = jobctl.retry_failed(ledger, 3, ["error", "stopped"], now=NOW)
    assert report.resubmitted == [nf.id, pre.id] and recorder.submitted == [(nf.id, 2), (pre.id, 2)]
    assert sorted(report.not_retryable) == sorted([j.id for j in never] + [stopped.id])
    assert report.summary() == (f"retry: 2 resubmitted ({nf.id}, {pre.id}); 0 waiting for backoff; "
                                "8 not retryable; 0 failed to submit") and report.exit_code == 0
    got = ledger.get(nf.id)
    assert (got.state, got.attempt, got.slurm_job_id) == ("queued", 2, f"9{nf.id}")
    assert got.state_reason == "retry 2/3 after node_fail" and got.config["training"]["resume_from"] == "latest"
    assert (tmp_path / got.output_dir / "config.yaml").read_text().count("resume_from: latest") == 1
    assert ledger.last_cause(nf.id) == "node_fail"
    # a second run finds nothing to do: the resubmitted jobs are queued now
    again = jobctl.retry_failed(ledger, 3, ["error"], now=NOW)
    assert again.resubmitted == [] and len(recorder.submitted) == 2


def test_opt_in_causes(ledger, tmp_path, recorder):
    oom = failed_job(ledger, tmp_path, "oom")
    one = failed_job(ledger, tmp_path, "exit:1")
    killed = failed_job(ledger, tmp_path, "signal:9")
    timeout = failed_job(ledger, tmp_path, "timeout", state=State.expired)
    report = jobctl.retry_failed(ledger, 3, ["error"], oom=True, exit_codes=[1, 137], now=NOW)
    assert report.resubmitted == [oom.id, one.id, killed.id]
    assert jobctl.retry_failed(ledger, 3, ["expired"], now=NOW).resubmitted == [timeout.id]


def test_backoff_and_max_attempts(ledger, tmp_path, recorder):
    fresh = failed_job(ledger, tmp_path, "node_fail", ended_s_ago=200)  # attempt 1: waits 300 s
    ready = failed_job(ledger, tmp_path, "node_fail", ended_s_ago=400)
    second = failed_job(ledger, tmp_path, "node_fail", ended_s_ago=400, attempt=2)  # attempt 2: waits 600 s
    third = failed_job(ledger, tmp_path, "node_fail", ended_s_ago=700, attempt=2)
    spent = failed_job(ledger, tmp_path, "node_fail", ended_s_ago=10_000, attempt=3)  # no attempts left
    report = jobctl.retry_failed(ledger, 3, ["error"], backoff=300, now=NOW)
    assert report.resubmitted == [ready.id, third.id]
    assert report.waiting == [fresh.id, second.id] and report.not_retryable == [spent.id]
    assert "2 waiting for backoff; 1 not retryable" in report.summary()
    later = jobctl.retry_failed(ledger, 3, ["error"], backoff=300, now=NOW + timedelta(seconds=300))
    assert later.resubmitted == [fresh.id, second.id]


def test_a_refused_resubmission_does_not_stop_the_batch(ledger, tmp_path, recorder):
    a, bad, c = (failed_job(ledger, tmp_path, "node_fail") for _ in range(3))
    recorder.refuse.add(bad.id)
    report = jobctl.retry_failed(ledger, 3, ["error"], now=NOW)
    assert report.resubmitted == [a.id, c.id] and report.failed == [bad.id] and report.exit_code == 1
    assert report.summary().endswith(f"1 failed to submit ({bad.id})")
    got = ledger.get(bad.id)
    assert (got.state, got.attempt, ledger.last_cause(bad.id)) == ("error", 2, "submit_failed")
    assert any(e.kind == "retry" and "Invalid account" in e.message for e in ledger.events(bad.id))
    # never retried again: submitting it cannot succeed until someone fixes it
    assert bad.id in jobctl.retry_failed(ledger, 3, ["error"], now=NOW + timedelta(days=1)).not_retryable


def test_resume_uses_the_claim(ledger, tmp_path, recorder):
    job = failed_job(ledger, tmp_path, "user_stop", state=State.stopped)
    stale = ledger.get(job.id)
    jobctl.resume(ledger, job.id)
    assert ledger.get(job.id).attempt == 2 and recorder.submitted == [(job.id, 2)]
    ledger.transition(job.id, State.error, "failed again")
    assert not ledger.claim(stale.id, stale.state, stale.attempt, "a racing resume that read the old row")


def test_retry_one_is_a_resume_recorded_after_the_cause(ledger, tmp_path, recorder):
    """The console's Retry of one job: resubmitted from its latest checkpoint whatever the cause (a person chose
    it), recorded as a retry after that cause; only for a failed or expired job."""
    job = failed_job(ledger, tmp_path, "oom")
    done = jobctl.retry_one(ledger, job.id)
    assert (done.attempt, done.state, recorder.submitted) == (2, "queued", [(job.id, 2)])
    assert any("retry 2 after oom" in e.message for e in ledger.events(job.id))
    stopped = failed_job(ledger, tmp_path, "user_stop", state=State.stopped)
    with pytest.raises(HpcftError, match=f"job {stopped.id} is stopped: only a failed .error. or expired job"):
        jobctl.retry_one(ledger, stopped.id)
    with pytest.raises(HpcftError, match="only a failed"):
        jobctl.retry_one(ledger, job.id)  # queued again now
    assert recorder.submitted == [(job.id, 2)]


def test_cli_summary_and_exit_code(hpcft_home, recorder, tmp_path):
    from typer.testing import CliRunner

    from hpcft.cli import app

    led = Ledger()
    ok = failed_job(led, tmp_path, "preempted")
    bad = failed_job(led, tmp_path, "node_fail")
    recorder.refuse.add(bad.id)
    r = CliRunner().invoke(app, ["retry", "--backoff", "0"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"retry: 1 resubmitted ({ok.id}); 0 waiting for backoff; 0 not retryable; 1 failed to submit ({bad.id})"]
    r = CliRunner().invoke(app, ["retry", "--exit-codes", "2"])
    assert r.exit_code != 0 and "config or the data" in str(r.exception)


# ------------------------------------------------------------------------------------------------ two crons at once

RACER = """
import os, sys, time
import hpcft.ledger.store as L
barrier, n = sys.argv[1], int(sys.argv[2])
read = L.Ledger.causes
def causes(self, ids):  # both processes have read every failed job before either claims one
    out = read(self, ids)
    open(f"{barrier}.{os.getpid()}", "w").close()
    deadline = time.monotonic() + 60
    while len([f for f in os.listdir(os.path.dirname(barrier)) if f.startswith(os.path.basename(barrier))]) < n:
        if time.monotonic() > deadline:
            raise SystemExit("barrier timeout")
        time.sleep(0.01)
    return out
L.Ledger.causes = causes
sys.argv = ["hpcft", "retry", "--backoff", "0"]
from hpcft.cli import main
main()
"""


def test_two_retry_processes_at_once_submit_each_job_once(hpcft_home, tmp_path):
    led = Ledger()
    jobs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        (out / "logs").mkdir(parents=True)
        # a config the trainer refuses at once (unknown method, no torch): each submission is a short, real run
        job = led.create_job(name=f"race{i}", executor="local", output_dir=str(out),
                             config={"name": f"race{i}", "method": {"name": "none"}, "training": {},
                                     "output_dir": str(out)})
        led.transition(job.id, State.error, "Slurm NODE_FAIL", cause="node_fail")
        jobs.append(job)
    barrier = str(tmp_path / "barrier" / "ready")
    os.makedirs(os.path.dirname(barrier))
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, barrier, "2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    won, taken = [], []
    for stdout, _ in outs:
        (line,) = stdout.strip().splitlines()  # one summary line each
        m = re.match(r"retry: (\d+) resubmitted(?: \(([\d, ]+)\))?; 0 waiting for backoff; 0 not retryable; "
                     r"0 failed to submit(?:; (\d+) taken by another retry \(([\d, ]+)\))?$", line)
        assert m, line
        won += [int(x) for x in (m.group(2) or "").split(",") if x.strip()]
        taken += [int(x) for x in (m.group(4) or "").split(",") if x.strip()]
    assert sorted(won) == sorted(taken) == [j.id for j in jobs]  # each job: one winner, one loser
    for job in jobs:
        evs = led.events(job.id)
        assert led.get(job.id).attempt == 2
        assert sum(e.kind == "state" and e.data.get("to") == "queued" for e in evs) == 1
    # one supervisor per job (the local executor records its pid; the supervisor records `started`)
    deadline = time.monotonic() + 60
    while any(led.get(j.id).state in ("queued", "running") for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for job in jobs:
        assert sum(e.kind == "started" for e in led.events(job.id)) == 1
        assert led.get(job.id).state == "error" and led.get(job.id).attempt == 2
