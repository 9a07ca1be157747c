"""What every command module of the CLI shares: the typer `app` they register on, the job argument, a console,
the ledger and the access check, and the time formats of the tables."""

from __future__ import annotations

import json
import sys

import typer

app = typer.Typer(
    name="hpcft",
    help="LLM fine-tuning as a first-class Slurm citizen: submit, track and manage training jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JOB = typer.Argument(..., help="job id")


def console():
    import shutil

    from rich.console import Console

    width = None if sys.stdout.isatty() else shutil.get_terminal_size((160, 24)).columns
    return Console(highlight=False, width=width)


def authorized(job_id: int, action: str):
    """(ledger, job, level): the job if the acting user may `action` it (hpcft.ledger.access), else exit 3 in one line."""
    from hpcft.ledger.access import authorize

    ledger = open_ledger()
    job, lvl = authorize(ledger, job_id, action)
    return ledger, job, lvl


def refresh_states(jobs, ledger=None, quiet: bool = False) -> bool:
    """Bring the acting user's live Slurm jobs up to date before showing `jobs` (hpcft.jobs.refresh: rate-limited,
    nothing at all when none of them is a live Slurm job); one line on stderr when Slurm did not answer. True when
    a state changed (read the jobs again)."""
    from hpcft.jobs.refresh import refresh_states as refresh

    r = refresh(jobs, ledger)
    if r.stale and not quiet:
        typer.echo(r.stale, err=True)
    return r.changed > 0


def open_ledger():
    from hpcft.ledger.store import Ledger

    return Ledger()


def fmt_time(dt) -> str:
    """Local time; a naive datetime is the ledger's UTC (hpcft.timefmt.local_time)."""
    from hpcft.timefmt import local_time

    return local_time(dt)


def duration(job) -> str:
    from hpcft.timefmt import elapsed

    return elapsed(job.started_at, job.finished_at)


def quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a Hydra-quoted string
