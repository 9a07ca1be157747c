"""The compute side of a job: what runs where the job was placed (local machine or Slurm allocation).

A worker is a small supervisor around the trainer process (`python -m hpcft.train.entry`):
- it moves the ledger state (running, then success / error / expired / stopped / queued again) with reasons and
  a machine-readable cause (what `hpcft retry` reads);
- the time-limit warning: `resources.signal_grace` seconds before the limit the trainer gets SIGUSR1 (from Slurm's
  `--signal=USR1@N`, forwarded by the worker; on the local executor sent by the supervisor), saves a checkpoint at
  the next step boundary and exits 75. Then `resources.on_timeout=expire` ends the job `expired` (with that
  checkpoint), `requeue` continues the same ledger job from it (Slurm: `scontrol requeue`; local: the supervisor
  starts the trainer again with a fresh time allowance) until it finishes or `resources.max_requeues` are spent;
- on the local executor it enforces the time limit itself and turns a SIGTERM from `hpcft stop` into `stopped`;
- no trainer outlives its worker, whatever the cluster's proctrack plugin: the trainer runs in its own session
  (process group), which the worker kills on any exit of its own (return, exception, SIGTERM: `_end_group`); and
  the trainer asks Linux to SIGKILL it when the worker dies (PR_SET_PDEATHSIG, `hpcft.train.entry`, which gets the
  worker's pid in HPCFT_WORKER_PID), so even a `kill -9` of the worker takes the trainer with it;
- a trainer killed by signal N is recorded with exit code 128+N (cause `signal:N`), and the worker exits 128+N;
- in Slurm it derives rank, world size and the rendezvous from Slurm's environment (hpcft.slurm.env), records a
  `restart` event when Slurm restarted the job (requeue after node failure or preemption); the trainer continues
  from the run's latest checkpoint by itself (training.resume_from=latest). Slurm enforces the time limit
  (TIMEOUT is mapped to `expired` by `hpcft sync`).

Entry points:
  python -m hpcft.jobs.worker supervise JOB_ID            (local executor, detached)
  python -m hpcft.jobs.worker register-and-run --config F (rendered sbatch scripts: registers the job at start)
  hpcft.jobs.worker.run_in_allocation(job_id, db_url)     (submitit, in every Slurm task)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

from hpcft import exitcodes
from hpcft.slurm import env as slurm_env
from hpcft.states import LIVE, TIMEOUT, USER_STOP, State, exit_cause
from hpcft.timefmt import format_duration, parse_duration

GRACE_S = 10  # between SIGTERM and SIGKILL when stopping a trainer
WARNING_SIGNAL = signal.SIGUSR1  # hpcft.train.signals.WARNING_SIGNAL (not imported: that module is the trainer's)


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


def trainer_env(base: dict, **extra: str) -> dict:
    """The trainer's environment: `base`, `extra`, this worker's pid (the trainer dies with it), and that this
    worker delivers the trainer's journal records (hpcft.ledger.courier): the trainer only appends them."""
    return dict(base, **extra, HPCFT_WORKER_PID=str(os.getpid()), PYTHONUNBUFFERED="1", HPCFT_COURIER="worker")


def _end_group(proc: Optional[subprocess.Popen]) -> None:
    """On any exit of the worker: end the trainer (SIGTERM, then SIGKILL) if it still runs, and SIGKILL whatever is
    left of its process group (its data-loader workers, a `sstat` of its sampler)."""
    if proc is None:
        return
    if proc.poll() is None:
        _kill_group(proc)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def _latest_step(out: Path) -> Optional[int]:
    from hpcft.train.checkpoint import latest_checkpoint  # torch-free module

    d = latest_checkpoint(out / "checkpoints")
    try:
        return int(d.name.split("-")[1]) if d is not None else None
    except (IndexError, ValueError):
        return None


