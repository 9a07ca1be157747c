"""The Slurm executor: submitit submits `hpcft.jobs.worker.run_in_allocation(job_id, db_url)` into every task.

- The ledger URL handed to the job (pickled by submitit into the run directory) carries no password
  (`paths.public_db_url`): the job authenticates with PGPASSWORD or ~/.pgpass on the compute node.
- Resources go through `hpcft.slurm.sbatch.sbatch_options` (the one mapping) and are handed to submitit: options
  submitit knows become its parameters, the rest `additional_parameters`.
- A sweep (several jobs with the same sbatch options) is ONE Slurm job array (`executor.batch()`); each point
  keeps its ledger row with `slurm_job_id="123_0"`, `array_job_id`, `array_task_id`. Nothing waits for results.
- `sync` reads every given job with ONE `sacct` call (and ONE `squeue` call for jobs Slurm may have requeued) and
  moves the ledger through `Ledger.transition`, with the cause of every end. A FAILED job's exit code cannot tell a
  memory kill, a killed trainer and a killed worker apart: `failure_evidence` reads Slurm's memory-limit message in
  the job's output and the trainer's end its worker recorded (`oom`, `signal:N` or `worker_lost`).
- `extend`, `set_priority`, `predict` talk to scontrol / sbatch --test-only / squeue and record events.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcft.errors import ConfigError, SchedulerError
from hpcft.jobs.executors.base import Executor
from hpcft.rundir.files import make_run_dir
from hpcft.paths import public_db_url
from hpcft.slurm import commands as C
from hpcft.slurm.sbatch import (PRIORITIES, PRIORITY_NICE, PRIORITY_QOS, Options, default_policy, safe_job_name,
                                sbatch_options, to_argv)
from hpcft.states import LIVE, USER_STOP, State
from hpcft.timefmt import format_duration, parse_duration

# submitit asks for USR2 90 s before the time limit and, for a function that cannot checkpoint, turns it into a
# failure. hpcft's own warning (resources.signal_grace -> --signal=USR1@N, from sbatch_options) replaces it; with the
# warning off, the option still replaces submitit's: SIGURG to the batch shell only (B:), which ignores it.
NO_WARNING_SIGNAL = "B:URG@1"


def _submitit_parameters(opts: Options) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split sbatch options into submitit's own parameters and `additional_parameters` (no mapping of values)."""
    from submitit.slurm.slurm import _make_sbatch_string

    native_names = set(inspect.signature(_make_sbatch_string).parameters)
    native: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    for key, value in opts.items():
        v = True if value is None else value
        name = key.replace("-", "_")
        if name in native_names and name not in ("command", "folder", "additional_parameters"):
            native[name] = int(v) if isinstance(v, str) and v.isdigit() else v  # submitit computes with counts
        else:
            extra[key] = v
    extra.setdefault("signal", NO_WARNING_SIGNAL)
    return native, extra


def job_options(job, policy: Optional[str] = None) -> Options:
    """sbatch options of a ledger job (its resources and name; submitit adds output, error and array)."""
    return sbatch_options(job.resources or {}, job_name=job.name, priority_policy=policy)


