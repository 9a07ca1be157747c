"""The pipeline page: one pipeline's stages (hpcft.jobs.pipeline: the rows of `hpcft pipeline show`), each with its
job, state and the cause of its end, the jobs it waits for, its model's parent and Slurm id; the job page links to
it. Stages another user may not see are left out, as the CLI leaves them out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from hpcft.web.common import ctx, render


def pipeline_page(request: Request):
    from hpcft.jobs import pipeline as P
    from hpcft.jobs.refresh import refresh_states

    ledger = ctx(request).ledger
    pid = int(request.path_params["pipeline_id"])
    jobs = P.stages(ledger, pid)  # NotFound: the CLI's line, as a 404 page
    if refresh_states(jobs, ledger).changed:
        jobs = P.stages(ledger, pid)
    return render(request, "pipeline.html", pipeline=pid, name=P.info_of(jobs[0]).get("name", ""),
                  rows=P.describe(ledger, jobs))


def routes() -> list:
    return [Route("/pipeline/{pipeline_id:int}", pipeline_page)]
