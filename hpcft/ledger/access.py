"""Who may do what with a job: the owner, administrators, and the other members of the job's project as the job's
`access` says (none | ro | rw), while an administrator's `sharing` switch is on.

    read-only (ro):  show, logs, events, curve, top, monitor, clone
    read-write (rw): also stop, extend, priority, resume, delete
    owner:           also share (and everything else); administrators: everything

A job may never be more open than what it is built from (its parent job). The same rules are enforced by the
database itself on PostgreSQL (row-level security and triggers created by `hpcft admin init`, hpcft.ledger.team), so they
hold for anyone who bypasses hpcft and runs SQL; on SQLite and MariaDB hpcft enforces them. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet

from hpcft.errors import ConfigError, HpcftError

LEVELS = ("none", "ro", "rw")
RANK = {"none": 0, "ro": 1, "rw": 2}
READ = frozenset({"show", "logs", "events", "curve", "top", "monitor", "clone"})
WRITE = READ | {"stop", "extend", "priority", "resume", "delete"}
OWNER = WRITE | {"share"}


class AccessDenied(HpcftError):
    """A refused action: one line naming the job, its owner, the caller's access and what they may do instead."""

    exit_code = 3


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool = False
    projects: FrozenSet[str] = field(default_factory=frozenset)


def check_level(value: str, key: str = "access") -> str:
    v = str(value)
    if v not in LEVELS:
        raise ConfigError(f"{key}={v}: unknown access; use {key}=none|ro|rw (what the other members of the job's "
                          "project may do: nothing, read, read and change)")
    return v


def level(job, caller: Caller, sharing: bool = True) -> str:
    """The caller's access to a job: owner | admin | rw | ro | none."""
    if job.owner == caller.name:
        return "owner"
    if caller.admin:
        return "admin"
    if sharing and job.project in caller.projects and job.access in ("ro", "rw"):
        return job.access
    return "none"


def allowed(lvl: str, action: str) -> bool:
    if lvl in ("owner", "admin"):
        return action in OWNER
    if lvl == "rw":
        return action in WRITE
    if lvl == "ro":
        return action in READ
    return False


def may_instead(lvl: str) -> str:
    if lvl == "ro":
        return "you may " + ", ".join(sorted(READ)) + " it"
    if lvl == "rw":
        return "you may " + ", ".join(sorted(WRITE)) + " it"
    return "ask its owner to share it (`hpcft share JOB ro|rw`)"


def require(job, action: str, caller: Caller, sharing: bool = True) -> str:
    """The caller's level if `action` is allowed, else AccessDenied (exit 3) in one line."""
    lvl = level(job, caller, sharing)
    if allowed(lvl, action):
        return lvl
    have = {"none": "no access", "ro": "read-only access", "rw": "read-write access"}.get(lvl, lvl)
    why = "" if sharing or lvl != "none" or job.access == "none" else " (sharing is switched off on this site)"
    raise AccessDenied(f"job {job.id} (owner {job.owner}, project {job.project}): you ({caller.name}) have {have}"
                       f"{why} and cannot {action} it; {may_instead(lvl).replace('JOB', str(job.id))}")


def not_visible(job_id: int, caller: Caller) -> AccessDenied:
    """For a job the database does not show the caller (PostgreSQL row-level security)."""
    return AccessDenied(f"job {job_id}: no such job, or you ({caller.name}) have no access to it; ask its owner to "
                        f"share it (`hpcft share {job_id} ro|rw`)")


def cap_to_parent(access: str, parent_access: str, parent_id: int) -> None:
    """A job may not be more open than the job it is built from."""
    if RANK[access] > RANK.get(parent_access, 0):
        raise ConfigError(f"access={access}: job {parent_id}, which this job is built from, is shared "
                          f"{parent_access}; a job may not be more open than its parent; use access={parent_access} "
                          f"or ask job {parent_id}'s owner to share it more widely first")


def authorize(ledger, job_id: int, action: str):
    """(job, caller's level) when the acting user may `action` the job; AccessDenied (exit 3) otherwise. A job the
    database hides (PostgreSQL row-level security) is refused the same way, without saying whose it is."""
    from hpcft.errors import NotFound

    caller = ledger.caller()
    try:
        job = ledger.get(job_id)
    except NotFound:
        if ledger.url.startswith(("postgresql", "postgres")):
            raise not_visible(job_id, caller) from None
        raise
    lvl = require(job, action, caller, ledger.sharing())
    return job, lvl


def acts_for_owner(lvl: str) -> bool:
    """A read-write member acting on someone else's job: Slurm lets only the owner (and operators) change it, so the
    action becomes a request that the owner's side carries out (the job's worker, the owner's sync, or an
    operator's `hpcft admin apply`)."""
    return lvl == "rw"


def share_run_dir(ledger, job, level: str) -> list:
    """The run directory follows the ledger: readable (ro) or writable (rw) by the other members of the job's project
    (none, or sharing switched off: by nobody else). Returns the users it is now shared with."""
    from pathlib import Path

    from hpcft.rundir import files

    out = Path(job.output_dir or "")
    if not job.output_dir or not out.is_dir():
        return []
    others = [u for u in ledger.projects().get(job.project, []) if u != job.owner]
    if level == "none" or not ledger.sharing():
        others = []
    files.share_run_dir(out, readers=others if level == "ro" else [], writers=others if level == "rw" else [])
    return others
