"""Slurm-only commands: predict, extend, priority, render."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hpcft.cli.common import app


def prediction_line(pred) -> str:
    """hpcft.jobs.executors.slurm.prediction_line (imported there lazily: `hpcft --help` stays light)."""
    from hpcft.jobs.executors.slurm import prediction_line as line

    return line(pred)


def _slurm_job(job_id: int, action: str):
    """(ledger, job, level) of a job the acting user may `action` (hpcft.ledger.access; exit 3 otherwise)."""
    from hpcft.ledger.access import authorize
    from hpcft.ledger.store import Ledger

    ledger = Ledger()
    job, lvl = authorize(ledger, job_id, action)
    return ledger, job, lvl


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
    from hpcft.jobs.control import change_slurm_job

    ledger, job, lvl = _slurm_job(job_id, "extend")
    typer.echo(change_slurm_job(ledger, job, lvl, "extend", time))


@app.command()
def priority(job_id: int = typer.Argument(..., help="job id"),
             level: str = typer.Argument(..., help="low | normal | high")) -> None:
    """Change a queued or running Slurm job's priority."""
    from hpcft.jobs.control import change_slurm_job

    ledger, job, lvl = _slurm_job(job_id, "priority")
    typer.echo(change_slurm_job(ledger, job, lvl, "priority", level))


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