def _timeout_policy(job) -> tuple:
    """(on_timeout, max_requeues, warning seconds) of a ledger job."""
    from hpcft.slurm.sbatch import warning_grace

    r = job.resources or {}
    return str(r.get("on_timeout", "expire")), int(r.get("max_requeues", 0) or 0), warning_grace(r)


def _requeues_so_far(ledger, job) -> int:
    """Time-limit requeues of the job's current attempt (the `requeue` events)."""
    return sum(1 for e in ledger.events(job.id) if e.kind == "requeue" and e.attempt == job.attempt)


def after_warning_save(ledger, job_id: int, out: Path) -> str:
    """The trainer saved at the time-limit warning (exit 75): `requeue` (the job goes back to queued; the caller
    restarts it) or `expired` (recorded here). Returns "requeue" or "expired"."""
    job = ledger.get(job_id)
    on_timeout, max_requeues, _ = _timeout_policy(job)
    step = _latest_step(out)
    done = _requeues_so_far(ledger, job)
    if on_timeout == "requeue" and done < max_requeues:
        ledger.add_event(job_id, "requeue", f"time limit near: checkpoint of step {step} saved; requeued "
                         f"({done + 1} of {max_requeues})", step=step, requeue=done + 1, max_requeues=max_requeues)
        ledger.transition(job_id, State.queued, f"requeued at its time limit ({done + 1}/{max_requeues}); continues "
                          f"from step {step}", cause=TIMEOUT)
        return "requeue"
    spent = f"; {max_requeues} requeue(s) spent" if on_timeout == "requeue" else ""
    ledger.transition(job_id, State.expired, f"time limit: checkpoint of step {step} saved before the limit{spent}; "
                      f"`hpcft resume {job_id}` continues from it", cause=TIMEOUT)
    return "expired"


REQUEST_POLL_S = 5.0  # how often a running job's worker looks for stop requests from other members


def stop_requested(ledger, job_id: int):
    """The oldest open stop request another member recorded on this job (hpcft.ledger.access: read-write members cannot
    stop another user's job through Slurm, so the job's own worker, which runs as its owner, does), or None."""
    reqs = ledger.open_requests(job_id, "stop")
    return reqs[0] if reqs else None


def stop_requested_now(ledger, job_id: int):
    """stop_requested, or None while the ledger does not answer (a job starting during an outage trains)."""
    try:
        return stop_requested(ledger, job_id)
    except Exception as e:
        print(f"[hpcft] note: could not read requests ({type(e).__name__})", flush=True)
        return None


def open_job(url: str, job_id: int, wait_s: float = 600.0) -> Any:
    """The worker's ledger (hpcft.ledger.courier: journal first, then the database) for job `job_id`, whose row it
    reads once, waiting up to `wait_s` for a database that does not answer at the job's start."""
    from hpcft.ledger.courier import Bounded, JournaledLedger
    from hpcft.ledger.store import Ledger

    deadline, said = time.monotonic() + wait_s, False
    call = Bounded()  # a database that does not answer at all (a partition) is waited for like one that refuses
    while True:
        try:
            job = call(lambda: Ledger(url).get(job_id))
            break
        except Exception as e:
            from hpcft.errors import NotFound

            if isinstance(e, NotFound) or time.monotonic() > deadline:
                raise
            if not said:
                print(f"[hpcft] note: waiting for the ledger to answer ({type(e).__name__})", flush=True)
                said = True
            time.sleep(5)
    return JournaledLedger(url, job_id, Path(job.output_dir), job)


def honour_stop(ledger, job_id: int, req, before_start: bool = False) -> None:
    by = (req.data or {}).get("by", "?")
    ledger.transition(job_id, State.stopped, f"stopped at the request of {by}" + (" before it started" if
                      before_start else ""), cause=USER_STOP)
    ledger.request_done(job_id, req, "stopped" + (" before it started" if before_start else ""))


