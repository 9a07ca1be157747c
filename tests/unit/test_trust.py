"""Trust under faults, without training: one trainer per run directory and rank (a real lock held by a real child
process), the causes of a killed trainer, a lost worker and a memory kill (on captured sacct lines and Slurm's own
messages), and a resource sampler that never makes the end of a job wait for `sstat`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.slurm_fixtures import SACCT_KILLS, SLURM_KILLED_STDERR, SLURM_OOM_STDERR, SLURM_OOM_STEP_STDERR

from hpcft import exitcodes
from hpcft.slurm import commands as C

HOLD = ("import sys; from hpcft.rundir.lock import acquire; lock = acquire(sys.argv[1], int(sys.argv[2]), 7); "
        "print('held', flush=True); sys.stdin.read()")


def _holder(run_dir: Path, rank: int = 0) -> subprocess.Popen:
    """A real process holding the lock of `rank` until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(rank)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_the_lock_refuses_a_second_trainer_of_the_same_rank_naming_the_holder(tmp_path):
    from hpcft.rundir.lock import RunDirBusy, acquire

    child = _holder(tmp_path, 0)
    try:
        with pytest.raises(RunDirBusy) as e:
            acquire(tmp_path, 0, 8)
        msg = str(e.value)
        assert "\n" not in msg
        assert f"pid {child.pid} on {os.uname().nodename}, job 7" in msg and "since 20" in msg and "rank 0" in msg
        other = acquire(tmp_path, 1, 8)  # another rank of the same job: its own lock
        other.release()
    finally:
        child.kill()
        child.wait()
    lock = acquire(tmp_path, 0, 8)  # the kernel freed it with the SIGKILLed holder: nothing to clean up
    assert lock.info["pid"] == os.getpid() and lock.info["job_id"] == 8
    lock.release()


def test_the_trainer_refuses_to_start_in_a_busy_run_directory_in_one_line(tmp_path):
    """`python -m hpcft.train.entry` while another trainer of rank 0 lives: exit 73, one line on stderr naming the
    holder, and nothing in the run directory touched."""
    from omegaconf import OmegaConf

    import hpcft.jobs.preflight

    cfg = hpcft.jobs.preflight.load(["executor=local"])
    cfg.output_dir = str(tmp_path)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    child = _holder(tmp_path, 0)
    try:
        before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
        env = {k: v for k, v in os.environ.items() if k != "HPCFT_DB_URL"}
        env["HPCFT_HOME"] = str(tmp_path.parent / "hpcft-home")  # never the user's ledger, whatever happens
        r = subprocess.run([sys.executable, "-m", "hpcft.train.entry", "--config", str(tmp_path / "config.yaml")],
                           capture_output=True, text=True, timeout=120, env=env)
        after = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    finally:
        child.kill()
        child.wait()
    assert r.returncode == exitcodes.RUN_DIR_BUSY == 73, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {child.pid}" in lines[0] and "job 7" in lines[0], r.stderr
    assert after == before  # no logs/, no monitor/, no checkpoint cleanup: nothing touched


def test_a_killed_trainer_is_signal_n_with_exit_code_128_plus_n_and_retried_with_that_code():
    from hpcft.jobs.control import retry_verdict
    from hpcft.states import CAUSES, WORKER_LOST, exit_cause

    assert exit_cause(-9) == "signal:9" and exitcodes.shell_code(-9) == 137 and exitcodes.shell_code(3) == 3
    assert retry_verdict("signal:9", exit_codes=[137]) == (True, "signal:9")
    assert retry_verdict("signal:9", exit_codes=[1])[0] is False
    assert WORKER_LOST in CAUSES and retry_verdict(WORKER_LOST) == (True, WORKER_LOST)  # like node_fail