def _submitit_id(sj) -> str:
    return str(sj.job_id)


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, priority_policy: Optional[str] = None):
        self.priority_policy = priority_policy

    # ------------------------------------------------------------------------------------------ submit
    def submit(self, ledger, jobs: Sequence) -> List:
        import submitit

        from hpcft.jobs.worker import run_in_allocation

        groups: Dict[Tuple, List] = {}
        for job in jobs:
            opts = job_options(job, self.priority_policy)
            opts.pop("job-name", None)  # an array takes its first point's name: group by resources only
            groups.setdefault(tuple(opts.items()), []).append(job)

        url = public_db_url(ledger.url)  # pickled into the run dir by submitit: never a password (PGPASSWORD/.pgpass)
        out = []
        for group in groups.values():
            first = group[0]
            opts = job_options(first, self.priority_policy)
            if len(group) == 1:
                folder = Path(first.output_dir) / "slurm"
            else:
                folder = Path(first.output_dir).parent / f"slurm-array-{first.id}"
                # the sweep's name without the points' values (`quickstart-tiny-lora lr=2e-3` -> quickstart-tiny-lora)
                common = os.path.commonprefix([j.name for j in group]).rpartition(" ")[0].strip()
                opts["job-name"] = safe_job_name(f"{common or first.name}-sweep")
            make_run_dir(folder)  # private like the run directories (0700): array task logs too
            if first.uuid:  # the identity Slurm keeps: a submission that failed ambiguously is found by it
                opts["comment"] = C.submission_tag(first.uuid, opts.get("comment"))
            native, extra = _submitit_parameters(opts)
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
            ex.update_parameters(**native, additional_parameters=extra, array_parallelism=len(group),
                                 setup=[adopt_pickle_line(folder)])
            try:
                if len(group) == 1:
                    submitted = [ex.submit(run_in_allocation, first.id, url)]
                else:  # ONE sbatch --array; the Job objects get their ids ("123_0", ...) when the block ends
                    with ex.batch():
                        submitted = [ex.submit(run_in_allocation, job.id, url) for job in group]
            except (submitit.core.utils.FailedSubmissionError, submitit.core.utils.FailedJobError,
                    subprocess.CalledProcessError, OSError) as e:
                why = _sbatch_reason(str(e).strip().splitlines())
                if first.uuid and C.is_ambiguous(why):  # a timeout: Slurm may hold the job all the same
                    out += settle_ambiguous(ledger, group, why, folder)
                    continue
                if isinstance(e, submitit.core.utils.FailedJobError):
                    raise
                raise SchedulerError(f"sbatch refused the job: {why}") from None
            out += self._record(ledger, group, submitted, folder)
        return out

    def _record(self, ledger, group, submitted, folder) -> List:
        return [record_slurm_id(ledger, job, _submitit_id(sj), f"submitted as Slurm job {_submitit_id(sj)}",
                                folder=str(folder)) for job, sj in zip(group, submitted, strict=True)]

    # ------------------------------------------------------------------------------------------ stop
    def stop(self, ledger, job) -> None:
        user = ledger.user
        if not job.slurm_job_id:
            ledger.add_event(job.id, "stop", f"stop requested by {user}", user=user)
            ledger.transition(job.id, State.stopped, f"stopped by {user} before it reached Slurm",
                              cause=USER_STOP)
            return
        try:
            C.run(C.scancel_argv([job.slurm_job_id]))
        except SchedulerError as e:
            if not re.search(r"already completing or completed|invalid job id", str(e), re.IGNORECASE):
                raise  # refused (e.g. not the owner): nothing is recorded as if the stop had happened
            self.sync(ledger, [job])  # it ended before the stop arrived: record how it ended
            return
        ledger.add_event(job.id, "stop", f"stop requested by {user}", user=user, slurm_job_id=job.slurm_job_id)
        # scancel answers 0 even for a job that had already ended: record what Slurm knows now, and a job that
        # was still pending is stopped at once (Slurm's accounting may not show the cancel yet)
        self.sync(ledger, [ledger.get(job.id)])
        if ledger.get(job.id).state == State.queued.value:
            ledger.transition(job.id, State.stopped, f"cancelled by {user} while pending", source="slurm",
                              cause=USER_STOP)

    # ------------------------------------------------------------------------------------------ sync
    def sync(self, ledger, jobs: Sequence) -> int:
        """ONE sacct call for all these live jobs; ONE squeue call for those Slurm may have requeued (sacct shows
        NODE_FAIL / PREEMPTED / REQUEUED, or PENDING for a job the ledger has running). A requeued job goes back to
        queued with the cause, never to error; every end is recorded with its cause (`SacctRecord.ledger_cause`)
        and Slurm's Start / End as started_at / finished_at (`slurm_times`), never the time of this sync."""
        from hpcft.ledger.deliver import ingest

        live = [j for j in jobs if j.slurm_job_id and State(j.state) in LIVE]
        if not live:
            return 0
        # what the jobs wrote into their journals first (an end recorded during a ledger outage is the job's own)
        rows, done = ingest(ledger, live)
        ended = _publish_ingested(ledger, done)
        live = [j for j in rows if State(j.state) in LIVE]
        if not live:
            return ended
        records = C.parse_sacct(C.run(C.sacct_argv(j.slurm_job_id for j in live)))
        check = [j.slurm_job_id for j in live
                 if j.slurm_job_id in records and C.needs_queue_check(records[j.slurm_job_id], j.state)]
        queue = squeue_jobs(check) if check else {}
        changed = 0
        for job in live:
            rec = records.get(job.slurm_job_id)
            if rec is not None and rec.slurm_state in ("FAILED", "SPECIAL_EXIT"):
                failure_evidence(ledger, job, rec)
            decision = C.sync_decision(rec, job.state, queue) if rec is not None else None
            if decision is None:
                continue
            moved = ledger.transition(job.id, decision.state, decision.reason, source="slurm-sync",
                                      cause=decision.cause, **C.slurm_times(rec, decision.state))
            changed += bool(moved)
            if moved and decision.state == State.success:  # its worker did not record the end: publish.auto here
                from hpcft.registry.publish import auto_publish

                auto_publish(ledger, job.id)
        from hpcft.jobs.chain import settle_dependants  # a parent that failed: its pending dependants end

        return changed + ended + settle_dependants(ledger, live)