def _finished_event(ledger, job_id: int, rc: int, how: str = "") -> None:
    """The `finished` event: the trainer's exit code as a shell reports it (128+N for signal N, with `signal`)."""
    code = exitcodes.shell_code(rc)
    if rc < 0:
        ledger.add_event(job_id, "finished", f"trainer killed by signal {-rc} (exit code {code}){how}",
                         exit_code=code, signal=-rc)
    else:
        ledger.add_event(job_id, "finished", f"trainer exited with code {rc}{how}", exit_code=code)


def _finish(ledger, job_id: int, rc: int, log: Path) -> int:
    _finished_event(ledger, job_id, rc)
    if rc == 0:
        changed = ledger.transition(job_id, State.success, "trainer finished")
        print(f"[hpcft] job {job_id} finished: success", flush=True)
        if changed:  # publish.auto=true: into the model registry; never raises, never changes the job's state
            from hpcft.registry.publish import auto_publish

            auto_publish(getattr(ledger, "ledger", ledger), job_id)
        return 0
    reason = f"trainer exited with code {rc}"
    if rc < 0:
        reason = f"trainer killed by signal {-rc} (exit code {exitcodes.shell_code(rc)})"
    elif rc == exitcodes.BAD_INPUT:
        reason = "the config or the data was refused (not retried)"
    tail = _tail_error(log)
    if tail:
        reason += f": {tail}"
    ledger.transition(job_id, State.error, reason, cause=exit_cause(rc))
    print(f"[hpcft] job {job_id} failed: {reason}", flush=True)
    return 1


# --------------------------------------------------------------------------------------------------- local side

def supervise(job_id: int) -> int:
    """Run a local job: the trainer as a child with a deadline, the warning before it, requeues after it."""
    from hpcft import paths

    ledger = open_job(paths.db_url(), job_id).start()
    try:
        return _supervise(ledger, job_id)
    finally:
        ledger.close()


def _supervise(ledger, job_id: int) -> int:
    sup = LocalSupervisor(ledger, ledger.get(job_id))
    if not sup.start():
        return 0
    signal.signal(signal.SIGTERM, sup.on_term)
    signal.signal(signal.SIGINT, sup.on_term)
    env = trainer_env(os.environ, HPCFT_DB_URL=ledger.url)
    try:
        while True:
            rc = sup.run_trainer(env)
            if rc is None:  # the supervisor ended the job (stopped, expired) and recorded it
                return 0
            if rc != exitcodes.SAVED_AT_WARNING:
                return _finish(ledger, job_id, rc, sup.log)
            ledger.add_event(job_id, "finished", "trainer saved a checkpoint at the time-limit warning", exit_code=rc)
            if after_warning_save(ledger, job_id, sup.out) != "requeue":
                print(f"[hpcft] job {job_id} expired (checkpoint saved at the warning)", flush=True)
                return 0
            sup.requeued()
    finally:  # whatever ends the supervisor (an exception included), the trainer's group ends with it
        _end_group(sup.relay.proc if sup.relay is not None else None)


