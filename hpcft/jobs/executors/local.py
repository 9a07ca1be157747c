"""The local executor: each job runs on this machine under a detached supervisor (`hpcft.jobs.worker supervise`)
that enforces the time limit. The supervisor leads its own session, so `stop` signals the whole tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

from hpcft.jobs.executors.base import Executor
from hpcft.states import SUPERVISOR_GONE, USER_STOP, State


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


class LocalExecutor(Executor):
    name = "local"

    def submit(self, ledger, jobs: Sequence) -> List:
        started = []
        for job in jobs:
            log = Path(job.output_dir) / "logs" / "job.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, HPCFT_DB_URL=ledger.url, PYTHONUNBUFFERED="1")
            with open(log, "ab") as f:
                proc = subprocess.Popen([sys.executable, "-u", "-m", "hpcft.jobs.worker", "supervise", str(job.id)],
                                        stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, close_fds=True)
            started.append(ledger.update(job.id, pid=proc.pid))
        return started

    def stop(self, ledger, job) -> None:
        user = ledger.user
        ledger.add_event(job.id, "stop", f"stop requested by {user}", user=user, pid=job.pid)
        ledger.transition(job.id, State.stopped, "stopped by user", cause=USER_STOP)
        if job.pid:
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def sync(self, ledger, jobs: Sequence) -> int:
        """A live local job whose supervisor is gone (machine rebooted, killed -9) is judged by its journal
        (hpcft.ledger.deliver): what it wrote is taken first (an end recorded during a ledger outage); a trainer that
        finished is a success; otherwise the job is an error (cause supervisor_gone)."""
        from hpcft.ledger.deliver import ingest, journal_says_finished

        gone = [j for j in jobs if j.executor == "local" and j.state in (State.queued.value, State.running.value)
                and j.pid and not alive(j.pid)]
        rows, done = ingest(ledger, gone)
        changed = sum(len(d.changes) for d in done.values())
        for job in rows:
            if State(job.state) not in (State.queued, State.running):
                continue
            if journal_says_finished(job) == 0:
                changed += ledger.transition(job.id, State.success, f"trainer finished; its supervisor process "
                                             f"{job.pid} ended before recording it")
                continue
            changed += ledger.transition(job.id, State.error, f"supervisor process {job.pid} is gone",
                                         cause=SUPERVISOR_GONE)
        return changed
