"""The console's pages: the job list (search, sort, pages, batch stop/delete with a confirmation), the job page with
its actions, the model registry. Every list and number comes from the CLI's functions: hpcft.ledger.query (the search
and its option checks), hpcft.ledger.access (who may do what), hpcft.ledger.jobjson.detail_rows (`hpcft show`),
hpcft.jobs.control (stop, delete, extend, priority, share, resume). The model registry's pages: hpcft.web.models."""

from __future__ import annotations

from typing import Any, Dict, List
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from hpcft.errors import HpcftError
from hpcft.web.common import check_csrf, ctx, render

PAGE_SIZE = 50
ACTIONS = ("clone", "stop", "extend", "priority", "resume", "retry", "publish", "share", "delete")


def flash(request: Request, message: str) -> None:
    """A one-line outcome shown once on the next page of this session."""
    box = request.app.state.__dict__.setdefault("flash", {})
    if len(box) > 10000:  # sessions that never came back for theirs
        box.clear()
    box[request.state.ctx.csrf] = message


def take_flash(request: Request) -> str:
    return request.app.state.__dict__.setdefault("flash", {}).pop(request.state.ctx.csrf, "")


def job_row(j) -> Dict[str, Any]:
    """A job as the list shows it (the columns of `hpcft list`)."""
    from hpcft.timefmt import elapsed, local_time

    return {"id": j.id, "name": j.name, "state": j.state, "reason": j.state_reason or "", "owner": j.owner,
            "method": j.method, "executor": j.executor, "slurm": j.slurm_job_id or "", "resources": j.resource_spec,
            "created": local_time(j.created_at), "elapsed": elapsed(j.started_at, j.finished_at),
            "output": j.output_dir}


def search_filter(q, page: int):
    """The JobFilter of the search form (hpcft.ledger.query.from_options: `hpcft list`'s option checks)."""
    from hpcft.ledger.query import from_options

    return from_options(state=[s for s in q.getlist("state") if s], name=q.get("name") or None,
                        owner=q.get("user") or None, project=q.get("project") or None,
                        resources=[q["resources"]] if q.get("resources") else [], output=q.get("output") or None,
                        since=q.get("since") or None, until=q.get("until") or None,
                        sort=[q.get("sort") or "-created"], limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)


def list_jobs(ledger, where) -> List[Any]:
    """Ledger.search, with the live Slurm jobs among them brought up to date first (hpcft.jobs.refresh, as `list`)."""
    from hpcft.jobs.refresh import refresh_states

    jobs = ledger.search(where)
    if refresh_states(jobs, ledger).changed:
        jobs = ledger.search(where)
    return jobs


def jobs_page(request: Request):
    from hpcft.ledger.query import SORT_COLUMNS
    from hpcft.states import State

    c, q = ctx(request), request.query_params
    page = max(1, int(q.get("page") or 1)) if (q.get("page") or "1").isdigit() else 1
    error, jobs = "", []
    try:
        jobs = list_jobs(c.ledger, search_filter(q, page))
    except HpcftError as e:
        error = str(e).splitlines()[0]
    more = len(jobs) > PAGE_SIZE
    keep = [(k, v) for k, v in q.multi_items() if k != "page"]
    return render(request, "jobs.html", jobs=[job_row(j) for j in jobs[:PAGE_SIZE]], error=error, page=page,
                  more=more, q=q, states=list(State.__members__), sorts=list(SORT_COLUMNS),
                  prev_url="?" + urlencode(keep + [("page", page - 1)]), next_url="?" + urlencode(keep + [("page", page + 1)]),
                  sort_url=lambda key: "?" + urlencode([(k, v) for k, v in keep if k != "sort"] + [("sort", key)]),
                  message=take_flash(request))


def allowed_actions(job, lvl: str, team: bool = False) -> Dict[str, bool]:
    """Which buttons the job page shows: what hpcft.ledger.access allows the viewer, and what the job's state and
    executor make possible (the CLI refuses the rest with its one-line message)."""
    from hpcft.ledger.access import allowed
    from hpcft.states import is_terminal

    live = not is_terminal(job.state)
    slurm = job.executor == "slurm" and bool(job.slurm_job_id)
    possible = {"clone": True, "stop": live, "extend": live and slurm, "priority": live and slurm, "resume": not live,
                "retry": job.state in ("error", "expired"), "publish": job.state == "success", "share": True,
                "delete": True}
    right = {"publish": "share", "retry": "resume"}  # publishing shares the model (what `hpcft publish` asks)
    # refuse_in_team: the team console starts nothing and changes no run directory's ACLs (the owner's files)
    starts = ("clone", "resume", "retry", "publish", "share") if team else ()
    return {a: allowed(lvl, right.get(a, a)) and possible[a] and a not in starts for a in ACTIONS}


