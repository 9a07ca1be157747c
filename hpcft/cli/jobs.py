"""Job commands: submit, list, show, logs, events, curve, stop, resume, retry, delete, sync."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from hpcft.cli import app
from hpcft.errors import HpcftError

JOB = typer.Argument(..., help="job id")


def _console():
    import shutil

    from rich.console import Console

    width = None if sys.stdout.isatty() else shutil.get_terminal_size((160, 24)).columns
    return Console(highlight=False, width=width)


def _ledger():
    from hpcft.ledger import Ledger

    return Ledger()


def _fmt_time(dt) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _duration(job) -> str:
    from hpcft.ledger import utcnow
    from hpcft.timefmt import format_duration

    if not job.started_at:
        return "-"
    end = job.finished_at or utcnow()
    return format_duration(max(0, int((end - job.started_at).total_seconds())))


def _quote(value: str) -> str:
    return json.dumps(value)  # a Hydra-quoted string


# ------------------------------------------------------------------------------------------------------ submit

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides: group=option key=value ..."),
    multirun: bool = typer.Option(False, "-m", "--multirun", help="sweep: a=1,2 b=x,y -> one job array"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved config and what would run"),
    wait: bool = typer.Option(False, "--wait", "-w", help="follow the log until the job ends"),
    name: Optional[str] = typer.Option(None, "--name", help="job name (same as name=...)"),
    description: Optional[str] = typer.Option(None, "--description", help="free text stored with the job"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Slurm: do not ask after the queue-wait prediction"),
) -> None:
    """Validate a job config and submit it (local machine or Slurm)."""
    from hpcft import config as hconfig
    from hpcft import submit as hsubmit

    ovs = list(overrides or [])
    if name is not None:
        ovs.append(f"name={_quote(name)}")
    if description is not None:
        ovs.append(f"description={_quote(description)}")
    plan = hsubmit.plan(ovs, multirun=multirun)
    con = _console()
    if dry_run:
        for i, (cfg, pt) in enumerate(zip(plan.configs, plan.overrides, strict=True)):
            if len(plan.configs) > 1:
                con.print(f"[bold]# point {i}: {' '.join(pt)}[/bold]")
            typer.echo(hconfig.to_yaml(cfg))
        n = len(plan.configs)
        what = "one job" if n == 1 else (f"{n} jobs as one Slurm array" if plan.executor == "slurm" else f"{n} jobs")
        from hpcft.schema import METHODS

        trainer = METHODS[plan.configs[0].method.name]
        typer.echo(f"# would submit {what} to the {plan.executor} executor; each runs {trainer} "
                   f"(method {plan.configs[0].method.name}) via `python -m hpcft.train.entry`")
        if plan.executor == "slurm":
            from hpcft.slurm.sbatch import sbatch_options, to_lines

            cfg0 = plan.configs[0]
            array = f"0-{n - 1}" if n > 1 else None
            typer.echo("\n".join(to_lines(sbatch_options(cfg0.resources, job_name=cfg0.name, array=array))))
        return
    if plan.executor == "slurm":
        from hpcft.cli.slurm_cmds import prediction_line
        from hpcft.executors.slurm import predict

        try:
            con.print(prediction_line(predict(plan.configs[0])))
        except HpcftError as e:  # a prediction is advice: never block a submission on it
            con.print(f"(no queue-wait prediction: {e})")
        if not yes and sys.stdin.isatty() and not typer.confirm("submit?", default=True):
            raise typer.Exit(1)
    jobs = hsubmit.submit(plan)
    for j in jobs:
        extra = f" (Slurm {j.slurm_job_id})" if j.slurm_job_id else ""
        con.print(f"submitted job [bold]{j.id}[/bold] {j.name}{extra} -> {j.output_dir}")
    if wait:
        rc = _wait([j.id for j in jobs], follow=len(jobs) == 1)
        raise typer.Exit(rc)


def _wait(job_ids: List[int], follow: bool) -> int:
    """Block until the jobs end (following the log of a single job). 0 if all succeeded."""
    from hpcft.executors import get_executor
    from hpcft.states import is_terminal

    ledger = _ledger()
    pos = 0
    last_sync = 0.0
    try:
        while True:
            jobs = [ledger.get(i) for i in job_ids]
            if follow:
                pos = _print_new(Path(jobs[0].output_dir) / "logs" / "job.log", pos)
            if all(is_terminal(j.state) for j in jobs):
                break
            if time.monotonic() - last_sync > 10:  # keep states honest (dead supervisor, Slurm end states)
                for ex in {j.executor for j in jobs}:
                    get_executor(ex).sync(ledger, [j for j in jobs if j.executor == ex])
                last_sync = time.monotonic()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\n(detached: the job goes on; `hpcft stop {' '.join(map(str, job_ids))}` stops it)", file=sys.stderr)
        return 130
    if follow:
        _print_new(Path(jobs[0].output_dir) / "logs" / "job.log", pos)
    for j in jobs:
        typer.echo(f"job {j.id} {j.name}: {j.state}" + (f" ({j.state_reason})" if j.state_reason else ""))
    return 0 if all(j.state == "success" for j in jobs) else 1


def _print_new(log: Path, pos: int) -> int:
    try:
        with open(log, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return pos
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return pos + len(data)


# ------------------------------------------------------------------------------------------------------ list

@app.command("list")
def list_(
    state: Optional[List[str]] = typer.Option(None, "--state", "-s", help="queued|running|error|stopped|expired|success"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="name contains"),
    owner: Optional[str] = typer.Option(None, "--user", "-u", help="owner"),
    project: Optional[str] = typer.Option(None, "--project", "-p"),
    resources: Optional[str] = typer.Option(None, "--resources", "-r", help="resource spec contains, e.g. gpus=8"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output path contains"),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List and search jobs (newest first)."""
    from hpcft.states import State

    for s in state or []:
        if s not in State.__members__:
            raise HpcftError(f"--state {s}: unknown state; use one of {', '.join(State.__members__)}")
    jobs = _ledger().search(state=state, name=name, owner=owner, project=project, resources=resources,
                            output=output, limit=limit)
    if as_json:
        typer.echo(json.dumps([_job_dict(j) for j in jobs], indent=1, default=str))
        return
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "STATE", "USER", "METHOD", "EXEC", "SLURM", "CREATED", "ELAPSED"):
        t.add_column(col, no_wrap=True)
    colors = {"success": "green", "error": "red", "running": "cyan", "expired": "yellow", "stopped": "magenta"}
    for j in jobs:
        st = f"[{colors.get(j.state, 'white')}]{j.state}[/]"
        t.add_row(str(j.id), j.name, st, j.owner, j.method, j.executor, j.slurm_job_id or "-",
                  _fmt_time(j.created_at), _duration(j))
    _console().print(t)