class LocalSupervisor:
    """A local job's supervisor, around one trainer run after another (a time-limit requeue starts the next): it
    sends the warning `grace` seconds before the deadline, kills the trainer at the deadline, and ends the job when
    `hpcft stop` signals it (SIGTERM) or another member asks to stop it (a ledger request)."""

    def __init__(self, ledger, job) -> None:
        self.ledger, self.job_id = ledger, job.id
        self.out = Path(job.output_dir)
        self.log = self.out / "logs" / "job.log"
        self.limit = parse_duration(job.resources.get("time", "01:00:00"))
        _, _, self.grace = _timeout_policy(job)
        self.stopped_by: Optional[int] = None  # the signal `hpcft stop` sent
        self.relay: Optional[WarningRelay] = None
        self.deadline = 0.0
        self.warn_at: Optional[float] = None

    def start(self) -> bool:
        """Move the job to running; False when it must not start (a stop request came first, or it is no longer
        queued)."""
        ledger, job_id = self.ledger, self.job_id
        req = stop_requested_now(ledger, job_id)
        if req is not None:
            honour_stop(ledger, job_id, req, before_start=True)
            return False
        from hpcft.jobs.chain import start_after_parents  # waits for its parents; a parent's job:ID resolved
        if not start_after_parents(ledger, job_id, wait=True):
            return False
        if ledger.transition(job_id, State.running, "started on the local machine", pid=os.getpid()) is False:
            print(f"job {job_id} is {ledger.get(job_id).state}: not starting", flush=True)
            return False
        limit = format_duration(self.limit)
        ledger.add_event(job_id, "started", f"pid {os.getpid()}, time limit {limit}", pid=os.getpid(),
                         host=os.uname().nodename)
        print(f"[hpcft] job {job_id} started (time limit {limit})", flush=True)
        return True

    def on_term(self, signum, _frame) -> None:
        self.stopped_by = signum

    def run_trainer(self, env: dict) -> Optional[int]:
        """One trainer run with a fresh time allowance: its exit code, or None when the supervisor ended the job."""
        self.relay = WarningRelay(group=True)
        proc = self.relay.popen(trainer_argv(self.out / "config.yaml", self.job_id), env=env, start_new_session=True,
                                stdout=sys.stdout, stderr=sys.stderr)
        self.deadline = time.monotonic() + self.limit
        self.warn_at = self.deadline - self.grace if 0 < self.grace < self.limit else None
        return _wait_honouring_requests(self.ledger, self.job_id, proc, self.relay, on_request=self.stop_at_request,
                                        watch=self.watch)

    def stop_at_request(self, proc: subprocess.Popen, req) -> None:
        _kill_group(proc)
        honour_stop(self.ledger, self.job_id, req)
        print(f"[hpcft] job {self.job_id} stopped at the request of {(req.data or {}).get('by')}", flush=True)

    def watch(self, proc: subprocess.Popen) -> bool:
        """`hpcft stop`, the warning and the deadline; True once the job is ended (and recorded)."""
        ledger, job_id = self.ledger, self.job_id
        if self.stopped_by is not None:
            _kill_group(proc)
            ledger.transition(job_id, State.stopped, "stopped by user", cause=USER_STOP)
            print(f"[hpcft] job {job_id} stopped", flush=True)
            return True
        now = time.monotonic()
        if self.warn_at is not None and now >= self.warn_at:
            self.warn_at = None
            ledger.add_event(job_id, "warning", f"time limit in {self.grace} s: asked the trainer to save and stop",
                             grace=self.grace)
            self.relay.warn()
        if now > self.deadline:
            limit = format_duration(self.limit)
            _kill_group(proc)
            ledger.transition(job_id, State.expired, f"ran past its time limit {limit}", cause=TIMEOUT)
            ledger.add_event(job_id, "finished", "killed at the time limit", exit_code=proc.returncode)
            print(f"[hpcft] job {job_id} expired: ran past its time limit {limit}", flush=True)
            return True
        return False

    def requeued(self) -> None:
        """A local requeue: the same job goes on at once, from its checkpoint, with a fresh time allowance."""
        ledger, job_id = self.ledger, self.job_id
        ledger.transition(job_id, State.running, "requeued on the local machine", pid=os.getpid())
        ledger.add_event(job_id, "restart", f"trainer restarted after a time-limit requeue, time limit "
                         f"{format_duration(self.limit)}", cause=TIMEOUT, step=_latest_step(self.out))
        print(f"[hpcft] job {job_id} requeued: continuing from its checkpoint", flush=True)


# --------------------------------------------------------------------------------------------------- Slurm side

