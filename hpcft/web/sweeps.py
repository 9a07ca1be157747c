"""The Sweeps pages: the newest sweeps, and one sweep's points side by side, best first (hpcft.ledger.sweeps, the
functions of `hpcft sweep`), with their loss curves overlaid (drawn by static/console.js from /api/job/ID/metrics)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from hpcft.web.common import ctx, render


def sweeps_page(request: Request):
    from hpcft.ledger import sweeps as sl

    return render(request, "sweeps.html", sweeps=sl.recent(ctx(request).ledger, 50))


def sweep_page(request: Request):
    from hpcft.ledger import sweeps as sl

    ledger = ctx(request).ledger
    q = request.query_params
    higher = {"max": True, "min": False}.get(q.get("order") or "")
    cmp = sl.compare(ledger, sl.resolve(ledger, int(request.path_params["sweep_id"])), by=q.get("by") or None,
                     higher=higher)
    return render(request, "sweep.html", cmp=cmp, ids=",".join(str(r["id"]) for r in cmp["rows"][:12]))


def routes() -> list:
    return [Route("/sweeps", sweeps_page), Route("/sweep/{sweep_id:int}", sweep_page)]