def test_captured_kills_worker_lost_signal_and_oom_apart():
    """The four captured FAILED lines: sacct alone cannot tell them apart; Slurm's message and the worker's record
    do. A memory kill is oom even when the worker managed to record its trainer's SIGKILL first."""
    kills = C.parse_sacct(SACCT_KILLS)
    assert C.says_memory_exceeded(SLURM_OOM_STDERR) and C.says_memory_exceeded(SLURM_OOM_STEP_STDERR)
    assert not C.says_memory_exceeded(SLURM_KILLED_STDERR)
    # 27: what a worker that exited with -9 gave (247 -> srun 119); the worker now exits 128+N and records N
    assert kills["27"].ledger_cause == "exit:119"
    assert kills["28"].ledger_cause == "worker_lost"  # the worker kill -9ed: nothing recorded, no memory message
    assert "worker was lost" in kills["28"].ledger_reason
    kills["29"].trainer_signal = 9  # the worker recorded the trainer's SIGKILL, then exited 137 (srun: 9)
    assert kills["29"].ledger_cause == "signal:9"
    assert "trainer killed by signal 9 (exit code 137" in kills["29"].ledger_reason
    kills["30"].memory_exceeded, kills["30"].trainer_signal = True, 9
    assert kills["30"].ledger_cause == "oom" and "memory limit" in kills["30"].ledger_reason
    d = C.sync_decision(kills["28"], "running", None)
    assert (d.state.value, d.cause) == ("error", "worker_lost")


def test_executor_sync_reads_the_worker_record_and_slurms_message(tmp_path, monkeypatch):
    """SlurmExecutor.sync on the captured lines (sacct answered from them) with the ledger events and output files a
    real job leaves: oom only with Slurm's message, signal:9 from the worker's record, worker_lost without either."""
    from hpcft.jobs.executors.slurm import SlurmExecutor
    from hpcft.ledger.store import Ledger

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    monkeypatch.setattr(C, "run", lambda argv, timeout=60: SACCT_KILLS)
    jobs = {}
    for sid in ("28", "29", "30"):
        out = tmp_path / f"run-{sid}"
        (out / "slurm").mkdir(parents=True)
        j = ledger.create_job(name=f"j{sid}", executor="slurm", state="running", slurm_job_id=sid,
                              output_dir=str(out))
        ledger.add_event(j.id, "slurm", f"submitted as Slurm job {sid}", folder=str(out / "slurm"))
        ledger.add_event(j.id, "started", "Slurm job")
        jobs[sid] = j
    (tmp_path / "run-28" / "slurm" / "28_0_log.err").write_text(SLURM_KILLED_STDERR)
    for sid in ("29", "30"):  # both workers saw their trainer SIGKILLed and recorded it
        ledger.add_event(jobs[sid].id, "finished", "trainer killed by signal 9", exit_code=137, signal=9)
    (tmp_path / "run-30" / "slurm" / "30_0_log.err").write_text(SLURM_OOM_STDERR)
    assert SlurmExecutor().sync(ledger, list(jobs.values())) == 3
    causes = ledger.causes([j.id for j in jobs.values()])
    assert {sid: causes[j.id] for sid, j in jobs.items()} == {"28": "worker_lost", "29": "signal:9", "30": "oom"}
    assert "exit code 137" in ledger.get(jobs["29"].id).state_reason


def test_the_sampler_never_makes_the_end_wait_for_sstat(tmp_path, monkeypatch):
    """A real `sstat` that hangs (10 s, as a slow slurmdbd can): the trainer's end (Sampler.stop) does not wait for
    the one under way, and asks for no other."""
    from hpcft.rundir.monitor import Sampler

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sstat-calls"
    (bin_dir / "sstat").write_text(f"#!/bin/sh\necho x >> {calls}\nexec sleep 10\n")
    (bin_dir / "sstat").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    s = Sampler(tmp_path / "run", rank=0, interval=0.2, slurm_job="1").start()
    deadline = time.time() + 20
    while not calls.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert calls.exists(), "the sampler never asked sstat"
    t0 = time.monotonic()
    s.stop()
    took = time.monotonic() - t0
    assert took < 2.5, f"the end waited {took:.1f} s for sstat"
    assert calls.read_text().count("x") == 1  # no sstat at the end
    assert (tmp_path / "run" / "monitor" / "rank-0.jsonl").read_text().count('"final": true') == 1
