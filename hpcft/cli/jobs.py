"""Job commands: submit, clone, list, show, logs, events, stop, resume, retry, delete, sync."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from hpcft.cli.common import (JOB, app, authorized, console, duration, fmt_time, open_ledger, quote,
                              refresh_states)
from hpcft.errors import HpcftError
from hpcft.ledger.query import RESOURCE_KEYS, SORT_COLUMNS  # noqa: F401  (RESOURCE_KEYS: tests import it here)

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
    force: bool = typer.Option(False, "--force", help="submit even when the memory estimate exceeds resources.gpu_mem"),
    after: Optional[str] = typer.Option(None, "--after", help="JOB[,JOB...]: queue it now, start it when these jobs "
                                        "ended in success (Slurm afterok); model.path=job:ID may name one of them"),
) -> None:
    """Validate a job config and submit it (local machine or Slurm)."""
    from hpcft.jobs import submit as hsubmit

    ovs = list(overrides or []) + hsubmit.text_overrides(name=name, description=description)
    ovs += hsubmit.after_overrides(after)
    plan = hsubmit.plan(ovs, multirun=multirun)
    con = console()
    if dry_run:
        _dry_run(plan, force, con)
        return
    _memory(plan, force, show=False)  # before anything is created
    if plan.executor == "slurm" and plan.configs[0].get("after"):  # no prediction: it waits for its parents
        con.print(f"queued behind job(s) {', '.join(map(str, plan.configs[0].after))}: starts when they succeed")
    elif plan.executor == "slurm":
        from hpcft.cli.slurm_cmds import prediction_line
        from hpcft.jobs.executors.slurm import predict

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


def _dry_run(plan, force: bool, con) -> None:
    """`submit --dry-run`: the resolved configs, what would run, a data preview, the memory estimate (refuses, exit
    2, a job that cannot fit) and on Slurm the sbatch options; creates nothing."""
    from hpcft.config import compose
    from hpcft.config.methods import METHODS
    from hpcft.train.datacheck import preview_lines  # records, format, one rendered example per the data

    for i, (cfg, pt) in enumerate(zip(plan.configs, plan.overrides, strict=True)):
        if len(plan.configs) > 1:
            con.print(f"[bold]# point {i}: {' '.join(pt)}[/bold]")
        typer.echo(compose.to_yaml(cfg))
    n = len(plan.configs)
    what = "one job" if n == 1 else (f"{n} jobs as one Slurm array" if plan.executor == "slurm" else f"{n} jobs")
    trainer = METHODS[plan.configs[0].method.name]
    typer.echo(f"# would submit {what} to the {plan.executor} executor; each runs {trainer} "
               f"(method {plan.configs[0].method.name}) via `python -m hpcft.train.entry`")
    typer.echo("\n".join(preview_lines(plan.configs[0])))
    _memory(plan, force, show=True)  # the per-GPU estimate; refuses (exit 2) a job that cannot fit
    if plan.executor == "slurm":
        from hpcft.slurm.sbatch import sbatch_options, to_lines

        cfg0 = plan.configs[0]
        array = f"0-{n - 1}" if n > 1 else None
        from hpcft.jobs.submit import dependency_of

        typer.echo("\n".join(to_lines(sbatch_options(cfg0.resources, job_name=cfg0.name, array=array,
                                                     after=dependency_of(cfg0)))))


def _memory(plan, force: bool, show: bool) -> None:
    """Will it fit? hpcft.config.memory's estimate per GPU; a job that cannot fit its GPUs is refused unless --force."""
    from hpcft.config.memory import check_submit

    check_submit(plan.configs, plan.overrides, force, typer.echo, show)


def _wait(job_ids: List[int], follow: bool) -> int:
    """Block until the jobs end (following the log of a single job). 0 if all succeeded."""
    from hpcft.jobs.executors import get_executor
    from hpcft.states import is_terminal

    ledger = open_ledger()
    pos = 0
    last_sync = 0.0
    try:
        while True:
            jobs = [ledger.get(i) for i in job_ids]
            if follow:
                pos = _print_new(Path(jobs[0].output_dir) / "logs" / "job.log", pos)
            if all(is_terminal(j.state) for j in jobs) and not _auto_publishing(ledger, jobs):
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


def _auto_publishing(ledger, jobs) -> bool:
    """A succeeded job with publish.auto=true whose automatic publish has not ended yet (hpcft.registry.publish)."""
    if not any(j.state == "success" and ((j.config or {}).get("publish") or {}).get("auto") for j in jobs):
        return False
    from hpcft.registry.publish import auto_publish_pending

    return any(auto_publish_pending(ledger, j) for j in jobs)


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