def _job_dict(j) -> dict:
    d = j.model_dump()
    d.pop("config", None)
    return d


# ------------------------------------------------------------------------------------------------------ show

@app.command()
def show(job_id: int = JOB, config: bool = typer.Option(False, "--config", help="print the full config")) -> None:
    """Show one job: state, resources, paths, latest metrics."""
    from hpcft.metrics_io import read_metrics

    j = _ledger().get(job_id)
    con = _console()
    rows = [
        ("id", j.id), ("name", j.name), ("description", j.description or "-"), ("state", j.state),
        ("reason", j.state_reason or "-"), ("owner", j.owner), ("project", j.project), ("method", j.method),
        ("executor", j.executor), ("slurm job", j.slurm_job_id or "-"), ("attempt", j.attempt),
        ("parent job", j.parent_id or "-"), ("resources", j.resource_spec), ("output", j.output_dir),
        ("created", _fmt_time(j.created_at)), ("started", _fmt_time(j.started_at)),
        ("finished", _fmt_time(j.finished_at)), ("elapsed", _duration(j)),
    ]
    recs = read_metrics(j.output_dir)
    last_train = next((r for r in reversed(recs) if r.get("type") == "train"), None)
    if last_train:
        rows.append(("last step", f"step {last_train.get('step')} loss {last_train.get('loss'):.4f} "
                                  f"lr {last_train.get('lr', 0):.3g}"))
    for r in recs:
        if r.get("type") == "eval":
            rows.append((f"{r.get('split')} (epoch {r.get('epoch')})",
                         " ".join(f"{k} {v:.4g}" for k, v in r.items()
                                  if isinstance(v, float) and k not in ("epoch", "step", "time"))))
    for k, v in rows:
        con.print(f"[bold]{k:>22}[/bold]  {v}")
    if config:
        import yaml  # ships with omegaconf

        typer.echo(yaml.safe_dump(j.config, sort_keys=False))


