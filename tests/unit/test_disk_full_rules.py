"""A full disk (ENOSPC/EDQUOT) ends a trainer with exit code 74, cause `disk_full`, retried only when asked.

The real fault (a checkpoint that does not fit a tmpfs) is in tests/train/test_disk_full.py.
"""

import errno
from datetime import datetime, timedelta, timezone

import pytest

from hpcft import exitcodes
from hpcft.jobs import control as jobctl
from hpcft.ledger.store import Ledger
from hpcft.states import CAUSES, DISK_FULL, State, exit_cause, is_cause

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def test_exit_code_74_is_the_cause_disk_full():
    assert exitcodes.DISK_FULL == 74 and 74 in exitcodes.MEANING
    assert exitcodes.DISK_FULL not in (exitcodes.FAILED, exitcodes.BAD_INPUT, exitcodes.RUN_DIR_BUSY,
                                       exitcodes.SAVED_AT_WARNING)
    assert exit_cause(74) == DISK_FULL == "disk_full" and DISK_FULL in CAUSES and is_cause("disk_full")


def test_disk_full_is_retried_only_with_its_exit_code():
    def verdict(**kw):
        return jobctl.retry_verdict("disk_full", **kw)

    assert verdict() == (False, "disk_full (retried with --exit-codes 74 once space is freed)")
    assert not verdict(oom=True)[0] and not verdict(exit_codes=[1, 137])[0] and not verdict(time_limit=True)[0]
    assert verdict(exit_codes=[74]) == (True, "disk_full")


def test_retry_resubmits_a_disk_full_job_only_when_asked(tmp_path, monkeypatch):
    submitted = []

    class Rec:
        def submit(self, ledger, jobs):
            submitted.extend(j.id for j in jobs)
            return jobs

    monkeypatch.setattr("hpcft.jobs.executors.get_executor", lambda name: Rec())
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    (tmp_path / "run").mkdir()
    job = ledger.create_job(name="j", executor="local", output_dir=str(tmp_path / "run"), attempt=1,
                            config={"name": "j", "training": {"resume_from": None}}, slurm_job_id="41")
    ledger.transition(job.id, State.running, "started")
    ledger.transition(job.id, State.error, "disk full", cause=exit_cause(74))
    ledger.update(job.id, finished_at=NOW - timedelta(hours=1))
    assert jobctl.retry_failed(ledger, 3, ["error"], exit_codes=[1], now=NOW).not_retryable == [job.id]
    assert jobctl.retry_failed(ledger, 3, ["error"], exit_codes=[74], now=NOW).resubmitted == [job.id]
    assert submitted == [job.id] and ledger.get(job.id).config["training"]["resume_from"] == "latest"


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    Exception("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch.save: via context
])
def test_failure_code_gives_one_line_and_74(error, tmp_path, capsys):
    from hpcft.train.entry import failure_code
    from support.train_helpers import ctx_for

    if isinstance(error, RuntimeError):
        error.__context__ = OSError(errno.ENOSPC, "No space left on device")
    ctx = ctx_for(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints" / "step-00000004.tmp").mkdir(parents=True)
    assert failure_code(error, ctx) == exitcodes.DISK_FULL
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"[hpcft] disk full: could not write {tmp_path}/")
    assert " free of " in err[0] and err[0].endswith("then hpcft retry --exit-codes 74 or hpcft resume JOB")
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the staging dir a failed write left is gone


def test_other_failures_stay_exit_1(tmp_path, capsys):
    from hpcft.train.entry import failure_code
    from support.train_helpers import ctx_for

    assert failure_code(OSError(errno.EACCES, "Permission denied"), ctx_for(tmp_path)) == exitcodes.FAILED
    capsys.readouterr()
