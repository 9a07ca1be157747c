"""The compute side of a job: what runs where the job was placed (local machine or Slurm allocation).

A worker is a small supervisor around the trainer process (`python -m hpcft.train.entry`):
- it moves the ledger state (running, then success / error / expired / stopped) with reasons;
- on the local executor it enforces the time limit (past it the trainer is killed: `expired`) and turns a
  SIGTERM from `hpcft stop` into `stopped`;
- in Slurm it derives rank, world size and the rendezvous (MASTER_ADDR/PORT) from Slurm's environment; Slurm
  itself enforces the time limit (TIMEOUT is mapped to `expired` by `hpcft sync`).

Entry points:
  python -m hpcft.worker supervise JOB_ID            (local executor, detached)
  python -m hpcft.worker register-and-run --config F (rendered sbatch scripts: registers the job at start)
  hpcft.worker.run_in_allocation(job_id, db_url)     (submitit, in every Slurm task)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from hpcft.states import State
from hpcft.timefmt import format_duration, parse_duration

GRACE_S = 10  # between SIGTERM and SIGKILL when stopping a trainer


def trainer_argv(config_path: Path, job_id: Optional[int]) -> List[str]:
    argv = [sys.executable, "-u", "-m", "hpcft.train.entry", "--config", str(config_path)]
    if job_id is not None:
        argv += ["--job-id", str(job_id)]
    return argv


def _tail_error(log: Path, n: int = 40) -> str:
    """The most telling line at the end of a log: the last exception line, else the last line."""
    try:
        lines = [x.rstrip() for x in log.read_text(errors="replace").splitlines()[-n:] if x.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or line.startswith("error:"):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else ""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the trainer's process group, then SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def supervise(job_id: int) -> int:
    """Run a local job: trainer child with a deadline. Returns the exit code for the supervisor process."""
    from hpcft.ledger import Ledger

    ledger = Ledger()
    job = ledger.get(job_id)
    out = Path(job.output_dir)
    log = out / "logs" / "job.log"
    limit = parse_duration(job.resources.get("time", "01:00:00"))
    if not ledger.transition(job_id, State.running, "started on the local machine", pid=os.getpid()):
        print(f"job {job_id} is {ledger.get(job_id).state}: not starting", flush=True)
        return 0
    ledger.add_event(job_id, "started", f"pid {os.getpid()}, time limit {format_duration(limit)}",
                     pid=os.getpid(), host=os.uname().nodename)
    print(f"[hpcft] job {job_id} started (time limit {format_duration(limit)})", flush=True)

    stopping = {"by": None}

    def on_term(signum, _frame):
        stopping["by"] = signum

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    env = dict(os.environ, HPCFT_DB_URL=ledger.url, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(trainer_argv(out / "config.yaml", job_id), env=env, start_new_session=True,
                            stdout=sys.stdout, stderr=sys.stderr)
    deadline = time.monotonic() + limit
    rc: Optional[int] = None
    while rc is None:
        if stopping["by"] is not None:
            _kill_group(proc)
            ledger.transition(job_id, State.stopped, "stopped by user")
            print(f"[hpcft] job {job_id} stopped", flush=True)
            return 0
        if time.monotonic() > deadline:
            _kill_group(proc)
            ledger.transition(job_id, State.expired, f"ran past its time limit {format_duration(limit)}")
            ledger.add_event(job_id, "finished", "killed at the time limit", exit_code=proc.returncode)
            print(f"[hpcft] job {job_id} expired: ran past its time limit {format_duration(limit)}", flush=True)
            return 0
        try:
            rc = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    return _finish(ledger, job_id, rc, log)


def _finish(ledger, job_id: int, rc: int, log: Path) -> int:
    ledger.add_event(job_id, "finished", f"trainer exited with code {rc}", exit_code=rc)
    if rc == 0:
        ledger.transition(job_id, State.success, "trainer finished")
        print(f"[hpcft] job {job_id} finished: success", flush=True)
        return 0
    reason = f"trainer exited with code {rc}"
    if rc < 0:
        reason = f"trainer killed by signal {-rc}"
    tail = _tail_error(log)
    if tail:
        reason += f": {tail}"
    ledger.transition(job_id, State.error, reason)
    print(f"[hpcft] job {job_id} failed: {reason}", flush=True)
    return 1


# --------------------------------------------------------------------------------------------------- Slurm side

def slurm_dist_env(environ=os.environ) -> dict:
    """torch.distributed variables from Slurm's: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT."""
    env = {}
    env["RANK"] = environ.get("SLURM_PROCID", "0")
    env["WORLD_SIZE"] = environ.get("SLURM_NTASKS", "1")
    env["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    env["LOCAL_WORLD_SIZE"] = environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
    env["MASTER_ADDR"] = environ.get("MASTER_ADDR") or first_host(environ.get("SLURM_JOB_NODELIST", "localhost"))
    job = environ.get("SLURM_ARRAY_JOB_ID") or environ.get("SLURM_JOB_ID") or "0"
    task = environ.get("SLURM_ARRAY_TASK_ID") or "0"
    env["MASTER_PORT"] = environ.get("MASTER_PORT") or str(20000 + (int(job) * 7 + int(task)) % 20000)
    return env


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list ("n[1-2],gpu3" -> "n1"), via scontrol when available."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=20, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rng = head.split("[", 1)
        return prefix + rng.split("-")[0].split(",")[0].rstrip("]")
    return head


def run_in_allocation(job_id: int, db_url: str) -> None:
    """Run a ledger job's trainer in this Slurm task (called by submitit in every task of the job)."""
    os.environ["HPCFT_DB_URL"] = db_url
    from hpcft.ledger import Ledger

    ledger = Ledger(db_url)
    job = ledger.get(job_id)
    _run_slurm_task(ledger, job_id, Path(job.output_dir) / "config.yaml")


def _slurm_ids(environ=os.environ) -> dict:
    array_job = environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        task = environ.get("SLURM_ARRAY_TASK_ID", "0")
        return {"slurm_job_id": f"{array_job}_{task}", "array_job_id": array_job, "array_task_id": int(task)}
    return {"slurm_job_id": environ.get("SLURM_JOB_ID")}


def _run_slurm_task(ledger, job_id: int, config_path: Path) -> None:
    dist = slurm_dist_env()
    rank = int(dist["RANK"])
    out = config_path.parent
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if rank == 0:
        ledger.transition(job_id, State.running, f"started in Slurm on {os.uname().nodename}", **_slurm_ids())
        ledger.add_event(job_id, "started", f"Slurm job {os.environ.get('SLURM_JOB_ID')}, world size "
                         f"{dist['WORLD_SIZE']}", host=os.uname().nodename, **dist)
    env = dict(os.environ, **dist, HPCFT_DB_URL=ledger.url, PYTHONUNBUFFERED="1")
    log = out / "logs" / ("job.log" if rank == 0 else f"rank-{rank}.log")
    with open(log, "a") as f:
        rc = subprocess.run(trainer_argv(config_path, job_id), env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rank == 0:
        if rc < 0:
            # Killed by a signal: Slurm's time limit (TIMEOUT), scancel (CANCELLED) or preemption. Slurm knows which
            # and submitit keeps this process alive through SIGTERM, so do not guess `error` here: `hpcft sync`
            # maps the accounting state (TIMEOUT -> expired, CANCELLED -> stopped, ...).
            ledger.add_event(job_id, "finished", f"trainer ended by signal {-rc}; state from Slurm accounting",
                             exit_code=rc)
        else:
            _finish(ledger, job_id, rc, log)
    if rc != 0:
        raise SystemExit(rc)


def register_and_run(config_path: Path) -> int:
    """For a rendered sbatch script: register this Slurm job in the ledger (rank 0) and run it."""
    from hpcft import config as hconfig
    from hpcft.ledger import Ledger
    from hpcft.jobrecord import ledger_fields

    cfg = hconfig.from_yaml_file(config_path)
    ledger = Ledger()
    ids = _slurm_ids()
    rank = int(slurm_dist_env()["RANK"])
    if rank == 0:
        found = ledger.search(output=str(config_path.parent))
        found = [j for j in found if j.slurm_job_id == ids["slurm_job_id"]]
        if found:
            job_id = found[0].id
        else:
            job = ledger.create_job(**ledger_fields(cfg), executor="slurm", output_dir=str(config_path.parent), **ids)
            job_id = job.id
            ledger.add_event(job_id, "submitted", "registered by a rendered sbatch script", **ids)
        (config_path.parent / f".job-id-{ids['slurm_job_id']}").write_text(str(job_id))
    else:  # wait for rank 0 to register
        marker = config_path.parent / f".job-id-{ids['slurm_job_id']}"
        for _ in range(600):
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.5)
        job_id = int(marker.read_text().strip())
    _run_slurm_task(ledger, job_id, config_path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("supervise", help="run a local job under its time limit")
    s.add_argument("job_id", type=int)
    r = sub.add_parser("register-and-run", help="register this Slurm job in the ledger, then run it")
    r.add_argument("--config", required=True, type=Path)
    a = p.parse_args(argv)
    if a.cmd == "supervise":
        return supervise(a.job_id)
    return register_and_run(a.config.resolve())


if __name__ == "__main__":
    sys.exit(main())
