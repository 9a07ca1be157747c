"""Team commands: `hpcft share` (a job's owner) and `hpcft admin ...` (administrators)."""

from __future__ import annotations

from typing import List

import typer

from hpcft.cli.common import app, open_ledger
from hpcft.errors import HpcftError

admin = typer.Typer(help="Administrator commands: set up the team ledger, projects, sharing, requests.",
                    no_args_is_help=True)
app.add_typer(admin, name="admin")


@app.command()
def share(job_id: int = typer.Argument(..., help="job id"),
          level: str = typer.Argument(..., help="none | ro | rw: what the other members of its project may do")) -> None:
    """Share a job you own with the other members of its project: ro (show, logs, events, curve, top, monitor,
    clone), rw (also stop, extend, priority, resume, delete) or none. Its run directory follows (POSIX ACLs)."""
    from hpcft.ledger import access

    level = access.check_level(level, "level")
    ledger = open_ledger()
    job, _ = access.authorize(ledger, job_id, "share")
    if job.parent_id is not None:
        try:
            parent = ledger.get(job.parent_id)
        except HpcftError:
            parent = None
        if parent is not None:
            access.cap_to_parent(level, parent.access, parent.id)
    others = access.share_run_dir(ledger, job, level)  # first: a refused ACL change leaves the ledger as it was
    note = f"; run directory shared with {', '.join(others)}" if others else "; run directory private"
    ledger.update(job_id, access=level)
    ledger.add_event(job_id, "share", f"shared {level} with project {job.project} by {ledger.user}", access=level,
                     by=ledger.user)
    typer.echo(f"job {job_id}: access {level} for the members of project {job.project}{note}")


@admin.command("init")
def admin_init() -> None:
    """Create the team ledger's roles, grants and row-level security (PostgreSQL; run as the database owner)."""
    from hpcft.ledger import team

    for line in team.init(open_ledger()):
        typer.echo(line)


@admin.command("sync-projects")
def admin_sync_projects() -> None:
    """Projects = Slurm accounts: read the members from Slurm's associations (for cron)."""
    from hpcft.ledger import team
    from hpcft.slurm import commands as C

    members = C.parse_assoc(C.run(C.assoc_argv()))
    for line in team.sync_projects(open_ledger(), members):
        typer.echo(line)


@admin.command("sharing")
def admin_sharing(state: str = typer.Argument(..., help="on | off")) -> None:
    """Switch sharing on or off for the whole site (off: every job is private to its owner and administrators)."""
    if state not in ("on", "off"):
        raise HpcftError(f"sharing {state}: use `hpcft admin sharing on` or `hpcft admin sharing off`")
    ledger = open_ledger()
    ledger.set_setting("sharing", state)
    typer.echo(f"sharing {state}" + ("" if state == "on" else ": every job is now private to its owner"))


@admin.command("grant")
def admin_grant(username: str = typer.Argument(..., help="Unix user name"),
                revoke: bool = typer.Option(False, "--revoke", help="take administrator rights away")) -> None:
    """Make a user a ledger administrator (sees and may change every job)."""
    from hpcft.ledger import team

    team.grant_admin(open_ledger(), username, not revoke)
    typer.echo(f"{username}: {'no longer an' if revoke else 'now an'} administrator")


@admin.command("apply")
def admin_apply() -> None:
    """Carry out requests members made on other users' jobs: time limits and priorities (run by a Slurm
    operator, e.g. from cron). Stop requests are carried out by the jobs' own workers and their owners' sync."""
    from hpcft.jobs.executors.slurm import extend, set_priority
    from hpcft.states import LIVE, State

    ledger = open_ledger()
    applied: List[str] = []
    for job in ledger.live_jobs(executor="slurm"):
        for req in ledger.open_requests(job.id):
            data = req.data or {}
            action = data.get("action")
            if action not in ("extend", "priority"):
                continue
            job = ledger.get(job.id)
            if State(job.state) not in LIVE:
                ledger.request_done(job.id, req, f"not applied: the job is {job.state}")
                continue
            try:
                if action == "extend":
                    outcome = f"time limit now {extend(ledger, job, data['time'])}"
                else:
                    set_priority(ledger, job, data["level"])
                    outcome = f"priority {data['level']}"
            except HpcftError as e:
                outcome = f"refused: {e}"
            ledger.request_done(job.id, req, outcome)
            applied.append(f"job {job.id}: {action} for {data.get('by')}: {outcome}")
    for line in applied:
        typer.echo(line)
    refused = sum(": refused: " in line for line in applied)
    typer.echo(f"carried out {len(applied)} request(s): {len(applied) - refused} applied, {refused} refused by Slurm")