def run_files(job) -> Dict[str, List[str]]:
    """The run directory's logs and checkpoints (names relative to it), for the Logs and Checkpoints tabs."""
    from pathlib import Path

    out = Path(job.output_dir or "")
    logs = sorted(str(p.relative_to(out)) for p in (out / "logs").glob("*") if p.is_file()) if out.is_dir() else []
    ckpts = []
    if (out / "checkpoints").is_dir():
        for d in sorted((out / "checkpoints").iterdir()):
            files = sorted(str(p.relative_to(out)) for p in d.iterdir() if p.is_file()) if d.is_dir() else []
            ckpts.append({"name": d.name, "files": files})
    return {"logs": logs, "checkpoints": ckpts}


def unreadable_as_empty(fn, *args):
    """fn(*args), or None when the run directory cannot be read by this process (PermissionError)."""
    try:
        return fn(*args)
    except PermissionError:
        return None


def pipeline_of(job) -> dict:
    """{id, name, stage} of the pipeline a job is a stage of (its config's `pipeline`), or {}."""
    info = dict((job.config or {}).get("pipeline") or {})
    return info if isinstance(info.get("id"), int) else {}


def job_page(request: Request):
    import yaml

    from hpcft.config.methods import METHODS
    from hpcft.config.secrets import masked
    from hpcft.jobs.refresh import refresh_states
    from hpcft.ledger.access import authorize
    from hpcft.ledger.jobjson import detail_rows
    from hpcft.rundir.metrics_io import read_summary
    from hpcft.timefmt import local_time

    c = ctx(request)
    jid = int(request.path_params["job_id"])
    job, lvl = authorize(c.ledger, jid, "show")
    if refresh_states([job], c.ledger).changed:
        job = c.ledger.get(jid)
    from hpcft.rundir.secrets_file import restore

    # the owner's secrets stay theirs: shown to the owner (from the run directory), masked for everyone else
    cfg = restore(job.config, job.output_dir) if c.ledger.user == job.owner else masked(job.config)
    events = [{"ts": local_time(e.ts), "attempt": e.attempt, "kind": e.kind, "message": e.message}
              for e in c.ledger.events(jid)]
    from hpcft.registry.names import default_name

    trainer = METHODS.get(str(((job.config or {}).get("method") or {}).get("name") or job.method), "")
    summary, files = unreadable_as_empty(read_summary, job.output_dir), unreadable_as_empty(run_files, job)
    rows = detail_rows(job, summary or {})
    if summary is None or files is None:  # team mode: the console's account is not among those it is shared with
        rows.append(("run directory", f"{job.output_dir}: not readable by the console's account (metrics, logs and "
                     "checkpoints are shown to those who can read it: `hpcft show`, `hpcft logs`)"))
    files = files or {"logs": [], "checkpoints": []}
    return render(request, "job.html", job=job_row(job), rows=rows,
                  level=lvl, actions=allowed_actions(job, lvl, c.mode == "team"), events=events, files=files,
                  config=yaml.safe_dump(cfg or {}, sort_keys=False), trainer=trainer,
                  live=job.state in ("queued", "running"), message=take_flash(request),
                  asset_name=default_name(job.name), access=job.access or "none", pipeline=pipeline_of(job))


async def job_action(request: Request):
    """POST /job/{id}/{action}: stop, extend, priority, resume, retry, publish, share, delete, as the CLI's commands
    do them."""
    form = await check_csrf(request)
    c = ctx(request)
    jid, action = int(request.path_params["job_id"]), request.path_params["action"]
    if action not in ("stop", "extend", "priority", "delete", "resume", "retry", "publish", "share"):
        raise HpcftError(f"{action}: not an action of the console; use stop, extend, priority, resume, retry, "
                         "publish, share or delete")
    value = str(form.get("value") or "").strip()
    if action == "share":
        from hpcft.jobs.control import share_job

        refuse_in_team(c.mode == "team", "share", "changes its run directory's ACLs, which only its owner may")
        message = await run_in_threadpool(share_job, c.ledger, jid, value)
    elif action == "publish":
        refuse_in_team(c.mode == "team", "publish")
        message = await run_in_threadpool(publish, c.ledger, jid, value, str(form.get("visibility") or "project"))
    else:
        message = await run_in_threadpool(do_action, c.ledger, [jid], action, value, c.mode == "team")
    flash(request, message)
    return RedirectResponse("/" if action == "delete" else f"/job/{jid}", status_code=303)


