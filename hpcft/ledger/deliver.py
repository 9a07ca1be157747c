"""Delivering a job's journal (hpcft.rundir.journal) to the ledger: exactly once, in order, whoever delivers.

One delivery is one write transaction: lock the job's row, read `jobs.journal_seq` (how far the ledger has taken
the journal), apply the records numbered above it in order (an `event` record adds the event with its own time; a
`state` record goes through the one state machine, `hpcft.ledger.store.apply_transition`, with the time the job
wrote it, so a job that ended during an outage gets its true end time), and move `journal_seq` to the last one
applied. Two deliverers at once (the worker, the trainer run by hand, `hpcft sync`) serialise on the row: the second
finds nothing left. A state change the state machine refuses (the job was stopped meanwhile) is skipped, as a late
writer's is; progress the trainer reported after the job's end (a checkpoint written in the stop's grace period) is
recorded as late (`data.late`, the message says so), never as progress.

A job's end recorded here notifies exactly as `Ledger.transition` does (hpcft.ledger.notify), once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from sqlmodel import Session, select

from hpcft.rundir import journal
from hpcft.states import State, is_terminal

# what a trainer reports while it trains: after the job's end it is late, not progress
PROGRESS_KINDS = frozenset({"checkpoint", "epoch", "resumed", "truncated", "eval", "step"})


@dataclass
class Delivered:
    applied: int = 0  # records applied by this delivery
    seq: int = 0  # the ledger's journal_seq after it
    changes: List[Dict[str, Any]] = field(default_factory=list)  # the state records that changed the state
    ended: Optional[Any] = None  # the row, when a record of this delivery ended the job


def _apply_event(s: Session, job: Any, rec: Dict[str, Any]) -> None:
    from hpcft.ledger.store import Event

    kind, message, data = str(rec.get("kind") or "event"), str(rec.get("message") or ""), dict(rec.get("data") or {})
    if is_terminal(State(job.state)) and kind in PROGRESS_KINDS:
        data["late"] = True
        message = f"(after the job ended {job.state}) {message}"
    ts = journal.parse_ts(rec.get("ts"))
    s.add(Event(job_id=job.id, kind=kind, message=message, attempt=int(rec.get("attempt") or job.attempt), data=data,
                **({"ts": ts} if ts is not None else {})))


def _apply_state(s: Session, job: Any, rec: Dict[str, Any]) -> bool:
    from hpcft.ledger.store import apply_transition

    try:
        to = State(rec.get("to"))
    except ValueError:
        return False
    return apply_transition(s, job, to, rec.get("reason"), source=str(rec.get("source") or "hpcft"),
                            cause=rec.get("cause"), fields=dict(rec.get("fields") or {}),
                            at=journal.parse_ts(rec.get("ts")), attempt=rec.get("attempt"))


def apply_records(s: Session, job: Any, records: List[Dict[str, Any]], out: Delivered) -> None:
    """Apply `records` (those above the row's journal_seq, in order) to the locked row `job` in session `s`."""
    for rec in records:
        if rec["seq"] <= job.journal_seq:
            continue
        if rec.get("op") == "state":
            if _apply_state(s, job, rec):
                out.changes.append(rec)
                if is_terminal(State(job.state)):
                    out.ended = job
        elif rec.get("op") == "event":
            _apply_event(s, job, rec)
        job.journal_seq = rec["seq"]
        out.applied += 1
    s.add(job)
    out.seq = job.journal_seq


def deliver(ledger: Any, job_id: int, run_dir: os.PathLike, upto: Optional[int] = None) -> Delivered:
    """Deliver the journal of `run_dir` to job `job_id` of `ledger`. Cheap when there is nothing new (one read of
    the journal's tail, one short transaction). Raises what the database raises when it cannot be reached."""
    from hpcft.errors import NotFound
    from hpcft.ledger.store import Job

    out = Delivered()
    newest = journal.last_seq(run_dir)

    def fn(s: Session) -> Delivered:
        q = select(Job).where(Job.id == int(job_id))
        if not ledger.url.startswith("sqlite"):
            q = q.with_for_update()
        job = s.exec(q).first()
        if job is None:
            raise NotFound(f"job {job_id}: not in the ledger")
        out.applied, out.changes, out.ended, out.seq = 0, [], None, job.journal_seq  # a retried transaction
        if newest > job.journal_seq:
            records = journal.read(run_dir, after=job.journal_seq)
            apply_records(s, job, [r for r in records if upto is None or r["seq"] <= upto], out)
        return out

    ledger.write(fn)
    if out.ended is not None:  # only the delivery that recorded the end sends (exactly once)
        from hpcft.ledger.notify import job_ended

        last = out.changes[-1] if out.changes else {}
        job_ended(ledger, out.ended, last.get("cause"))
    return out


def record_events(ledger: Any, job_id: int, run_dir: os.PathLike, events: List[tuple]) -> None:
    """Events a command writes about a job it submits (`submitted`, `after`, `asset`, its Slurm id): appended to
    the run directory's journal, then delivered, so that they are in the record (`hpcft admin rebuild` makes them
    again) and in the ledger once. `events`: (kind, message, data) tuples. Those the journal cannot take (a run
    directory this user cannot write, a full disk) go straight into the ledger."""
    done = 0
    try:
        for kind, message, data in events:
            journal.append(run_dir, "event", kind=kind, message=message, data=dict(data))
            done += 1
    except OSError:
        pass
    if done:
        deliver(ledger, job_id, run_dir)
    for kind, message, data in events[done:]:
        ledger.add_event(job_id, kind, message, **data)


def ahead(job: Any) -> bool:
    """Whether the run directory of `job` (a ledger row) holds journal records the ledger has not taken."""
    out = getattr(job, "output_dir", "") or ""
    return bool(out) and journal.last_seq(out) > int(getattr(job, "journal_seq", 0) or 0)


def ingest(ledger: Any, jobs: List[Any]) -> tuple:
    """Deliver the journals that are ahead of their rows (`hpcft sync`, before it asks Slurm or looks for a
    supervisor: a job that ended while the database was down gets its own end, not a guess). Returns (the rows as
    they are now, in the same order; the Delivered of each job delivered, by id). A run directory that cannot be
    read, or a row the ledger does not have, is left as it is."""
    rows, done = [], {}
    for job in jobs:
        try:
            if ahead(job):
                done[job.id] = deliver(ledger, job.id, job.output_dir)
                job = ledger.get(job.id)
        except (OSError, LookupError):
            pass
        except Exception as e:  # NotFound (another ledger's row) and the like: leave the row as it is
            from hpcft.errors import HpcftError

            if not isinstance(e, HpcftError):
                raise
        rows.append(job)
    return rows, done


def journal_says_finished(job: Any) -> Optional[int]:
    """The exit code of the trainer's last `finished` record in the journal of `job`'s current attempt (None when
    it has none): how a job whose supervisor died is judged."""
    code = None
    for rec in journal.read(job.output_dir):
        if rec.get("op") == "event" and rec.get("kind") == "finished" and \
                int(rec.get("attempt") or job.attempt) == int(job.attempt):
            code = (rec.get("data") or {}).get("exit_code")
    return code
