"""An operator carries out the requests members made on other users' Slurm jobs (`hpcft admin apply`, from cron).

A Slurm operator may change any Slurm job, so the operator must never be steered into changing a job on the word of
a ledger row alone (a confused deputy). A request (extend, priority) is carried out only when

  (a) Slurm's own record of the job (`scontrol show job -o ID`) says it runs as the row's owner, under the row's
      project where projects are Slurm accounts (`hpcft admin sync-projects`), and under the very id the row holds;
  (b) the request's author has read-write access to the job by the database's rules (hpcft.ledger.access: the owner,
      an administrator, or a member of the job's project while the job is shared rw and sharing is on).

A request failing either is refused, never carried out: it is closed (`request_done` with the refusal) and the job
gets a `request_refused` event naming who asked and why. Stop requests are carried out by the jobs' own workers and
their owners' sync (hpcft.jobs.control.carry_out_stop_requests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

from hpcft.errors import HpcftError
from hpcft.ledger import access
from hpcft.slurm import commands as C
from hpcft.states import LIVE, State

ACTIONS = ("extend", "priority")


@dataclass
class Outcome:
    job_id: int
    action: str
    by: str
    outcome: str
    applied: bool

    def line(self) -> str:
        return f"job {self.job_id}: {self.action} for {self.by}: {self.outcome}"


def slurm_owner(slurm_job_id: str, run: Callable = C.run) -> Optional[C.SlurmOwner]:
    """Slurm's record of who a job runs as (None when Slurm knows no such job)."""
    if not slurm_job_id:
        return None
    try:
        return C.parse_job_owner(run(C.show_job_oneline_argv(slurm_job_id)))
    except HpcftError:
        return None


def slurm_refusal(job, owner: Optional[C.SlurmOwner], projects) -> Optional[str]:
    """Why Slurm's record does not back the row (None when it does): (a) above."""
    sid = job.slurm_job_id
    if not sid:
        return "the job has no Slurm job id"
    if owner is None:
        return f"Slurm has no job {sid}"
    if owner.job_id and owner.job_id != sid:
        return f"Slurm job {sid} is Slurm's job {owner.job_id}: the row does not hold Slurm's own id"
    if owner.user != job.owner:
        return f"Slurm job {sid} runs as {owner.user or '?'}, not as the job's owner {job.owner}"
    if job.project in projects and owner.account != job.project:
        return f"Slurm job {sid} runs under account {owner.account or '?'}, not the job's project {job.project}"
    return None


def author_refusal(ledger, job, by: str) -> Optional[str]:
    """Why the request's author may not change the job (None when they may): (b) above, by the database's records."""
    if not by:
        return "the request names no author"
    lvl = access.level(job, ledger.caller(by), ledger.sharing())
    if access.allowed(lvl, "extend"):
        return None
    have = {"none": "no access", "ro": "read-only access"}.get(lvl, lvl)
    return f"{by} has {have} to job {job.id} (owner {job.owner}, project {job.project}, shared {job.access})"


def _carry_out(ledger, job, action: str, data: dict) -> Outcome:
    from hpcft.jobs.executors.slurm import extend, set_priority

    by = str(data.get("by") or "")
    try:
        if action == "extend":
            done = f"time limit now {extend(ledger, job, data['time'])}"
        else:
            set_priority(ledger, job, data["level"])
            done = f"priority {data['level']}"
    except (HpcftError, KeyError) as e:
        return Outcome(job.id, action, by, f"refused by Slurm: {e}", False)
    return Outcome(job.id, action, by, f"{done} (checked: Slurm job {job.slurm_job_id} runs as {job.owner}; "
                   f"{by} may change it)", True)


def _refuse(ledger, job, req, action: str, by: str, why: str) -> Outcome:
    ledger.add_event(job.id, "request_refused", f"{action} requested by {by or '?'} refused: {why}",
                     request=(req.data or {}).get("request"), action=action, by=by, reason=why, operator=ledger.user)
    return Outcome(job.id, action, by, f"refused: {why}", False)


def apply_request(ledger, job, req, projects, run: Callable = C.run) -> Outcome:
    """Check one open request (a) and (b), carry it out or refuse it, and close it (`request_done`)."""
    data = req.data or {}
    action, by = str(data.get("action")), str(data.get("by") or "")
    if State(job.state) not in LIVE:
        out = Outcome(job.id, action, by, f"not applied: the job is {job.state}", False)
    else:
        why = author_refusal(ledger, job, by) or slurm_refusal(job, slurm_owner(job.slurm_job_id, run), projects)
        out = _refuse(ledger, job, req, action, by, why) if why else _carry_out(ledger, job, action, data)
    ledger.request_done(job.id, req, out.outcome)
    return out


def apply_requests(ledger, run: Callable = C.run) -> List[Outcome]:
    """Every open extend/priority request on a live Slurm job, oldest first: carried out or refused (see above)."""
    projects = set(ledger.projects())
    done: List[Outcome] = []
    for job in ledger.live_jobs(executor="slurm"):
        for req in ledger.open_requests(job.id):
            if (req.data or {}).get("action") not in ACTIONS:
                continue
            done.append(apply_request(ledger, ledger.get(job.id), req, projects, run))
    return done
