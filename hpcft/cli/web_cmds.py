"""`hpcft ui`: the web console (hpcft.web). One user's console by default (like Jupyter or TensorBoard on a login
node): 127.0.0.1 or a Unix socket, a random token in the printed URL, the user's own ledger. `--team`: the team's
console behind a reverse proxy that authenticates people and names them in a header."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hpcft.cli.common import app
from hpcft.errors import HpcftError


@app.command()
def ui(port: int = typer.Option(0, "--port", help="TCP port on 127.0.0.1 (default: a free one)"),
       socket_path: Optional[Path] = typer.Option(None, "--socket", help="serve on this Unix socket (mode 0600) "
                                                  "instead of TCP"),
       team: bool = typer.Option(False, "--team", help="the team's console behind an authenticating reverse proxy"),
       trusted_proxy: List[str] = typer.Option([], "--trusted-proxy", help="--team: the proxy's address (repeat "
                                               "for several); a user header from any other address is refused"),
       user_header: str = typer.Option("X-Remote-User", "--user-header", help="--team: the header naming the user"),
       bind: Optional[str] = typer.Option(None, "--bind", help="--team: HOST:PORT to listen on (default "
                                          "127.0.0.1:8080)"),
       access_log: bool = typer.Option(False, "--access-log", help="print one line per request on stderr: method, "
                                       "path (never the query, which may hold the token), status, user agent")
       ) -> None:
    """Serve the web console: jobs, create/clone, job pages with metrics, monitoring, logs; models.

    Prints http://127.0.0.1:PORT/?token=...; every request without that token is refused (a cookie after the first
    visit), so another user on this machine who reaches the port gets nothing. Ctrl-C stops it."""
    import secrets
    import socket as socketlib

    import uvicorn

    from hpcft.web.app import create_app

    if team:
        web = create_app(mode="team", trusted_proxies=tuple(trusted_proxy), user_header=user_header)
        host, _, p = (bind or "127.0.0.1:8080").rpartition(":")
        if not p.isdigit():
            raise HpcftError(f"--bind {bind}: expected HOST:PORT, e.g. --bind 127.0.0.1:8080")
        sock = _tcp(host or "127.0.0.1", int(p))
        typer.echo(f"hpcft team console on http://{host or '127.0.0.1'}:{p}/ (behind the proxy at "
                   f"{', '.join(trusted_proxy)}; user header {user_header})")
    else:
        if trusted_proxy or bind:
            raise HpcftError("--trusted-proxy and --bind are for --team; one user's console binds 127.0.0.1 "
                             "(--port) or a Unix socket (--socket)")
        token = secrets.token_urlsafe(32)
        web = create_app(mode="user", token=token)
        if socket_path is not None:
            sock = _unix(socket_path)
            typer.echo(f"hpcft console on unix:{socket_path} ; open /?token={token} through it "
                       f"(e.g. ssh -L 8080:{socket_path} ... then http://127.0.0.1:8080/?token={token})")
        else:
            sock = _tcp("127.0.0.1", port)
            typer.echo(f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}")
    if access_log:
        web = _with_access_log(web)
    server = _server_class(uvicorn)(uvicorn.Config(web, log_level="warning", access_log=False, proxy_headers=False))
    try:
        server.run(sockets=[sock])
    finally:
        if socket_path is not None and sock.family == socketlib.AF_UNIX:
            socket_path.unlink(missing_ok=True)


def _with_access_log(web):
    """The app, printing `METHOD PATH STATUS "USER-AGENT"` on stderr once each HTTP request is answered. uvicorn's own
    access log would print the query (the first visit's carries the token) and not the user agent."""
    import sys

    async def logged(scope, receive, send):
        if scope["type"] != "http":
            return await web(scope, receive, send)
        status = ["-"]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await web(scope, receive, send_status)
        finally:
            path = (scope.get("raw_path") or scope["path"].encode()).partition(b"?")[0].decode("latin-1")  # %-encoded
            agent = dict(scope["headers"]).get(b"user-agent", b"-").decode("latin-1")
            agent = "".join(c if c.isprintable() and c != '"' else "?" for c in agent)
            print(f'{scope["method"]} {path} {status[0]} "{agent}"', file=sys.stderr, flush=True)

    return logged


def _server_class(uvicorn):
    """uvicorn's Server, ending on SIGINT/SIGTERM without raising the signal again afterwards (uvicorn does, which
    would kill the process before the Unix socket is removed)."""
    import contextlib
    import signal

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return Server


def _tcp(host: str, port: int):
    import socket

    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        raise HpcftError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    s.listen(128)
    return s


def _unix(path: Path):
    import os
    import socket

    if path.exists():
        if not path.is_socket():
            raise HpcftError(f"--socket {path}: exists and is not a socket; choose another path")
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is the user's alone (0600) from the moment it exists
    try:
        s.bind(str(path))
    finally:
        os.umask(old)
    s.listen(128)
    return s
