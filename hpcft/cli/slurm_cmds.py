"""Slurm-only commands: predict, extend, priority, render."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hpcft.cli.common import app
from hpcft.errors import HpcftError


def prediction_line(pred) -> str:
    when = pred.start_time.strftime("%Y-%m-%d %H:%M:%S") if pred.start_time else "unknown"
    if pred.start_now:
        return f"would start now (partition {pred.partition or '?'}; no pending job ahead)"
    return (f"would wait: expected start {when}, {pred.jobs_ahead} pending job(s) ahead in partition "
            f"{pred.partition or '?'}")


def _slurm_job(job_id: int, action: str):
    """(ledger, job, level) of a Slurm job the acting user may `action` (hpcft.ledger.access; exit 3 otherwise)."""
    from hpcft.ledger.access import authorize
    from hpcft.ledger.store import Ledger

    ledger = Ledger()
    job, lvl = authorize(ledger, job_id, action)
    if job.executor != "slurm" or not job.slurm_job_id:
        raise HpcftError(f"job {job_id} runs on the {job.executor} executor; this command needs a Slurm job")
    return ledger, job, lvl


def _request_for_owner(ledger, job, action: str, what: str, **data) -> None:
    """A read-write member's change to someone else's job: Slurm lets only its owner and operators change it, so
    it is recorded as a request that an operator's `hpcft admin apply` (cron) carries out."""
    ledger.request(job.id, action, ledger.user, **data)
    typer.echo(f"job {job.id} runs as {job.owner}: {what} requested (recorded, not yet applied); a Slurm operator's "
               "`hpcft admin apply` (cron) applies it, usually within minutes; `hpcft events` shows when")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def predict(overrides: Optional[List[str]] = typer.Argument(None, help="the same overrides as submit")) -> None:
    """Will it fit and when would it start: the per-GPU memory estimate, then the queue-wait prediction
    (sbatch --test-only): would the job start now, when, and how many jobs are ahead."""
    from hpcft.jobs import preflight
    from hpcft.config import memory
    from hpcft.jobs.executors.slurm import predict as slurm_predict

    cfg = preflight.load(list(overrides or []))
    est, why = memory.estimate_cfg(cfg)  # will it fit? (advice here; submit refuses)
    typer.echo("\n".join(memory.summary_lines(est, why)))
    if est is not None and memory.refusal(est):
        typer.echo("would be refused: " + memory.refusal(est).rsplit("; or --force", 1)[0] + " (submit --force)")
    typer.echo(prediction_line(slurm_predict(cfg)))


@app.command()
def extend(job_id: int = typer.Argument(..., help="job id"),
           time: str = typer.Option(..., "--time", "-t", help="new time limit (HH:MM:SS, minutes) or +MINUTES")) -> None:
    """Change a queued or running Slurm job's time limit (raising it may need a Slurm operator)."""
    from hpcft.jobs.executors.slurm import extend as slurm_extend
    from hpcft.states import is_terminal

    from hpcft.ledger.access import acts_for_owner

    ledger, job, lvl = _slurm_job(job_id, "extend")
    if is_terminal(job.state):
        raise HpcftError(f"job {job_id} already ended ({job.state}); its time limit cannot change")
    if acts_for_owner(lvl):
        return _request_for_owner(ledger, job, "extend", f"time limit {time}", time=time)
    typer.echo(f"job {job_id}: time limit now {slurm_extend(ledger, job, time)}")


@app.command()
def priority(job_id: int = typer.Argument(..., help="job id"),
             level: str = typer.Argument(..., help="low | normal | high")) -> None:
    """Change a queued or running Slurm job's priority."""
    from hpcft.jobs.executors.slurm import set_priority
    from hpcft.states import is_terminal

    from hpcft.ledger.access import acts_for_owner

    ledger, job, lvl = _slurm_job(job_id, "priority")
    if is_terminal(job.state):
        raise HpcftError(f"job {job_id} already ended ({job.state}); its priority cannot change")
    if acts_for_owner(lvl):
        return _request_for_owner(ledger, job, "priority", f"priority {level}", level=level)
    set_priority(ledger, job, level)
    typer.echo(f"job {job_id}: priority {level}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def render(overrides: Optional[List[str]] = typer.Argument(None, help="the same overrides as submit"),
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the script here (default: stdout)")) -> None:
    """Render a standalone sbatch script (submit it with plain `sbatch`; the job registers itself in the ledger)."""
    from hpcft.jobs import preflight
    from hpcft.jobs.render import render as render_script

    cfg = preflight.load(list(overrides or []))
    text = render_script(cfg, script_hint=output.name if output else "job.sbatch")
    if output is None:
        typer.echo(text, nl=False)
        return
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(output)
    typer.echo(f"wrote {output}; submit with: sbatch {output}")
