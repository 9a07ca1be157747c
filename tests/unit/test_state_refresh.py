"""Read commands refresh live Slurm jobs (hpcft.jobs.refresh): rate-limited, nothing for ended or local jobs, never
failing when Slurm does not answer. A fake `sacct` on PATH logs its calls and answers what the test says."""

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from support import hpcft_cli

from hpcft.ledger.store import Ledger

START, END = "2025-01-01T10:00:00", "2025-01-01T10:01:05"


@pytest.fixture
def fake(hpcft_home, tmp_path, monkeypatch):
    """(ledger, env, answer(text or None = fail), calls())"""
    bindir, log, answer = tmp_path / "bin", tmp_path / "sacct.log", tmp_path / "sacct.answer"
    bindir.mkdir()
    (bindir / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {log}\n[ -f {answer} ] && exec cat {answer}\n'
                                  'echo "sacct: error: Problem talking to the database: Connection refused" >&2\n'
                                  "exit 1\n")
    (bindir / "sacct").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HPCFT_STATE_REFRESH="3600")

    def say(text):
        answer.unlink(missing_ok=True)
        if text is not None:
            answer.write_text(text)

    def calls():
        return log.read_text().splitlines() if log.exists() else []

    return Ledger(), env, say, calls


def row(ledger, sid, state="running", executor="slurm", owner=None):
    j = ledger.create_job(name=f"job-{sid}", executor=executor, state=state, slurm_job_id=sid,
                          **({"owner": owner} if owner else {}))
    with sqlite3.connect(ledger.url[len("sqlite:///"):]) as c:  # recorded long ago: stale
        c.execute("UPDATE jobs SET updated_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (j.id,))
    return j


def cli(args, env):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, env=env, timeout=120)


def sacct_line(sid, state):
    return f"{sid}|{sid}|{state}|0:0|None|00:01:05|{START}|{END if state != 'RUNNING' else 'Unknown'}|n1\n"


def test_list_refreshes_live_slurm_jobs_at_most_once_per_interval(fake, hpcft_home):
    ledger, env, say, calls = fake
    j = row(ledger, "4242")
    say(sacct_line("4242", "RUNNING"))
    assert cli(["list"], env).returncode == 0 and len(calls()) == 1  # ONE sacct call
    assert "-j 4242" in calls()[0]
    r = cli(["list"], env)  # right after: within the interval, whoever runs it
    assert r.returncode == 0 and len(calls()) == 1 and "running" in r.stdout
    (hpcft_home / "state-refresh.stamp").write_text("0")  # the interval has passed
    say(sacct_line("4242", "TIMEOUT"))
    r = cli(["list"], env)
    assert len(calls()) == 2 and "expired" in r.stdout, r.stderr
    got = ledger.get(j.id)  # Slurm's Start / End, not the time of the read
    as_utc = [datetime.fromisoformat(t).astimezone(timezone.utc).replace(tzinfo=None) for t in (START, END)]
    assert [got.started_at.replace(tzinfo=None), got.finished_at.replace(tzinfo=None)] == as_utc


def test_ended_local_and_others_jobs_cost_nothing(fake, hpcft_home):
    ledger, env, say, calls = fake
    say(sacct_line("77", "TIMEOUT"))
    row(ledger, "7", state="success")
    row(ledger, None, executor="local")
    row(ledger, "8", owner="someone-else")
    code = ("import sys; sys.argv = ['hpcft', 'list']\n"
            "try:\n    from hpcft.cli import main; main()\nexcept SystemExit: pass\n"
            "print('MODS=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'sqlmodel', 'submitit') or m == 'hpcft.jobs.executors.slurm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "MODS=\n" in out.stdout + "\n" and "job-7" in out.stdout, out.stderr
    assert calls() == [] and not (hpcft_home / "state-refresh.stamp").exists()
    row(ledger, "77")  # one live Slurm job of mine among them: refreshed
    assert "expired" in cli(["list"], env).stdout and len(calls()) == 1


def test_slurm_not_answering_still_lists_with_one_stale_line(fake):
    ledger, env, say, calls = fake
    j = row(ledger, "99")
    say(None)
    r = cli(["list"], env)
    assert r.returncode == 0 and "job-99" in r.stdout and "running" in r.stdout
    assert len(calls()) == 1
    stale = [x for x in r.stderr.splitlines() if "states may be stale" in x]
    assert len(stale) == 1 and "Connection refused" in stale[0], r.stderr
    env["HPCFT_STATE_REFRESH"] = "0.001"  # the next read may refresh again
    r = cli(["show", str(j.id)], env)
    assert r.returncode == 0 and "running" in r.stdout and r.stderr.count("states may be stale") == 1