SORT_KEYS = tuple(SORT_COLUMNS)  # Ledger.search(sort=...)


@app.command("list")
def list_(
    state: Optional[List[str]] = typer.Option(None, "--state", "-s", help="queued|running|error|stopped|expired|success"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="name contains"),
    owner: Optional[str] = typer.Option(None, "--user", "-u", help="owner"),
    project: Optional[str] = typer.Option(None, "--project", "-p"),
    resources: Optional[List[str]] = typer.Option(
        None, "--resources", "-r", help="key=value, equal to a whole token of the resource spec (gpus=8 never "
                                         "matches gpus=80); several: all must match"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output path contains"),
    since: Optional[str] = typer.Option(None, "--since", help="created at or after: 2025-05-01[T09:30] (local "
                                                              "time) or a time ago: 30m, 2h, 3d, 1w"),
    until: Optional[str] = typer.Option(None, "--until", help="created before (same forms as --since)"),
    sort: List[str] = typer.Option(["-created"], "--sort", help=f"{', '.join(SORT_KEYS)}; - prefix = descending; "
                                                                 "repeat or comma-separate for several keys"),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="a JSON array of jobs (schema: --json-schema)"),
    json_schema: bool = typer.Option(False, "--json-schema", help="print the JSON Schema of --json and exit"),
) -> None:
    """List and search jobs (newest first unless --sort says otherwise)."""
    from hpcft.ledger.jobjson import job_dict
    from hpcft.ledger.jobjson import json_schema as schema_of_json

    if json_schema:
        typer.echo(json.dumps(schema_of_json(), indent=1))
        return
    from hpcft.ledger import fastread as ledger_read
    from hpcft.ledger.query import from_options

    where = from_options(state=state or [], name=name, owner=owner, project=project, resources=resources or [],
                         output=output, since=since, until=until, sort=sort, limit=limit)
    jobs = ledger_read.search(where)  # SQLite / PostgreSQL without importing SQLAlchemy (~0.5 s)
    if jobs is None:
        jobs = open_ledger().search(where)
    if refresh_states(jobs):  # live Slurm jobs only (hpcft.jobs.refresh): one sacct call, at most every 10 s
        jobs = ledger_read.search(where) or open_ledger().search(where)
    if as_json:
        typer.echo(json.dumps([job_dict(j) for j in jobs], indent=1))
        return
    # a plain aligned table: rich's Table costs ~10 ms per row to lay out, more than the query and the imports
    head = ("ID", "NAME", "STATE", "USER", "METHOD", "EXEC", "SLURM", "CREATED", "ELAPSED")
    rows = [(str(j.id), j.name, j.state, j.owner, j.method, j.executor, j.slurm_job_id or "-",
             fmt_time(j.created_at), duration(j)) for j in jobs]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    colors = {"success": "green", "error": "red", "running": "cyan", "expired": "yellow", "stopped": "magenta"}

    def line(cells, styled) -> str:
        return "  ".join(styled(i, c.ljust(w) if i < len(cells) - 1 else c)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(head, lambda i, c: typer.style(c, bold=True))]
    out += [line(r, lambda i, c: typer.style(c, fg=colors.get(c.strip(), "white")) if i == 2 else c) for r in rows]
    typer.echo("\n".join(out))


# ------------------------------------------------------------------------------------------------------ show

@app.command()
def show(job_id: int = JOB, config: bool = typer.Option(False, "--config", help="print the full config")) -> None:
    """Show one job: state, resources, paths, latest metrics."""
    from hpcft.ledger.jobjson import detail_rows
    from hpcft.rundir.metrics_io import read_summary

    ledger, j, _ = authorized(job_id, "show")
    if refresh_states([j], ledger):
        j = ledger.get(job_id)
    con = console()
    rows = detail_rows(j, read_summary(j.output_dir))
    for k, v in rows:
        con.print(f"[bold]{k:>22}[/bold]  {v}")
    if config:
        import yaml  # ships with omegaconf

        from hpcft.config.secrets import masked

        # secrets (notify.urls, ...) only for the job's owner; everyone else sees ***
        from hpcft.rundir.secrets_file import restore

        typer.echo(yaml.safe_dump(restore(j.config, j.output_dir) if ledger.user == j.owner else masked(j.config),
                                  sort_keys=False))


