"""What the console's handlers share: the request's context (the ledger as the acting user), page rendering
(Jinja2, autoescaped), form reading with the CSRF check, errors as the CLI's one-line messages."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from hpcft.errors import HpcftError, NotFound
from hpcft.ledger.access import AccessDenied

HERE = Path(__file__).resolve().parent


class CsrfError(HpcftError):
    exit_code = 3


@dataclass
class Ctx:
    """What a handler needs: the ledger as the acting user, their name, the CSRF token of their session."""

    ledger: Any
    user: str
    csrf: str
    mode: str


def make_env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page from templates/ (autoescaped: every user string is shown literally)."""
    ctx: Ctx = request.state.ctx
    env = request.app.state.env
    html = env.get_template(template).render(user=ctx.user, csrf=ctx.csrf, mode=ctx.mode, request=request, **values)
    return HTMLResponse(html, status_code=status)


def ctx(request: Request) -> Ctx:
    return request.state.ctx


async def read_form(request: Request):
    """An application/x-www-form-urlencoded body (every form of the console; console.js posts the same), parsed
    without python-multipart; anything else is refused."""
    from urllib.parse import parse_qsl

    from starlette.datastructures import FormData

    kind = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    if body and kind != "application/x-www-form-urlencoded":
        raise HpcftError(f"a form sent as {kind or 'no content type'}: the console takes "
                         "application/x-www-form-urlencoded forms only")
    if len(body) > 1 << 20:
        raise HpcftError("a form over 1 MiB: nothing of the console needs one")
    return FormData(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


async def check_csrf(request: Request) -> Any:
    """The submitted form when its `csrf` field (or the X-CSRF-Token header) is the session's token; else 403."""
    form = await read_form(request)
    sent = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
    if not hmac.compare_digest(sent.encode(), request.state.ctx.csrf.encode()):
        raise CsrfError("the form's CSRF token is missing or wrong (an old page, or a request made by another "
                        "site); reload the page and try again (nothing was changed)")
    return form


def status_of(e: HpcftError) -> int:
    if isinstance(e, (AccessDenied, CsrfError)):
        return 403
    if isinstance(e, NotFound):
        return 404
    return 400


def error_response(request: Request, e: HpcftError) -> Response:
    line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if request.url.path.startswith("/api/") or getattr(request.state, "ctx", None) is None:
        return PlainTextResponse(f"error: {line}\n", status_code=status_of(e))
    return render(request, "error.html", status=status_of(e), message=line)


def unreadable_response(request: Request, e: PermissionError) -> Response:
    """A file of a run directory this console's account may not read (team mode: run directories are shared with
    the project's members, not with the console): 403 with one line, never a 500."""
    from hpcft.ledger.access import AccessDenied

    where = getattr(e, "filename", None) or "a run directory"
    return error_response(request, AccessDenied(f"{where}: not readable by the console's account; read it with the "
                                                 "hpcft CLI as a user it is shared with"))