def record_slurm_id(ledger, job, sid: str, message: str, **data: Any) -> Any:
    fields: Dict[str, Any] = {"slurm_job_id": sid}
    if "_" in sid:
        base, task = sid.split("_", 1)
        fields.update(array_job_id=base, array_task_id=int(task))
    row = ledger.update(job.id, **fields)
    if row.output_dir:  # in the run directory's journal too (hpcft admin rebuild takes the Slurm id from it)
        from hpcft.ledger.deliver import record_events

        record_events(ledger, job.id, row.output_dir, [("slurm", message, {**data, **fields})])
    else:
        ledger.add_event(job.id, "slurm", message, **data, **fields)
    return ledger.get(job.id)


class SubmissionUncertain(SchedulerError):
    """sbatch failed without saying whether Slurm took the job, and Slurm could not be asked: the rows stay queued
    (never `error` for a job that may be queued) until `hpcft sync` finds the job by its identity, or settles it."""


def tagged_jobs(user: str) -> Optional[Dict[str, List[Tuple[str, str]]]]:
    """{identity: [(Slurm id, state)]} of the user's jobs Slurm holds, or None when Slurm does not answer."""
    try:
        return C.parse_tagged_jobs(C.run(C.tagged_jobs_argv(user), timeout=20))
    except SchedulerError:
        return None


ADOPT_PREFIX = "adopt-"


def adopt_pickle_line(folder: Path) -> str:
    """A line of the batch script, before submitit's worker starts: a job Slurm took from a sbatch that timed out
    finds its task under the name `settle_ambiguous` gave it (submitit names it after the job id, which that sbatch
    never printed): task k of the submission is `adopt-k_submitted.pkl`."""
    import shlex

    f = shlex.quote(str(folder))
    return (f'_id=${{SLURM_ARRAY_JOB_ID:+${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}}}; _id=${{_id:-$SLURM_JOB_ID}}; '
            f'_k=${{SLURM_ARRAY_TASK_ID:-0}}; [ -e {f}/"${{_id}}_submitted.pkl" ] || '
            f'{{ [ -e {f}/"{ADOPT_PREFIX}${{_k}}_submitted.pkl" ] && '
            f'mv {f}/"{ADOPT_PREFIX}${{_k}}_submitted.pkl" {f}/"${{_id}}_submitted.pkl"; }}; true')


def _keep_tasks(folder: Path, n: int) -> None:
    """The task pickles a failed sbatch left under submitit's temporary names (newest n, in the order submitit
    wrote them, which is the order of the tasks), renamed for `adopt_pickle_line`."""
    temps = sorted((p for p in folder.glob("*.pkl") if len(p.stem) == 32 and p.stem.isalnum()),
                   key=lambda p: p.stat().st_mtime_ns)[-n:]
    for k, p in enumerate(temps):
        p.rename(folder / f"{ADOPT_PREFIX}{k}_submitted.pkl")


def settle_ambiguous(ledger, group: Sequence, why: str, folder: Path) -> List:
    """sbatch failed ambiguously (a timeout): ask Slurm for the submission's identity; adopt what it holds, raise
    SchedulerError when it holds nothing (a refusal after all), SubmissionUncertain when it does not answer."""
    _keep_tasks(folder, len(group))  # first: Slurm may start the job it took at any moment
    found = tagged_jobs(ledger.user)
    if found is None:
        for job in group:
            ledger.add_event(job.id, "submit_uncertain", f"sbatch failed ({why}) and Slurm did not answer: the job "
                             "may be queued all the same; `hpcft sync` adopts it, or settles the row", why=why)
        raise SubmissionUncertain(f"sbatch did not answer ({why}); Slurm may have taken job(s) "
                                  f"{', '.join(str(j.id) for j in group)} all the same: they stay queued, and "
                                  "`hpcft sync` adopts them once Slurm answers (or records why not)")
    ids = [sid for sid, _ in found.get(group[0].uuid, [])]
    if len(ids) != len(group):
        raise SchedulerError(f"sbatch refused the job: {why}")
    return [record_slurm_id(ledger, job, sid, f"adopted Slurm job {sid}: sbatch failed ({why}) but Slurm had taken "
                            "it", folder=str(folder), adopted=True) for job, sid in zip(group, ids, strict=True)]