# ------------------------------------------------------------------------------------------------------ logs

@app.command()
def logs(job_id: int = JOB, follow: bool = typer.Option(False, "-f", "--follow", help="follow until the job ends"),
         rank: int = typer.Option(0, "--rank", help="another rank's log (multi-process jobs)")) -> None:
    """Print a job's log."""
    from hpcft.states import is_terminal

    ledger = _ledger()
    j = ledger.get(job_id)
    log = Path(j.output_dir) / "logs" / ("job.log" if rank == 0 else f"rank-{rank}.log")
    if not log.exists() and not follow:
        raise HpcftError(f"job {job_id}: no log yet at {log} (state {j.state})")
    pos = _print_new(log, 0)
    while follow and not is_terminal(ledger.get(job_id).state):
        time.sleep(0.5)
        pos = _print_new(log, pos)
    if follow:
        _print_new(log, pos)


@app.command()
def events(job_id: int = JOB, as_json: bool = typer.Option(False, "--json")) -> None:
    """A job's event history (submitted, started, checkpoints, state changes with reasons...)."""
    ledger = _ledger()
    ledger.get(job_id)
    evs = ledger.events(job_id)
    if as_json:
        typer.echo(json.dumps([e.model_dump() for e in evs], indent=1, default=str))
        return
    for e in evs:
        typer.echo(f"{_fmt_time(e.ts)}  #{e.attempt}  {e.kind:<11} {e.message}")


@app.command()
def curve(job_id: int = JOB, png: Optional[Path] = typer.Option(None, "--png", help="PNG path (default: <run>/loss.png)"),
          width: int = typer.Option(60, "--width")) -> None:
    """Loss curve: in the terminal and as a PNG."""
    from hpcft.cli.plot import ascii_plot, save_png
    from hpcft.metrics_io import loss_series, read_metrics

    j = _ledger().get(job_id)
    series = loss_series(read_metrics(j.output_dir))
    if not series.get("train"):
        raise HpcftError(f"job {job_id}: no training loss recorded yet ({j.output_dir}/metrics.jsonl)")
    xs, ys = series["train"]
    typer.echo(f"job {j.id} {j.name}: train loss {ys[0]:.4f} -> {ys[-1]:.4f} over {int(xs[-1])} steps")
    typer.echo(ascii_plot(xs, ys, width=width))
    for split in ("validation", "test"):
        if split in series:
            typer.echo(f"{split} loss by epoch: " + ", ".join(f"{y:.4f}" for y in series[split][1]))
    path = save_png(series, png or Path(j.output_dir) / "loss.png", f"job {j.id} {j.name}")
    typer.echo(f"PNG: {path}")


# ------------------------------------------------------------------------------------------------------ control

@app.command()
def stop(job_ids: List[int] = typer.Argument(..., help="job ids")) -> None:
    """Stop jobs (a stop you ask for is recorded as `stopped`, never as a failure)."""
    from hpcft.executors import get_executor
    from hpcft.states import is_terminal

    ledger = _ledger()
    for jid in job_ids:
        j = ledger.get(jid)
        if is_terminal(j.state):
            typer.echo(f"job {jid} already ended: {j.state}")
            continue
        get_executor(j.executor).stop(ledger, j)  # records the request as a `stop` event
        typer.echo(f"job {jid}: stop requested")