def run_in_allocation(job_id: int, db_url: str) -> None:
    """Run a ledger job's trainer in this Slurm task (called by submitit in every task of the job)."""
    from hpcft.jobs.hydra_point import HYDRA_METHOD, point_argv
    from hpcft.paths import public_db_url

    # the URL handed over carries no password (hpcft.paths.public_db_url); one inherited from the submitter's
    # environment for the same database does, and is the one to connect with
    inherited = os.environ.get("HPCFT_DB_URL")
    if not inherited or public_db_url(inherited) != db_url:
        os.environ["HPCFT_DB_URL"] = db_url
    db_url = os.environ["HPCFT_DB_URL"]

    ledger = open_job(db_url, job_id)
    job = ledger.get(job_id)
    # a point of a user's Hydra app sweep (hydra/launcher=hpcft) runs that app's task instead of the trainer
    argv = point_argv(job.output_dir) if job.method == HYDRA_METHOD else None
    _run_slurm_task(ledger, job_id, Path(job.output_dir) / "config.yaml", argv)


def _start_attempt(ledger, job_id: int, dist: dict, out: Path) -> bool:
    """Rank 0: move the job to running and say why this run started (first start or a Slurm restart).
    False when the job is no longer live (a user stopped it, it ended): this run must not train."""
    restarts = slurm_env.restart_count()
    host = os.uname().nodename
    job = ledger.get(job_id)
    if State(job.state) not in LIVE:
        return False
    req = stop_requested_now(ledger, job_id)
    if req is not None:  # a member asked to stop it while it was pending
        honour_stop(ledger, job_id, req, before_start=True)
        return False
    from hpcft.jobs.chain import start_after_parents  # parents succeeded; a parent's job:ID resolved (lineage)
    if not start_after_parents(ledger, job_id):
        return False
    if restarts:
        step = _latest_step(out)
        ledger.add_event(job_id, "restart", f"Slurm restarted the job (restart {restarts}); continuing from "
                         + (f"checkpoint step {step}" if step is not None else "the start (no checkpoint yet)"),
                         restart=restarts, step=step, host=host)
    changed = ledger.transition(job_id, State.running, f"started in Slurm on {host}" + (f" (restart {restarts})" if
                                restarts else ""), **slurm_env.slurm_ids())
    ledger.add_event(job_id, "started", f"Slurm job {os.environ.get('SLURM_JOB_ID')}, world size "
                     f"{dist['WORLD_SIZE']}", host=host, **dist)
    return changed is None or State(ledger.get(job_id).state) == State.running  # None: the ledger is down: train


def _requeue_slurm_job(ledger, job_id: int) -> None:
    """Put this Slurm job back in the queue (it then restarts from the checkpoint just saved)."""
    from hpcft.errors import SchedulerError
    from hpcft.slurm import commands as C

    sid = os.environ.get("SLURM_JOB_ID", "")
    try:
        C.run(C.requeue_argv(sid))
    except SchedulerError as e:
        ledger.transition(job_id, State.expired, f"the requeue at the time limit failed ({e}); `hpcft resume "
                          f"{job_id}` continues from the saved checkpoint", cause=TIMEOUT)


def _run_slurm_task(ledger, job_id: int, config_path: Path, argv: Optional[List[str]] = None) -> None:
    """Run the trainer (or `argv`, e.g. a Hydra app's point) in this task; rank 0 records the states."""
    dist = slurm_env.dist_env()
    rank = int(dist["RANK"])
    out = config_path.parent
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if rank == 0:
        ledger.start()
        try:
            _run_task(ledger, job_id, config_path, argv, dist)
        finally:
            ledger.close()
    else:
        _run_task(ledger, job_id, config_path, argv, dist)


def _run_task(ledger, job_id: int, config_path: Path, argv: Optional[List[str]], dist: dict) -> None:
    rank = int(dist["RANK"])
    out = config_path.parent
    if rank == 0 and not _start_attempt(ledger, job_id, dist, out):
        print(f"[hpcft] job {job_id} is {ledger.get(job_id).state}: not starting", flush=True)
        return
    env = trainer_env(os.environ, **dist, HPCFT_DB_URL=ledger.url)
    log = out / "logs" / ("job.log" if rank == 0 else f"rank-{rank}.log")
    relay = WarningRelay()
    previous = relay.install()  # from before the trainer starts: a warning now must not kill this worker either
    term = _exit_on_term()
    try:
        with open(log, "a") as f:
            proc = relay.popen(argv or trainer_argv(config_path, job_id), env=env, stdout=f,
                               stderr=subprocess.STDOUT, start_new_session=True)
            rc = _wait_honouring_requests(ledger, job_id, proc, relay, requests=rank == 0)
    finally:  # a return, an exception, a SIGTERM: the trainer's process group ends with this worker
        _end_group(relay.proc)
        signal.signal(WARNING_SIGNAL, previous)
        if term is not None:
            signal.signal(signal.SIGTERM, term)
    if rank == 0:
        _record_slurm_end(ledger, job_id, rc, out, log)
    if rc not in (0, exitcodes.SAVED_AT_WARNING):
        raise SystemExit(exitcodes.shell_code(rc))  # 128+N for signal N (a negative code would read 256-N)


