"""The console's ASGI app: authentication (user mode: a random token, then an HttpOnly SameSite=Strict cookie; team
mode: the user a trusted reverse proxy names, hpcft.web.proxyauth), CSRF tokens on every POST, security headers,
errors as the CLI's one-line messages (an access refusal: HTTP 403), and the routes of hpcft.web.pages,
hpcft.web.create and hpcft.web.api.

Each request gets a `Ctx`: the ledger as the acting user (user mode: the invoking user's own ledger, exactly what
their CLI opens; team mode: `Ledger(db_url).as_user(name)`, so that row-level security decides as for the CLI)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from typing import Any, Optional, Tuple
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from hpcft.errors import HpcftError
from hpcft.ledger.access import AccessDenied
from hpcft.web.common import HERE, Ctx, error_response, make_env, status_of, unreadable_response

TOKEN_COOKIE = "hpcft_token"
SESSION_COOKIE = "hpcft_session"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Gate(BaseHTTPMiddleware):
    """Authentication and the session for every request (static files included), then the security headers."""

    async def dispatch(self, request: Request, call_next):
        app = request.app
        try:
            who, set_cookies, redirect = self._authenticate(request, app)
        except HpcftError as e:
            return _headers(PlainTextResponse(f"error: {str(e).splitlines()[0]}\n", status_code=status_of(e)))
        if redirect is not None:
            resp: Response = RedirectResponse(redirect, status_code=303)
        else:
            sid = set_cookies.get(SESSION_COOKIE) or request.cookies.get(SESSION_COOKIE) or ""
            request.state.ctx = Ctx(ledger=who[1], user=who[0], csrf=_csrf(app.state.key, sid), mode=app.state.mode)
            try:
                resp = await call_next(request)
            except HpcftError as e:
                resp = error_response(request, e)
        for name, value in set_cookies.items():
            resp.set_cookie(name, value, httponly=True, samesite="strict", path="/")
        return _headers(resp)

    def _authenticate(self, request: Request, app) -> Tuple[Tuple[str, Any], dict, Optional[str]]:
        """((user, ledger), cookies to set, redirect or None); HpcftError (403) for a request without the right token
        (user mode) or not from the trusted proxy (team mode)."""
        cookies = {}
        if not request.cookies.get(SESSION_COOKIE):
            cookies[SESSION_COOKIE] = secrets.token_urlsafe(24)
        if app.state.mode == "team":
            return _team_user(request, app), cookies, None
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), app.state.token.encode()):
                raise AccessDenied("wrong console token; use the URL `hpcft ui` printed")
            cookies[TOKEN_COOKIE] = app.state.token
            cookies[SESSION_COOKIE] = secrets.token_urlsafe(24)  # a new session at each login
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            path = "/" + request.url.path.lstrip("/")  # never `//host`: a redirect to another site
            return (app.state.user, app.state.ledger), cookies, path + (f"?{rest}" if rest else "")
        have = request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(have.encode(), app.state.token.encode()):
            raise AccessDenied("this console needs its token: open the URL `hpcft ui` printed (…/?token=...)")
        return (app.state.user, app.state.ledger), cookies, None


def _team_user(request: Request, app) -> Tuple[str, Any]:
    from hpcft.ledger.store import Ledger
    from hpcft.web import proxyauth

    client = request.client.host if request.client else None
    name = proxyauth.identify(request.headers, client, app.state.trusted_proxies, app.state.user_header)
    ledger = Ledger(app.state.db_url)
    if not hasattr(ledger, "as_user"):
        raise AccessDenied("team mode needs a ledger that acts as each user (Ledger.as_user); this hpcft has none")
    return name, ledger.as_user(name)


def _csrf(key: bytes, sid: str) -> str:
    return hmac.new(key, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()


def _headers(resp: Response) -> Response:
    for k, v in HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def create_app(*, mode: str = "user", token: Optional[str] = None, db_url: Optional[str] = None,
               trusted_proxies: tuple = (), user_header: str = "X-Remote-User") -> Starlette:
    """The console. mode "user": one user's console, every request needs `token` (made here when None: read it back
    from `app.state.token`); mode "team": behind a reverse proxy at one of `trusted_proxies`, which names the user in
    `user_header`."""
    from hpcft import paths
    from hpcft.web import api, create, models, pages, pipelines, sweeps

    if mode not in ("user", "team"):
        raise HpcftError(f"console mode {mode!r}: use user or team")
    if mode == "team" and not trusted_proxies:
        raise HpcftError("--team needs --trusted-proxy ADDR: the address of the reverse proxy that authenticates users")
    # /job/ID/clone before /job/ID/{action}
    routes = create.routes() + api.routes() + pages.routes() + models.routes() + sweeps.routes() + pipelines.routes()
    routes.append(Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(Gate)],
                    exception_handlers={HpcftError: error_response, PermissionError: unreadable_response})
    app.state.mode = mode
    app.state.token = token or secrets.token_urlsafe(32)
    app.state.db_url = db_url or paths.db_url()
    app.state.trusted_proxies = tuple(trusted_proxies)
    app.state.user_header = user_header
    app.state.key = secrets.token_bytes(32)
    app.state.env = make_env()
    app.state.live = api.LiveCache()
    app.state.appended, app.state.appended_lock = api.Appended(), threading.Lock()
    if mode == "user":
        from hpcft.ledger.store import Ledger

        app.state.ledger = Ledger(app.state.db_url)
        app.state.user = app.state.ledger.user
    return app