def publish(ledger, job_id: int, name: str, visibility: str) -> str:
    """`hpcft publish JOB --name NAME --visibility V` (hpcft.registry.publish; it checks the access)."""
    from hpcft.registry.publish import outcome, publish_or_same

    return outcome(*publish_or_same(ledger, job_id, name=name, visibility=visibility))


def do_action(ledger, ids: List[int], action: str, value: str = "", team: bool = False) -> str:
    """Authorise every job first (nothing done when one is refused), then act; the CLI's lines, joined. In the team
    console every change to a job is a request the owner's side carries out (the job's worker, the owner's sync, an
    operator's `hpcft admin apply`): the server never acts on Slurm or on processes as its own identity."""
    from hpcft.jobs import control
    from hpcft.ledger.access import authorize

    right = "resume" if action == "retry" else action  # a retry is a resume (hpcft.ledger.access)
    checked = [authorize(ledger, i, right) for i in dict.fromkeys(ids)]
    if action in ("resume", "retry"):
        refuse_in_team(team, action)
        again = control.resume if action == "resume" else control.retry_one
        return "; ".join(control.resumed_line(again(ledger, j.id)) for j, _ in checked)
    if action == "stop":
        return "; ".join(control.stop_job(ledger, j, lvl, by_request=team) for j, lvl in checked)
    if action == "delete":
        lines: List[str] = []
        n = control.delete_jobs(ledger, control.check_deletable(checked, by_request=team), lines.append)
        return "; ".join(lines + [f"deleted {n} job(s)"])
    if not value:
        raise HpcftError(f"{action}: give a value (extend: a time limit such as 02:00:00 or +30; priority: low, "
                         "normal or high)")
    return "; ".join(control.change_slurm_job(ledger, j, lvl, action, value, by_request=team) for j, lvl in checked)


def refuse_in_team(team: bool, what: str, why: str = "") -> None:
    """The team console does not start jobs (a job started by the server would run as the server's identity), nor
    change a run directory's ACLs (the owner's files)."""
    from hpcft.ledger.access import AccessDenied

    if team:
        why = why or "does not start jobs (they would run as the console's own identity)"
        raise AccessDenied(f"{what}: the team console {why}; use `hpcft` or your own `hpcft ui` on a login node")


async def batch_confirm(request: Request):
    """POST /jobs/batch: the confirmation page listing the selected jobs, and each one the viewer may not touch."""
    from hpcft.ledger.access import authorize

    form = await check_csrf(request)
    c = ctx(request)
    action = str(form.get("action") or "")
    if action not in ("stop", "delete"):
        raise HpcftError(f"batch action {action!r}: use stop or delete")
    ids = [int(i) for i in form.getlist("id") if str(i).isdigit()]
    if not ids:
        raise HpcftError(f"{action}: no job selected; tick the jobs in the list first")
    rows, refused = [], []
    for i in ids:
        try:
            rows.append(job_row(authorize(c.ledger, i, action)[0]))
        except HpcftError as e:
            refused.append(str(e).splitlines()[0])
    return render(request, "confirm.html", action=action, jobs=rows, refused=refused)


async def batch_do(request: Request):
    form = await check_csrf(request)
    c = ctx(request)
    action = str(form.get("action") or "")
    if action not in ("stop", "delete"):
        raise HpcftError(f"batch action {action!r}: use stop or delete")
    ids = [int(i) for i in form.getlist("id") if str(i).isdigit()]
    flash(request, await run_in_threadpool(do_action, c.ledger, ids, action, "", c.mode == "team"))
    return RedirectResponse("/", status_code=303)


def routes() -> list:
    return [Route("/", jobs_page), Route("/job/{job_id:int}", job_page),
            Route("/job/{job_id:int}/{action}", job_action, methods=["POST"]),
            Route("/jobs/batch", batch_confirm, methods=["POST"]), Route("/jobs/batch/do", batch_do, methods=["POST"])]
