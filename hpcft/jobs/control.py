"""Operations on existing jobs shared by the CLI commands and the web console (resume, retry, stop, delete, extend,
priority, share).

A new attempt is taken with `Ledger.claim` (one compare-and-set UPDATE on state and attempt): of two `hpcft retry`
processes started by cron at the same moment, or a retry racing a user's `hpcft resume`, exactly one submits.
`hpcft retry` resubmits only transient failures, by the cause recorded with the failure (`retry_verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from hpcft import exitcodes
from hpcft import states as S
from hpcft.errors import HpcftError, StateError
from hpcft.jobs.hydra_point import HYDRA_METHOD
from hpcft.states import State, is_terminal

# causes `hpcft retry` resubmits without being asked: the job did nothing wrong
TRANSIENT = frozenset({S.NODE_FAIL, S.PREEMPTED, S.BOOT_FAIL, S.WORKER_LOST})
# causes it never resubmits: the user's decision, or a job that would fail the same way again
NEVER = frozenset({S.USER_STOP, S.BAD_INPUT, f"exit:{exitcodes.BAD_INPUT}", S.SUBMIT_FAILED})
# a run that ended at its time limit (or saved a checkpoint at the warning and stopped): continued from its
# checkpoint only when asked with `--state expired`
TIME_LIMIT = frozenset({S.TIMEOUT, f"exit:{exitcodes.SAVED_AT_WARNING}"})


def retry_verdict(cause: Optional[str], *, oom: bool = False, exit_codes: Iterable[int] = (),
                  time_limit: bool = False) -> Tuple[bool, str]:
    """(retry?, why) for a job that ended with `cause`. Retried: node_fail, preempted, boot_fail, worker_lost; oom with
    `oom`; exit:N for N in `exit_codes` (signal:S matches code 128+S, as a shell reports a killed process, e.g.
    137 for SIGKILL); disk_full with 74 in `exit_codes` (after freeing space); timeout / exit:75 with `time_limit`.
    Never: user_stop, bad_input, exit:2, submit_failed,
    and a failure without a recorded cause."""
    codes = {int(c) for c in exit_codes}
    if cause is None:
        return False, "no recorded cause"
    if cause in NEVER:
        return False, cause
    if cause in TRANSIENT:
        return True, cause
    if cause == S.OOM:
        return oom, cause if oom else "oom (retried with --oom)"
    if cause == S.DISK_FULL:  # only once someone freed space, which cron cannot know: asked for by its exit code
        ok = exitcodes.DISK_FULL in codes
        return ok, cause if ok else f"{cause} (retried with --exit-codes {exitcodes.DISK_FULL} once space is freed)"
    if cause in TIME_LIMIT:
        return time_limit, cause if time_limit else f"{cause} (retried with --state expired)"
    kind, _, num = cause.partition(":")
    if kind == "exit" and num.isdigit() and int(num) in codes:
        return True, cause
    if kind == "signal" and num.isdigit() and 128 + int(num) in codes:
        return True, cause
    if kind in ("exit", "signal"):
        return False, f"{cause} (not in --exit-codes)"
    return False, cause


def parse_exit_codes(text: str) -> List[int]:
    """'1,137' -> [1, 137]; exit code 2 (a config or data error) is refused: retrying cannot help."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) > 255:
            raise HpcftError(f"--exit-codes {text}: {part!r} is not an exit code; e.g. --exit-codes 1,137")
        if int(part) == exitcodes.BAD_INPUT:
            raise HpcftError(f"--exit-codes {text}: exit code {exitcodes.BAD_INPUT} means the config or the data is "
                             "wrong; retrying cannot help, fix the job and `hpcft resume` it")
        out.append(int(part))
    return out


def backoff_s(base_s: float, attempt: int) -> float:
    """Seconds to wait after attempt `attempt` ended before the next one: base x 2**(attempt-1)."""
    return float(base_s) * 2 ** max(0, int(attempt) - 1)