@app.command()
def resume(job_id: int = JOB, checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="checkpoint dir (default: latest)"),
           wait: bool = typer.Option(False, "--wait", "-w")) -> None:
    """Run an ended job again (new attempt, same run dir) from its latest or a chosen checkpoint."""
    from hpcft.jobctl import resume as resume_job

    j = resume_job(_ledger(), job_id, checkpoint)
    typer.echo(f"job {job_id}: attempt {j.attempt} queued (resume from {j.config['training']['resume_from']})")
    if wait:
        raise typer.Exit(_wait([job_id], follow=True))


@app.command()
def retry(max_attempts: int = typer.Option(3, "--max-attempts", help="total attempts per job, the first included"),
          state: List[str] = typer.Option(["error"], "--state", "-s",
                                          help="which ended states to retry (error; expired also continues jobs "
                                               "that reached their time limit)"),
          oom: bool = typer.Option(False, "--oom", help="also retry jobs killed for exceeding their memory"),
          exit_codes: str = typer.Option("", "--exit-codes",
                                         help="also retry trainers that exited with these codes, e.g. 1,137 "
                                              "(128+N = killed by signal N; never 2, a config or data error)"),
          backoff: float = typer.Option(300, "--backoff", min=0,
                                        help="seconds to wait after a failure, doubled with each attempt")) -> None:
    """Resubmit jobs that failed for a transient cause (node failure, preemption, boot failure; --oom, --exit-codes)
    from their latest checkpoint, up to --max-attempts, after a backoff. Safe to run from several crons at once:
    each job is resubmitted once. One summary line; exit 1 when a resubmission failed (for cron, after `sync`)."""
    from hpcft.jobctl import parse_exit_codes, retry_failed

    bad = [s for s in state if s not in ("error", "expired", "stopped")]
    if bad:
        raise HpcftError(f"--state {bad[0]}: only ended states can be retried (error, expired, stopped)")
    if max_attempts < 1:
        raise HpcftError(f"--max-attempts {max_attempts}: must be at least 1")
    report = retry_failed(_ledger(), max_attempts, list(state), oom=oom, exit_codes=parse_exit_codes(exit_codes),
                          backoff=backoff)
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)


@app.command()
def delete(job_ids: List[int] = typer.Argument(..., help="job ids"),
           files: bool = typer.Option(False, "--files", help="also remove the run directories"),
           force: bool = typer.Option(False, "--force", help="stop live jobs first")) -> None:
    """Delete jobs (one or many) from the ledger."""
    import shutil

    from hpcft.executors import get_executor
    from hpcft.states import is_terminal

    ledger = _ledger()
    jobs = [ledger.get(j) for j in job_ids]  # all must exist before anything is deleted
    live = [j for j in jobs if not is_terminal(j.state)]
    if live and not force:
        raise HpcftError(f"job(s) {', '.join(str(j.id) for j in live)} still live; stop them or pass --force")
    for j in live:
        get_executor(j.executor).stop(ledger, j)
    n = ledger.delete([j.id for j in jobs])
    if files:
        for j in jobs:
            if j.output_dir and Path(j.output_dir).is_dir():
                shutil.rmtree(j.output_dir, ignore_errors=True)
    typer.echo(f"deleted {n} job(s)")


@app.command()
def sync() -> None:
    """Bring the states of all live jobs in line with reality (safe to run from cron)."""
    from hpcft.executors import get_executor

    ledger = _ledger()
    live = ledger.live_jobs()
    changed = 0
    for ex in sorted({j.executor for j in live}):
        changed += get_executor(ex).sync(ledger, [j for j in live if j.executor == ex])
    typer.echo(f"{len(live)} live job(s) checked, {changed} changed")