# ------------------------------------------------------------------------------------------------------ logs

@app.command()
def logs(job_id: int = JOB, follow: bool = typer.Option(False, "-f", "--follow", help="follow until the job ends"),
         rank: int = typer.Option(0, "--rank", help="another rank's log (multi-process jobs)")) -> None:
    """Print a job's log."""
    from hpcft.states import is_terminal

    ledger, j, _ = authorized(job_id, "logs")
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
    ledger, _, _ = authorized(job_id, "events")
    evs = ledger.events(job_id)
    if as_json:
        typer.echo(json.dumps([e.model_dump() for e in evs], indent=1, default=str))
        return
    for e in evs:
        typer.echo(f"{fmt_time(e.ts)}  #{e.attempt}  {e.kind:<11} {e.message}")


# `hpcft curve` (with `top` and `monitor`) lives in hpcft/cli/monitor_cmds.py


# ------------------------------------------------------------------------------------------------------ control

@app.command()
def stop(job_ids: List[int] = typer.Argument(..., help="job ids")) -> None:
    """Stop jobs (a stop you ask for is recorded as `stopped`, never as a failure)."""
    from hpcft.jobs.control import stop_job

    for jid in job_ids:
        ledger, j, lvl = authorized(jid, "stop")
        typer.echo(stop_job(ledger, j, lvl))


@app.command()
def resume(job_id: int = JOB, checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="checkpoint dir (default: latest)"),
           wait: bool = typer.Option(False, "--wait", "-w")) -> None:
    """Run an ended job again (new attempt, same run dir) from its latest or a chosen checkpoint."""
    from hpcft.jobs.control import resume as resume_job
    from hpcft.jobs.control import resumed_line

    ledger, _, _ = authorized(job_id, "resume")
    typer.echo(resumed_line(resume_job(ledger, job_id, checkpoint)))
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
    from hpcft.jobs.control import parse_exit_codes, retry_failed

    bad = [s for s in state if s not in ("error", "expired", "stopped")]
    if bad:
        raise HpcftError(f"--state {bad[0]}: only ended states can be retried (error, expired, stopped)")
    if max_attempts < 1:
        raise HpcftError(f"--max-attempts {max_attempts}: must be at least 1")
    report = retry_failed(open_ledger(), max_attempts, list(state), oom=oom, exit_codes=parse_exit_codes(exit_codes),
                          backoff=backoff)
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def clone(
    job_id: int = JOB,
    overrides: Optional[List[str]] = typer.Argument(None, help="changes: key=value ... (no group swaps)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the new config and what changed; create nothing"),
    wait: bool = typer.Option(False, "--wait", "-w", help="follow the log until the job ends"),
    name: Optional[str] = typer.Option(None, "--name", help="the new job's name (same as name=...)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Slurm: do not ask after the queue-wait prediction"),
) -> None:
    """A new job from JOB's recorded config with changes (training.learning_rate=1e-3 resources.time=02:00:00),
    validated like `submit`, in its own run directory, recorded as cloned from JOB. A group swap (method=dpo)
    needs `hpcft submit`."""
    from hpcft.config import compose
    from hpcft.jobs import clone as hclone

    ledger, src, _ = authorized(job_id, "clone")
    ovs = list(overrides or []) + ([f"name={quote(name)}"] if name is not None else [])
    plan = hclone.plan(src, ovs, by=ledger.user)
    con = console()
    if dry_run:
        from hpcft.config.secrets import masked

        typer.echo(compose.to_yaml(plan.configs[0]))
        before = src.config if ledger.user == src.owner else masked(src.config)  # the owner's secrets stay theirs
        for line in hclone.changes(before, plan.configs[0]):
            typer.echo(f"# changed: {line}")
        typer.echo(f"# would submit one job, a clone of job {job_id}, to the {plan.executor} executor")
        return
    if plan.executor == "slurm":
        _predict_and_confirm(con, plan.configs[0], yes)
    j = hclone.submit(ledger, src, plan)
    extra = f" (Slurm {j.slurm_job_id})" if j.slurm_job_id else ""
    con.print(f"cloned job {job_id} as job [bold]{j.id}[/bold] {j.name}{extra} -> {j.output_dir}")
    if wait:
        raise typer.Exit(_wait([j.id], follow=True))


