"""The console's model registry pages: the versions the viewer may see (`hpcft models list`), a version's page
(`hpcft models show`: its rows, lineage, model card, the other versions of its name) and its actions: verify
(`models show --verify`), republish and delete (`hpcft models republish|delete`), each a POST with the session's
CSRF token. Every row, line and refusal comes from hpcft.registry (detail, publish); the buttons a viewer sees are
hpcft.registry.detail.may (the owner's rule the actions themselves apply), less what the team console refuses."""

from __future__ import annotations

from typing import Any, Dict

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from hpcft.errors import HpcftError
from hpcft.ledger.access import AccessDenied
from hpcft.web.common import check_csrf, ctx, render
from hpcft.web.pages import flash, take_flash

TEAM_REFUSES = ("verify", "republish", "delete")


def models_page(request: Request):
    """`hpcft models list`: the versions the viewer may see, newest first per name, with its columns."""
    from hpcft.registry.detail import LIST_HEAD, listing

    rows = listing(ctx(request).ledger)
    return render(request, "models.html", head=LIST_HEAD, message=take_flash(request),
                  models=[{"cells": cells, "url": version_url(r), "state": r.state, "reason": r.state_reason or "",
                           "job": r.job_id} for r, cells in rows])


def version_url(row) -> str:
    return f"/models/{row.name}/{row.version}"


def ref_of(request: Request) -> str:
    """NAME@V of the path /models/NAME/V/..."""
    return f"{request.path_params['name']}@{int(request.path_params['version'])}"


def find_version(ledger, ref: str):
    """The version among those the viewer may see (hpcft.registry.names.find: NotFound, 404)."""
    from hpcft.registry.names import find

    return find(ledger, ref, published_only=False)


def refuse_in_team(team: bool, what: str, ref: str) -> None:
    """The team console changes no registry files: they belong to the version's owner, and the console would read
    and write them as its own identity (a verify it cannot read would mark a sound version corrupt)."""
    if team:
        raise AccessDenied(f"{what} {ref}: the team console does not {what} model versions (their files belong to "
                           f"their owner; it would act as its own identity); use `hpcft models` or your own `hpcft ui`")


def actions(ledger, row, team: bool) -> Dict[str, bool]:
    """The buttons of a version's page: what hpcft.registry.detail.may allows, less what the team console refuses."""
    from hpcft.registry.detail import may

    return {a: ok and not (team and a in TEAM_REFUSES) for a, ok in may(ledger, row).items()}


def version_page(request: Request):
    """`hpcft models show NAME@V` as a page, with the card, the name's other versions and the viewer's actions."""
    from hpcft.registry.detail import card_text, detail_rows, listing

    c = ctx(request)
    row = find_version(c.ledger, ref_of(request))
    rows = detail_rows(c.ledger, row)
    versions = [{"ref": r.ref, "url": version_url(r), "state": r.state, "created": cells[-1], "this": r.id == row.id}
                for r, cells in listing(c.ledger, row.name, include_deleted=True)]
    return render(request, "model.html", ref=row.ref, state=row.state, reason=row.state_reason or "",
                  job=row.job_id, owner=row.owner, url=version_url(row), rows=[kv for kv in rows if kv[0] != "lineage"],
                  lineage=[v for k, v in rows if k == "lineage"], card=card_text(row), versions=versions,
                  actions=actions(c.ledger, row, c.mode == "team"), message=take_flash(request))


def verify(ledger, ref: str, team: bool) -> str:
    """`hpcft models show NAME@V --verify`: its line, or the line of its refusal as "error: ..." (a corrupt version
    is an outcome to show, not a refusal of the request); access refusals stay refusals (403)."""
    from hpcft.registry.detail import verify_outcome

    row = find_version(ledger, ref)
    refuse_in_team(team, "verify", row.ref)
    try:
        return verify_outcome(ledger, row)
    except AccessDenied:
        raise
    except HpcftError as e:
        return "error: " + str(e).strip().splitlines()[0]


def republish(ledger, ref: str, team: bool) -> str:
    """`hpcft models republish NAME@V` (hpcft.registry.publish.republish checks the owner); its line."""
    from hpcft.registry.publish import outcome, republish as redo

    row = find_version(ledger, ref)
    refuse_in_team(team, "republish", row.ref)
    try:
        return outcome(redo(ledger, row.ref))
    except AccessDenied:
        raise
    except HpcftError as e:  # failed again: the row says why; the page shows it
        return "error: " + str(e).strip().splitlines()[0]


async def version_action(request: Request):
    """POST /models/NAME/V/verify|republish: the CLI's line as a flash on the version's page."""
    await check_csrf(request)
    c = ctx(request)
    do = {"verify": verify, "republish": republish}.get(request.path_params["action"])
    if do is None:
        raise HpcftError(f"{request.path_params['action']}: not an action on a model version; use verify, republish "
                         "or delete")
    flash(request, await run_in_threadpool(do, c.ledger, ref_of(request), c.mode == "team"))
    name, _, version = ref_of(request).partition("@")
    return RedirectResponse(f"/models/{name}/{version}", status_code=303)


def delete_check(ledger, ref: str, team: bool) -> Dict[str, Any]:
    """What a delete would remove, once the viewer may delete the version (hpcft.ledger.assets.require_owner, as
    hpcft.registry.publish.delete applies it); AccessDenied otherwise."""
    from hpcft.ledger import assets as db
    from hpcft.registry.detail import detail_rows

    row = find_version(ledger, ref)
    refuse_in_team(team, "delete", row.ref)
    db.require_owner(row, ledger.caller(), "delete")
    keep = ("aliases", "tags", "from", "path", "files")
    return {"ref": row.ref, "state": row.state, "url": version_url(row),
            "rows": [(k, v) for k, v in detail_rows(ledger, row) if k in keep]}


async def delete_confirm(request: Request):
    """POST /models/NAME/V/delete: the confirmation page, listing the version, its directory and files."""
    await check_csrf(request)
    c = ctx(request)
    return render(request, "model_delete.html", **await run_in_threadpool(delete_check, c.ledger, ref_of(request),
                                                                          c.mode == "team"))


def delete(ledger, ref: str, team: bool) -> str:
    """`hpcft models delete NAME@V` (hpcft.registry.publish.delete: the owner's, not while a job starts from it)."""
    from hpcft.registry.publish import delete as remove

    row = find_version(ledger, ref)
    refuse_in_team(team, "delete", row.ref)
    return f"deleted {remove(ledger, row.ref).ref}"


async def delete_do(request: Request):
    await check_csrf(request)
    c = ctx(request)
    flash(request, await run_in_threadpool(delete, c.ledger, ref_of(request), c.mode == "team"))
    return RedirectResponse("/models", status_code=303)


def routes() -> list:
    v = "/models/{name}/{version:int}"
    return [Route("/models", models_page), Route(v, version_page),
            Route(v + "/delete", delete_confirm, methods=["POST"]), Route(v + "/delete/do", delete_do, methods=["POST"]),
            Route(v + "/{action}", version_action, methods=["POST"])]
