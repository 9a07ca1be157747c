"""Team commands: `hpcft share` (a job's owner) and `hpcft admin ...` (administrators)."""

from __future__ import annotations

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
    from hpcft.jobs.control import share_job

    typer.echo(share_job(open_ledger(), job_id, level))


@admin.command("init")
def admin_init() -> None:
    """Create the team ledger's roles, grants and row-level security (PostgreSQL; run as the database owner)."""
    from hpcft.ledger import team

    for line in team.init(open_ledger()):
        typer.echo(line)


@admin.command("console-role")
def admin_console_role(name: str = typer.Argument("hpcft-console",
                                                  help="the console service's Unix user / role")) -> None:
    """Let the team console (`hpcft ui --team`, run as NAME) act for each request's user: PostgreSQL's row-level
    security then decides as in that user's own session; alone the role sees nothing (run as the ledger's owner)."""
    from hpcft.ledger import team

    typer.echo(team.console_role(open_ledger(), name))


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
    operator, e.g. from cron), each only when Slurm's record of the job names the job's owner (and project) and
    the request's author has rw on it; others are refused and recorded. Stop requests are carried out by the jobs'
    own workers and their owners' sync."""
    from hpcft.jobs.requests import apply_requests

    done = apply_requests(open_ledger())
    for out in done:
        typer.echo(out.line())
    refused = sum(not out.applied for out in done)
    typer.echo(f"carried out {len(done)} request(s): {len(done) - refused} applied, {refused} refused")


@admin.command("rebuild")
def admin_rebuild(runs: str = typer.Option("", "--runs", help="the runs root to read (default: HPCFT_RUNS or "
                                           "~/.hpcft/runs)"),
                  everything: bool = typer.Option(False, "--all", help="also directories recorded in another "
                                                  "ledger")) -> None:
    """Make the ledger's jobs and events again from their run directories (job.json, config.yaml, journal.jsonl):
    after a ledger was lost, or to take what jobs wrote while the database was down. Safe to run again."""
    import os
    from pathlib import Path

    from hpcft import paths
    from hpcft.jobs.rebuild import rebuild
    from hpcft.ledger.guard import sqlite_file

    root = Path(runs).expanduser() if runs else paths.runs_root()
    if not root.is_dir():
        raise HpcftError(f"--runs {root}: no such directory; name the runs root that holds the jobs' run directories")
    db = sqlite_file(paths.db_url())
    if db is not None and not os.path.exists(db):  # the lost SQLite ledger is made again here, on purpose
        os.makedirs(os.path.dirname(db), exist_ok=True)
        Path(db).touch()
    out = rebuild(open_ledger(), root, everything)
    for line in out.skipped:
        typer.echo(f"skipped {line}")
    typer.echo(f"rebuilt from {root}: {len(out.made)} job(s) made again, {len(out.updated)} brought up to date "
               f"from their journals, {len(out.skipped)} skipped")
