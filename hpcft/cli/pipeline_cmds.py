"""`hpcft pipeline submit FILE.yaml | show ID | stop ID`: stages chained by Slurm dependencies (hpcft.jobs.pipeline)."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from hpcft.cli.common import app, console, open_ledger, refresh_states

pipeline_app = typer.Typer(help="Pipelines: named stages (SFT -> DPO -> publish) submitted in one command, each "
                                "queued behind the stage it starts from.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

PIPELINE_ID = typer.Argument(..., help="the pipeline's id (its first job's id, printed by `pipeline submit`)")


@pipeline_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    file: str = typer.Argument(..., help="the pipeline's YAML (presets: conf/pipeline/*.yaml)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="overrides for every stage (a sweep with -m: the "
                                                               "first stage only)"),
    multirun: bool = typer.Option(False, "-m", "--multirun", help="sweep the first stage: every point gets its own "
                                                                  "chain of the later stages"),
) -> None:
    """Submit every stage at once; returns without waiting (each stage starts when the ones it names succeeded)."""
    from hpcft.jobs import pipeline as P

    spec = P.load(_preset(file))
    ovs = list(overrides or [])
    if multirun:
        from hpcft.config.sweep import expand

        first = spec.stages[0]
        first.overrides = first.overrides + ovs  # the sweep is the first stage's; the later stages get the rest
        fixed = [o for o in ovs if len(expand([o])) == 1]
        for st in spec.stages[1:]:
            st.overrides = st.overrides + fixed
        ovs = []
    done = P.submit(spec, ovs, multirun=multirun)
    con = console()
    con.print(f"pipeline [bold]{done.pipeline_id}[/bold] {done.name}: {len(done.chains)} chain(s) of "
              f"{len(spec.stages)} stage(s)")
    for links in done.chains:
        con.print("  " + "  ->  ".join(f"{s} job {j.id}" + (f" (Slurm {j.slurm_job_id})" if j.slurm_job_id else "")
                                       for s, j in links.items()))
    con.print(f"`hpcft pipeline show {done.pipeline_id}` shows its stages; "
              f"`hpcft pipeline stop {done.pipeline_id}` stops them")


def _preset(file: str) -> str:
    """A path, or the name of a preset in conf/pipeline/ (`sft_then_dpo`)."""
    from pathlib import Path

    from hpcft import paths

    if Path(file).exists() or "/" in file:
        return file
    preset = paths.conf_dir() / "pipeline" / f"{file.removesuffix('.yaml')}.yaml"
    return str(preset) if preset.is_file() else file


@pipeline_app.command("show")
def show(pipeline_id: int = PIPELINE_ID, as_json: bool = typer.Option(False, "--json")) -> None:
    """The stages of a pipeline: job, state (with the cause of its end), what it waits for, its model's parent."""
    from hpcft.jobs import pipeline as P

    ledger = open_ledger()
    jobs = P.stages(ledger, pipeline_id)
    if refresh_states(jobs, ledger):
        jobs = P.stages(ledger, pipeline_id)
    rows = P.describe(ledger, jobs)
    if as_json:
        typer.echo(json.dumps(rows, indent=1, default=str))
        return
    name = P.info_of(jobs[0]).get("name", "")
    typer.echo(f"pipeline {pipeline_id} {name}")
    head = ("STAGE", "JOB", "STATE", "CAUSE", "AFTER", "MODEL FROM", "SLURM", "NAME")
    table = [(r["stage"] + (f"[{r['chain']}]" if r["chain"] is not None else ""), str(r["job"]), r["state"],
              r["cause"] or "-", ",".join(map(str, r["after"])) or "-", str(r["parent"] or "-"), r["slurm"] or "-",
              r["name"]) for r in rows]
    widths = [max(len(t[i]) for t in [head, *table]) for i in range(len(head))]
    for t in [head, *table]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())
    for r in rows:
        if r["state"] in ("error", "stopped", "expired") and r["reason"]:
            typer.echo(f"  job {r['job']} ({r['stage']}): {r['reason']}")


@pipeline_app.command("stop")
def stop(pipeline_id: int = PIPELINE_ID) -> None:
    """Stop every stage still queued or running (the last stages first)."""
    from hpcft.cli.common import authorized
    from hpcft.jobs import pipeline as P
    from hpcft.jobs.control import stop_job
    from hpcft.states import LIVE, State

    ledger = open_ledger()
    live = [j for j in P.stages(ledger, pipeline_id) if State(j.state) in LIVE]
    for job in sorted(live, key=lambda j: -j.id):
        led, j, lvl = authorized(job.id, "stop")
        typer.echo(stop_job(led, led.get(j.id), lvl))
    if not live:
        typer.echo(f"pipeline {pipeline_id}: no stage is queued or running")