def _exit_on_term() -> Any:
    """Where nothing handles SIGTERM (a rendered script's worker; submitit's own handler keeps its worker alive),
    turn it into an exit through the `finally` that ends the trainer's group. Returns the previous handler, or None
    when it was left alone."""
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return None

    def leave(signum, _frame):
        raise SystemExit(exitcodes.shell_code(-signum))

    return signal.signal(signal.SIGTERM, leave)


def _record_slurm_end(ledger, job_id: int, rc: int, out: Path, log: Path) -> None:
    """Rank 0: what the trainer's end means for the ledger job."""
    if rc == exitcodes.SAVED_AT_WARNING:
        ledger.add_event(job_id, "finished", "trainer saved a checkpoint at the time-limit warning", exit_code=rc)
        if after_warning_save(ledger, job_id, out) == "requeue":
            _requeue_slurm_job(ledger, job_id)
    elif rc < 0:
        # Killed by a signal: Slurm's time limit (TIMEOUT), scancel (CANCELLED), preemption, a memory kill, or a
        # kill of the trainer alone. Slurm knows which and submitit keeps this process alive through SIGTERM, so do
        # not guess `error` here: `hpcft sync` maps the accounting state (TIMEOUT -> expired, CANCELLED -> stopped,
        # FAILED -> this event's signal:N, unless the memory limit was exceeded).
        _finished_event(ledger, job_id, rc, "; state from Slurm accounting")
    else:
        _finish(ledger, job_id, rc, log)


def _wait_honouring_requests(ledger, job_id: int, proc: subprocess.Popen, relay: Optional[WarningRelay] = None,
                             requests: bool = True, on_request: Optional[Callable] = None,
                             watch: Optional[Callable[[subprocess.Popen], bool]] = None) -> Optional[int]:
    """Wait for the trainer and return its exit code, relaying a pending time-limit warning once it listens.

    With `requests` (rank 0) a stop request from another member ends the job: `on_request(proc, req)`, by default
    recorded as stopped, then the whole Slurm job cancelled (this worker runs as the job's owner, whom Slurm lets
    cancel it); its result is returned. `watch(proc)` (the local supervisor: `hpcft stop`, the time limit) is asked
    at every turn and returns True once it has ended the job: then the wait returns None."""
    next_poll = time.monotonic() + REQUEST_POLL_S
    unread = False
    while True:
        if watch is not None and watch(proc):
            return None
        if relay is not None:
            relay.pump()
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if not requests or time.monotonic() < next_poll:
            continue
        next_poll = time.monotonic() + REQUEST_POLL_S
        try:
            req = stop_requested(ledger, job_id)
            unread = False
        except Exception as e:  # the ledger unreachable for a while must not end the training (said once)
            if not unread:
                print(f"[hpcft] note: could not read requests ({type(e).__name__}); trying again every "
                      f"{REQUEST_POLL_S:g} s", flush=True)
            unread = True
            continue
        if req is not None:
            if on_request is not None:
                return on_request(proc, req)
            return _cancel_slurm_job(ledger, job_id, proc, req)