def unrecorded_submissions(ledger, recent: int = 200) -> List:
    """The acting user's Slurm rows without a Slurm id that a timed-out sbatch may have left: the live ones, and
    the newest `recent` ended ones (a row `sync` settled as never submitted, stopped before it reached Slurm)."""
    me = ledger.user
    rows = ledger.search(executor="slurm", state=[State.queued, State.error, State.stopped], limit=recent)
    return [j for j in rows if not j.slurm_job_id and j.owner == me and j.uuid]


def adopt_or_cancel(ledger, jobs: Sequence) -> int:
    """`hpcft sync`: the acting user's Slurm jobs that carry an hpcft identity the ledger did not record (a
    submission that timed out): adopted by their row when it is still queued with no Slurm id, cancelled when the
    row has ended (never a ghost allocation). ONE squeue call, made only when some row could need it."""
    rows = {j.uuid: j for j in jobs if j.uuid and j.executor == "slurm" and not j.slurm_job_id}
    if not rows:
        return 0
    found = tagged_jobs(ledger.user) or {}
    changed = 0
    for uuid, held in found.items():
        job = rows.get(uuid)
        if job is None:
            continue
        live = [sid for sid, st in held if st in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED")]
        if job.state == State.queued.value and len(held) == 1:
            record_slurm_id(ledger, job, held[0][0], f"adopted Slurm job {held[0][0]}: its submission timed out but "
                            "Slurm had taken it", adopted=True)
            changed += 1
        elif State(job.state) not in LIVE and live:
            C.run(C.scancel_argv(live))
            ledger.add_event(job.id, "slurm", f"cancelled Slurm job(s) {', '.join(live)}: submitted by a sbatch that "
                             f"timed out after this job had ended {job.state}", cancelled=live)
            changed += 1
    return changed


def _publish_ingested(ledger, done: Dict[int, Any]) -> int:
    """State changes taken from journals: their number; a success among them publishes (publish.auto) here, since
    the worker could not."""
    from hpcft.registry.publish import auto_publish

    for job_id, d in done.items():
        if any(r.get("to") == State.success.value for r in d.changes):
            auto_publish(ledger, job_id)
    return sum(len(d.changes) for d in done.values())


OUTPUT_TAIL_BYTES = 256 * 1024  # Slurm writes its memory-limit message at the end of the job's output


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def job_output_files(job, events) -> List[Path]:
    """The files Slurm wrote a job's output to: submitit's logs (`<folder>/<id>_<task>_log.{err,out}`, the folder
    from the job's `slurm` event) and a rendered script's `logs/slurm-<id>.out`."""
    sid = str(job.slurm_job_id)
    folders = [Path(e.data["folder"]) for e in events if e.kind == "slurm" and (e.data or {}).get("folder")]
    files: List[Path] = []
    for folder in dict.fromkeys(folders[-1:] or [Path(job.output_dir) / "slurm"]):
        files += sorted(folder.glob(f"{sid}_[0-9]*_log.err")) + sorted(folder.glob(f"{sid}_[0-9]*_log.out"))
    return files + [Path(job.output_dir) / "logs" / f"slurm-{sid}.out"]


def failure_evidence(ledger, job, rec: C.SacctRecord) -> C.SacctRecord:
    """Fill what sacct cannot say about a FAILED job (`rec.memory_exceeded`, `rec.trainer_signal`): Slurm's
    memory-limit message in the job's output, and the signal that killed the trainer as the job's worker recorded
    it (its `finished` event since the run's last `started` event, in the current attempt)."""
    events = [e for e in ledger.events(job.id) if e.attempt == job.attempt]
    rec.memory_exceeded = any(C.says_memory_exceeded(_tail(f)) for f in job_output_files(job, events))
    starts = [i for i, e in enumerate(events) if e.kind == "started"]
    since = events[starts[-1]:] if starts else events
    signals = [(e.data or {}).get("signal") for e in since if e.kind == "finished"]
    rec.trainer_signal = int(signals[-1]) if signals and signals[-1] else None
    return rec


def squeue_jobs(job_ids: Sequence[str]) -> Optional[Dict[str, C.QueueState]]:
    """What squeue says about these jobs ({} = Slurm holds none of them); None when squeue does not answer."""
    try:
        return C.parse_squeue_jobs(C.run(C.squeue_jobs_argv(job_ids)))
    except SchedulerError as e:
        return {} if C.is_invalid_job_id(e) else None


def _sbatch_reason(lines: List[str]) -> str:
    for line in lines:
        if "error" in line.lower():
            return line.strip()
    return lines[-1].strip() if lines else "unknown error"


# ---------------------------------------------------------------------------------------------- operations

def _slurm_id(job) -> str:
    if not job.slurm_job_id:
        raise SchedulerError(f"job {job.id} has no Slurm job id (executor {job.executor}); nothing to change")
    if State(job.state) not in LIVE:
        raise SchedulerError(f"job {job.id} is {job.state}: only a queued or running job can be changed")
    return job.slurm_job_id


def show_job(slurm_job_id: str) -> Dict[str, str]:
    jobs = C.parse_show_job(C.run(C.show_job_argv(slurm_job_id)))
    if not jobs:
        raise SchedulerError(f"scontrol show job {slurm_job_id}: no such job")
    return jobs[0]


def extend(ledger, job, time: str) -> str:
    """Set the time limit (`time`, e.g. 02:00:00), or change it by `+30`/`-10` minutes style values. Returns the
    new limit as Slurm reports it. Raising a limit needs a Slurm operator/admin (SchedulerError says so)."""
    sid = _slurm_id(job)
    t = str(time).strip()
    sign = t[0] if t[:1] in "+-" else ""
    try:
        value = sign + format_duration(parse_duration(t[len(sign):]))
    except ValueError:
        raise ConfigError(f"time={time}: not a Slurm time; use HH:MM:SS, minutes, or +MINUTES to add") from None
    C.run(C.update_time_argv(sid, value))
    new = show_job(sid).get("TimeLimit", value)
    resources = dict(job.resources or {}, time=new)
    ledger.update(job.id, resources=resources)
    ledger.add_event(job.id, "extend", f"time limit set to {new} (asked {value})", requested=value, time=new,
                     user=ledger.user)
    return new


def set_priority(ledger, job, level: str, policy: Optional[str] = None) -> None:
    """Change a live job's priority level (low/normal/high) via its QoS, or its nice value under policy nice."""
    if level not in PRIORITIES:
        raise ConfigError(f"priority={level}: unknown priority; use low|normal|high")
    sid = _slurm_id(job)
    policy = policy or default_policy()
    if policy == "nice":
        argv = C.update_nice_argv(sid, PRIORITY_NICE[level] or 0)
    elif policy == "qos":
        argv = C.update_qos_argv(sid, PRIORITY_QOS[level] or "normal")
    else:
        raise ConfigError(f"priority policy {policy}: priorities are not managed; use qos or nice")
    C.run(argv)
    ledger.update(job.id, resources=dict(job.resources or {}, priority=level))
    ledger.add_event(job.id, "priority", f"priority set to {level} ({argv[-1]})", level=level, slurm=argv[-1],
                     user=ledger.user)


@dataclass
class Prediction:
    start_now: bool
    start_time: Optional[datetime]
    jobs_ahead: int
    raw: str
    partition: str = ""


def prediction_line(pred: Prediction) -> str:
    """The one line `hpcft submit`/`predict` and the web console print of a queue-wait prediction."""
    when = pred.start_time.strftime("%Y-%m-%d %H:%M:%S") if pred.start_time else "unknown"
    if pred.start_now:
        return f"would start now (partition {pred.partition or '?'}; no pending job ahead)"
    return (f"would wait: expected start {when}, {pred.jobs_ahead} pending job(s) ahead in partition "
            f"{pred.partition or '?'}")


def predict(cfg, policy: Optional[str] = None, now: Optional[datetime] = None) -> Prediction:
    """Would a job with this config start now? (`sbatch --test-only`), and how many pending jobs in its partition
    have a higher or equal priority (`squeue`; QoS priorities from `sacctmgr`)."""
    resources = cfg.resources if hasattr(cfg, "resources") else cfg["resources"]
    name = cfg.get("name", "hpcft") if hasattr(cfg, "get") else "hpcft"
    opts = sbatch_options(resources, job_name=name, priority_policy=policy)
    _, err = C.run_both(C.test_only_argv(to_argv(opts)))
    t = C.parse_test_only(err)
    rows = C.parse_squeue(C.run(C.squeue_pending_argv(t.partition)))
    try:
        qos_prio = C.parse_qos_priority(C.run(C.qos_priority_argv()))
    except SchedulerError:
        qos_prio = {}
    ahead = C.count_jobs_ahead(rows, t.partition, opts.get("qos") or "normal", qos_prio)
    now = now or datetime.now()
    return Prediction(C.starts_now(t.start_time, now) and ahead == 0, t.start_time, ahead, t.raw, t.partition)