def _predict_and_confirm(con, cfg, yes: bool) -> None:
    """Before a Slurm submission: the queue-wait prediction (advice: never blocks), then `submit?` on a terminal."""
    from hpcft.cli.slurm_cmds import prediction_line
    from hpcft.jobs.executors.slurm import predict

    try:
        con.print(prediction_line(predict(cfg)))
    except HpcftError as e:
        con.print(f"(no queue-wait prediction: {e})")
    if not yes and sys.stdin.isatty() and not typer.confirm("submit?", default=True):
        raise typer.Exit(1)


@app.command()
def delete(job_ids: List[int] = typer.Argument(..., help="job ids"),
           purge: bool = typer.Option(False, "--purge", help="also remove the run directories (asks first)"),
           yes: bool = typer.Option(False, "--yes", "-y", help="--purge without asking"),
           files: bool = typer.Option(False, "--files", hidden=True, help="old name of --purge"),
           force: bool = typer.Option(False, "--force", hidden=True, help="accepted, no effect: live jobs are "
                                                                         "always stopped first")) -> None:
    """Delete jobs (one or many) from the ledger; live ones are stopped first. --purge also removes their run
    directories, after listing them with their sizes and asking (--yes: without asking)."""
    import shutil

    from hpcft.jobs.control import check_deletable, delete_jobs

    ledger = open_ledger()
    checked = [authorized(j, "delete")[1:] for j in dict.fromkeys(job_ids)]  # all exist and may be deleted first
    jobs = check_deletable(checked)
    dirs = _run_dirs(ledger, jobs) if purge or files else []
    if dirs and not yes:
        total = _fmt_size(sum(size for _, size in dirs))
        if not sys.stdin.isatty():
            typer.echo(f"error: --purge would remove {len(dirs)} run director{'y' if len(dirs) == 1 else 'ies'} "
                       f"({total}); pass --yes to confirm without a terminal (nothing was changed)", err=True)
            raise typer.Exit(2)
        for d, size in dirs:
            typer.echo(f"  {d}  {_fmt_size(size)}")
        if not typer.confirm(f"delete {len(jobs)} job(s) and remove these {len(dirs)} run directories ({total})?",
                             default=False):
            raise typer.Exit(1)
    n = delete_jobs(ledger, jobs, typer.echo)
    for d, _ in dirs:
        shutil.rmtree(d, ignore_errors=True)
    removed = f", removed {len(dirs)} run director{'y' if len(dirs) == 1 else 'ies'}" if dirs else ""
    typer.echo(f"deleted {n} job(s){removed}")


def _run_dirs(ledger, jobs) -> List[tuple]:
    """[(run directory, bytes)] that --purge removes: each job's output_dir when it is a run directory hpcft wrote
    (it holds config.yaml) that no job outside `jobs` uses (a shared output_dir is kept, and said so)."""
    ids = {j.id for j in jobs}
    out = []
    for d in dict.fromkeys(Path(j.output_dir) for j in jobs if j.output_dir):
        if not (d / "config.yaml").is_file():
            if d.exists():
                typer.echo(f"keeping {d}: no config.yaml, not a run directory hpcft wrote")
            continue
        others = [o.id for o in ledger.search(output=str(d)) if Path(o.output_dir) == d and o.id not in ids]
        if others:
            typer.echo(f"keeping {d}: also the run directory of job(s) {', '.join(map(str, others))}")
            continue
        out.append((d, sum(p.lstat().st_size for p in d.rglob("*") if not p.is_dir() or p.is_symlink())))
    return out


def _fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
def sync() -> None:
    """Bring the states of all live jobs in line with reality (safe to run from cron)."""
    from hpcft.jobs.executors import get_executor

    from hpcft.jobs.control import carry_out_stop_requests, settle_unsubmitted

    from hpcft.jobs.executors.slurm import adopt_or_cancel, unrecorded_submissions

    ledger = open_ledger()
    # Slurm jobs whose sbatch timed out: adopted by their queued row, or cancelled when the row has ended
    changed = adopt_or_cancel(ledger, unrecorded_submissions(ledger))
    live = ledger.live_jobs()
    changed += settle_unsubmitted(ledger, live)  # rows a failed submit left queued, never handed over
    live = ledger.live_jobs() if changed else live
    for ex in sorted({j.executor for j in live}):
        changed += get_executor(ex).sync(ledger, [j for j in live if j.executor == ex])
    stopped = carry_out_stop_requests(ledger, ledger.live_jobs())
    typer.echo(f"{len(live)} live job(s) checked, {changed} changed"
               + (f", {stopped} stopped at other members' request" if stopped else ""))