def _cancel_slurm_job(ledger, job_id: int, proc: subprocess.Popen, req) -> int:
    """A stop request on a Slurm job: recorded as stopped, then the whole Slurm job is cancelled."""
    from hpcft.slurm import commands as C

    honour_stop(ledger, job_id, req)
    C.run(C.scancel_argv([os.environ.get("SLURM_JOB_ID", "")]))
    return proc.wait()


def _listening(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: the SigCgt mask of /proc/PID/status; elsewhere
    assumed)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        return True
    return True


class WarningRelay:
    """Passes the time-limit warning on to the trainer, never before the trainer listens for it.

    The trainer starts with the signal ignored (`popen`: an ignored signal stays ignored through exec) until
    `hpcft.train.entry` installs its handler, first thing: Slurm may send `--signal=USR1@N` up to a minute early,
    and to every process of the step, and a trainer still importing torch would die of it. A warning that arrives
    while the trainer does not listen yet stays pending; `pump()` (called from the wait loops) delivers it as soon
    as the trainer's handler is there. `group`: signal the trainer's process group (local executor)."""

    def __init__(self, signum: int = WARNING_SIGNAL, group: bool = False) -> None:
        self.signum, self.group = signum, group
        self.proc: Optional[subprocess.Popen] = None
        self.pending = False

    def popen(self, argv, **kw) -> subprocess.Popen:
        """Start the trainer with the signal ignored, then relay it from this process."""
        previous = signal.signal(self.signum, signal.SIG_IGN)
        try:
            self.proc = subprocess.Popen(argv, **kw)
        finally:
            signal.signal(self.signum, previous)
        return self.proc

    def warn(self) -> None:
        self.pending = True
        self.pump()

    def pump(self) -> None:
        proc = self.proc
        if not self.pending or proc is None or proc.poll() is not None or not _listening(proc.pid, self.signum):
            return
        try:
            os.killpg(proc.pid, self.signum) if self.group else proc.send_signal(self.signum)
        except ProcessLookupError:
            pass
        self.pending = False

    def install(self) -> Any:
        """Relay the signal when this process gets it (Slurm signals the worker too); returns the old handler."""
        return signal.signal(self.signum, lambda _s, _f: self.warn())


def register_and_run(config_path: Path) -> int:
    """For a rendered sbatch script: register this Slurm job in the ledger (rank 0) and run it."""
    from hpcft.config import compose
    from hpcft.ledger.record import ledger_fields
    from hpcft.ledger.store import Ledger

    cfg = compose.from_yaml_file(config_path)
    ledger = Ledger()
    ids = slurm_env.slurm_ids()
    rank = int(slurm_env.dist_env(expand=None)["RANK"])
    if rank == 0:
        found = ledger.search(output=str(config_path.parent))
        found = [j for j in found if j.slurm_job_id == ids["slurm_job_id"]]
        if found:
            job_id = found[0].id
        else:
            from hpcft.rundir import secrets_file

            fields = ledger_fields(cfg)
            fields["config"], secret = secrets_file.split(fields["config"])  # hpcft.rundir.secrets_file
            secrets_file.write(config_path.parent, secret)
            job = ledger.create_job(**fields, executor="slurm", output_dir=str(config_path.parent), **ids)
            job_id = job.id
            from hpcft.ledger.deliver import record_events

            record_events(ledger, job_id, config_path.parent, [("submitted", "registered by a rendered sbatch script",
                                                                ids)])
            from hpcft.rundir.identity import identity_of, read_identity, write_identity

            if read_identity(config_path.parent) is None:  # its identity, as a submit writes it (hpcft.rundir.identity)
                write_identity(config_path.parent, identity_of(job, ledger.url))
        (config_path.parent / f".job-id-{ids['slurm_job_id']}").write_text(str(job_id))
    else:  # wait for rank 0 to register
        marker = config_path.parent / f".job-id-{ids['slurm_job_id']}"
        for _ in range(600):
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.5)
        job_id = int(marker.read_text().strip())
    _run_slurm_task(open_job(ledger.url, job_id), job_id, config_path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.jobs.worker")
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