def _aware(dt: Optional[datetime]) -> Optional[datetime]:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


# ------------------------------------------------------------------------------------------------ never submitted

UNSUBMITTED_GRACE_S = 300  # a submit hands a new row to its executor within seconds; 5 minutes is a failure


def settle_unsubmitted(ledger, jobs: Sequence, grace_s: float = UNSUBMITTED_GRACE_S,
                       now: Optional[datetime] = None) -> int:
    """`hpcft sync`: the acting user's jobs left `queued` with no Slurm id and no local process for more than
    `grace_s` since their row last changed (a submit that failed between the ledger row and the executor: killed,
    a crash, a full disk) become `error`, cause submit_failed, with why. Returns how many changed."""
    now = now or datetime.now(timezone.utc)
    user = ledger.user
    changed = 0
    for job in jobs:
        if job.state != State.queued.value or job.slurm_job_id or job.pid or job.owner != user:
            continue
        since = _aware(job.updated_at) or _aware(job.created_at)
        if since is None or (now - since).total_seconds() <= grace_s:
            continue
        minutes = int((now - since).total_seconds() // 60)
        changed += ledger.transition(
            job.id, State.error, f"never handed to the {job.executor} executor: queued {minutes} min with no Slurm "
            "job id and no local process (the submit failed after the ledger row was created); submit it again",
            cause=S.SUBMIT_FAILED)
    return changed


# ------------------------------------------------------------------------------------------------ remote code

def refuse_foreign_remote_code(ledger, job, action: str) -> None:
    """A job whose config sets model.trust_remote_code=true runs model code from the model's repository: only the
    user who enabled it (the job's owner, who submitted that config) may run it again. AccessDenied otherwise."""
    from hpcft.ledger.access import AccessDenied

    model = (job.config or {}).get("model") or {}
    if model.get("trust_remote_code") and ledger.user != job.owner:
        raise AccessDenied(f"job {job.id}: model.trust_remote_code=true was enabled by {job.owner}; only {job.owner} "
                           f"may {action} it (it would run the model's code as {ledger.user})")
    if job.method == HYDRA_METHOD and ledger.user != job.owner:  # the owner's pickled task, never run as another
        raise AccessDenied(f"job {job.id}: a point of {job.owner}'s Hydra app; only {job.owner} may {action} it (it "
                           f"would run {job.owner}'s code as {ledger.user})")


# ------------------------------------------------------------------------------------------------ resume

def _claim_and_submit(ledger, job, checkpoint: Optional[str], reason: str, cause: Optional[str]):
    """Claim the next attempt of `job` as read (state, attempt); the winner writes config.yaml and submits.
    Returns the submitted job, or None when another process claimed it first. A refused submission ends the new
    attempt as error with cause submit_failed (and an event) and raises."""
    from omegaconf import OmegaConf

    from hpcft.jobs.executors import get_executor
    from hpcft.jobs.submit import write_config

    trainer = job.method != HYDRA_METHOD  # a Hydra app's point runs its saved task again: no trainer config
    cfg = OmegaConf.create(job.config)
    if trainer:
        OmegaConf.update(cfg, "training.resume_from", str(Path(checkpoint).resolve()) if checkpoint else "latest",
                         force_add=True)
    if not ledger.claim(job.id, job.state, job.attempt, reason, cause=cause, config=OmegaConf.to_container(cfg)):
        return None
    try:
        if trainer:
            write_config(cfg, Path(job.output_dir))
        from hpcft.jobs.pipeline import resubmit  # behind its live parents; the dependants its end stopped follow

        return resubmit(ledger, job, get_executor(job.executor))
    except Exception as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = lines[0] if lines else type(e).__name__
        ledger.add_event(job.id, "retry", f"resubmission failed: {why}", error=why)
        ledger.transition(job.id, State.error, f"resubmission failed: {why}", cause=S.SUBMIT_FAILED)
        raise


def resume(ledger, job_id: int, checkpoint: Optional[str] = None, reason: Optional[str] = None,
           cause: Optional[str] = None):
    """A new attempt of an ended job, in its run directory, from its latest (or a chosen) checkpoint."""
    job = ledger.get(job_id)
    if not is_terminal(job.state):
        raise HpcftError(f"job {job_id} is {job.state}; only an ended job can be resumed (stop it first)")
    refuse_foreign_remote_code(ledger, job, "resume")
    if checkpoint and job.method == HYDRA_METHOD:
        raise HpcftError(f"--checkpoint: job {job_id} is a point of a Hydra app's sweep; it runs its task again "
                         "from the start (drop --checkpoint)")
    if checkpoint and not Path(checkpoint).is_dir():
        raise HpcftError(f"--checkpoint {checkpoint}: not a directory; see {job.output_dir}/checkpoints")
    why = reason or ("run again" if job.method == HYDRA_METHOD else
                     f"resumed from {Path(checkpoint).resolve() if checkpoint else 'latest'}")
    done = _claim_and_submit(ledger, job, checkpoint, why, cause)
    if done is None:
        raise StateError(f"job {job_id}: another resume/retry took attempt {job.attempt + 1} first; see "
                         f"`hpcft events {job_id}`")
    return done


def retry_one(ledger, job_id: int):
    """The console's Retry of one failed job: `hpcft resume` from the latest checkpoint, recorded as a retry after
    the cause of its failure (the cause `hpcft retry` would judge it by)."""
    job = ledger.get(job_id)
    if job.state not in (State.error.value, State.expired.value):
        raise StateError(f"job {job_id} is {job.state}: only a failed (error) or expired job is retried; "
                         "use resume to run another ended job again")
    cause = ledger.causes([job_id]).get(job_id)
    return resume(ledger, job_id, reason=f"retry {job.attempt + 1} after {cause or job.state}", cause=cause)


def resumed_line(job) -> str:
    """What `hpcft resume` (and the web console) says of a resumed job."""
    frm = (job.config.get("training") or {}).get("resume_from") if job.method != HYDRA_METHOD else None
    return f"job {job.id}: attempt {job.attempt} queued " + (f"(resume from {frm})" if frm else "(runs again)")


# ------------------------------------------------------------------------------------------------ retry

@dataclass
class RetryReport:
    resubmitted: List[int] = field(default_factory=list)
    waiting: List[int] = field(default_factory=list)  # retryable, backoff not over yet
    not_retryable: List[int] = field(default_factory=list)  # cause never retried, not asked for, or out of attempts
    failed: List[int] = field(default_factory=list)  # claimed, but the executor refused the submission
    taken: List[int] = field(default_factory=list)  # another process claimed the attempt first

    def summary(self) -> str:
        """One line for cron mail."""

        def ids(xs: List[int]) -> str:
            return f" ({', '.join(map(str, xs))})" if xs else ""

        line = (f"retry: {len(self.resubmitted)} resubmitted{ids(self.resubmitted)}; {len(self.waiting)} waiting for "
                f"backoff; {len(self.not_retryable)} not retryable; {len(self.failed)} failed to submit"
                f"{ids(self.failed)}")
        if self.taken:
            line += f"; {len(self.taken)} taken by another retry{ids(self.taken)}"
        return line

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def retry_failed(ledger, max_attempts: int = 3, states: Sequence[str] = ("error",), *, oom: bool = False,
                 exit_codes: Iterable[int] = (), backoff: float = 300.0,
                 now: Optional[datetime] = None) -> RetryReport:
    """Resubmit (from the latest checkpoint) every ended job in `states` that failed for a retryable cause
    (`retry_verdict`), has attempts left (`max_attempts` in all) and has waited its backoff
    (`backoff` x 2**(attempt-1) seconds since it finished). Each job is claimed with `Ledger.claim`, so concurrent
    runs never submit one twice; one refused submission does not stop the others (it is recorded on its job)."""
    now = _aware(now) or datetime.now(timezone.utc)
    codes = list(exit_codes)
    time_limit = State.expired.value in [str(State(s)) for s in states]
    report = RetryReport()
    jobs = sorted(ledger.search(state=list(states)), key=lambda j: j.id)
    causes = ledger.causes([j.id for j in jobs])
    for job in jobs:
        cause = causes.get(job.id)
        ok, why = retry_verdict(cause, oom=oom, exit_codes=codes, time_limit=time_limit)
        if ok and job.owner != ledger.user and ((job.config or {}).get("model", {}).get("trust_remote_code")
                                                or job.method == HYDRA_METHOD):
            ok = False  # refuse_foreign_remote_code: only its owner may run that code again
        if not ok or job.attempt >= max_attempts:
            report.not_retryable.append(job.id)
            continue
        ended = _aware(job.finished_at or job.updated_at)
        if ended is not None and (now - ended).total_seconds() < backoff_s(backoff, job.attempt):
            report.waiting.append(job.id)
            continue
        reason = f"retry {job.attempt + 1}/{max_attempts} after {why}"
        try:
            done = _claim_and_submit(ledger, job, None, reason, cause)
        except Exception:  # recorded on the job (event + error, cause submit_failed) by _claim_and_submit
            report.failed.append(job.id)
            continue
        (report.resubmitted if done is not None else report.taken).append(job.id)
    return report


def carry_out_stop_requests(ledger, jobs) -> int:
    """The owner's side of a read-write member's stop: the acting user's own queued jobs with an open stop request
    are cancelled (a running one is stopped by its worker within seconds). Returns how many were stopped."""
    from hpcft.jobs.executors import get_executor

    n = 0
    for job in jobs:
        if job.owner != ledger.user or job.state != State.queued.value:
            continue
        reqs = ledger.open_requests(job.id, "stop")
        if not reqs:
            continue
        get_executor(job.executor).stop(ledger, job)
        for r in reqs:
            ledger.request_done(job.id, r, f"cancelled by {job.owner}'s sync while pending")
        n += 1
    return n


# ------------------------------------------------------------------------------------------------ stop, delete, change
# shared by the CLI (`hpcft stop|delete|extend|priority`) and the web console: the caller has authorised the action
# (hpcft.ledger.access.authorize) and passes the level it got; each returns (or says) the CLI's one-line message

def stop_job(ledger, job, lvl: str, by_request: bool = False) -> str:
    """Stop one job (a stop you ask for is recorded as `stopped`). A read-write member's stop of someone else's job
    is recorded as a request that the owner's side carries out (Slurm lets only the owner stop it); so is every stop
    `by_request` (the team console, which never acts as its own identity)."""
    from hpcft.jobs.executors import get_executor
    from hpcft.ledger.access import acts_for_owner

    if is_terminal(job.state):
        return f"job {job.id} already ended: {job.state}"
    if acts_for_owner(lvl) or by_request:
        ledger.request(job.id, "stop", ledger.user)
        when = ("its worker stops it within about 10 s" if job.state == "running" else
                f"it is cancelled when it starts, or at {job.owner}'s next `hpcft sync`")
        return f"job {job.id} runs as {job.owner}: stop requested (recorded); {when}"
    get_executor(job.executor).stop(ledger, job)  # records the request as a `stop` event
    return f"job {job.id}: stop requested"


def check_deletable(checked, by_request: bool = False) -> List:
    """The jobs of `checked` [(job, level)] when all may be deleted now; AccessDenied (nothing deleted) for a live job
    of someone else's that only its owner can stop (`by_request`: any live job)."""
    from hpcft.ledger.access import AccessDenied, acts_for_owner

    for j, lvl in checked:
        if (acts_for_owner(lvl) or by_request) and not is_terminal(j.state):
            raise AccessDenied(f"job {j.id} (owner {j.owner}) is {j.state} and runs as {j.owner}: stop it first "
                               f"(`hpcft stop {j.id}`), delete it once it has ended (nothing was deleted)")
    return [j for j, _ in checked]


def delete_jobs(ledger, jobs, say=lambda _line: None) -> int:
    """Delete `jobs` (checked by `check_deletable`) from the ledger; live ones are stopped first and their local
    supervisors waited for, so that nothing writes into a deleted row. Returns how many rows went."""
    from hpcft.jobs.executors import get_executor

    live = [j for j in jobs if not is_terminal(j.state)]
    for j in live:
        get_executor(j.executor).stop(ledger, j)
        say(f"job {j.id}: stop requested (it was {j.state})")
    wait_for_supervisors([j for j in live if j.executor == "local" and j.pid])
    return ledger.delete([j.id for j in jobs])


def wait_for_supervisors(jobs, timeout: float = 30.0) -> None:
    """Local jobs being deleted: wait until their supervisors have ended the trainers (SIGTERM, grace, SIGKILL) so
    that nothing writes into a deleted row or a purged directory; past `timeout`, kill the process group."""
    import os
    import signal
    import time

    from hpcft.jobs.executors.local import alive

    deadline = time.monotonic() + timeout
    for j in jobs:
        while alive(j.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(j.pid):
            try:
                os.killpg(j.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def require_slurm(job) -> None:
    if job.executor != "slurm" or not job.slurm_job_id:
        raise HpcftError(f"job {job.id} runs on the {job.executor} executor; this command needs a Slurm job")


def change_slurm_job(ledger, job, lvl: str, action: str, value: str, by_request: bool = False) -> str:
    """`extend` (value: a time limit) or `priority` (low | normal | high) of a queued or running Slurm job. A
    read-write member's change to someone else's job is recorded as a request that an operator's `hpcft admin apply`
    (cron) carries out: Slurm lets only its owner and operators change it."""
    from hpcft.jobs.executors.slurm import extend, set_priority
    from hpcft.ledger.access import acts_for_owner

    require_slurm(job)
    what = "time limit" if action == "extend" else "priority"
    if is_terminal(job.state):
        raise HpcftError(f"job {job.id} already ended ({job.state}); its {what} cannot change")
    if acts_for_owner(lvl) or by_request:
        ledger.request(job.id, action, ledger.user, **({"time": value} if action == "extend" else {"level": value}))
        return (f"job {job.id} runs as {job.owner}: {what} {value} requested (recorded, not yet applied); a Slurm "
                "operator's `hpcft admin apply` (cron) applies it, usually within minutes; `hpcft events` shows when")
    if action == "extend":
        return f"job {job.id}: time limit now {extend(ledger, job, value)}"
    set_priority(ledger, job, value)
    return f"job {job.id}: priority {value}"


# ------------------------------------------------------------------------------------------------ share

def share_job(ledger, job_id: int, level: str) -> str:
    """`hpcft share JOB LEVEL`: what the other members of the job's project may do (none / ro / rw; never more than
    the job it is built from allows), its run directory's ACLs first (a refused change leaves the ledger as it was),
    then the ledger and an event. Returns the CLI's line."""
    from hpcft.ledger import access

    level = access.check_level(level, "level")
    job, _ = access.authorize(ledger, job_id, "share")
    if job.parent_id is not None:
        try:
            parent = ledger.get(job.parent_id)
        except HpcftError:
            parent = None
        if parent is not None:
            access.cap_to_parent(level, parent.access, parent.id)
    others = access.share_run_dir(ledger, job, level)
    note = f"; run directory shared with {', '.join(others)}" if others else "; run directory private"
    ledger.update(job_id, access=level)
    ledger.add_event(job_id, "share", f"shared {level} with project {job.project} by {ledger.user}", access=level,
                     by=ledger.user)
    return f"job {job_id}: access {level} for the members of project {job.project}{note}"
