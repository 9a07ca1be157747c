"""Where hpcft finds its shipped files and keeps its own state.

- `HPCFT_HOME` (default `~/.hpcft`): the ledger (`ledger.db`) and default run directories (`runs/`).
- `HPCFT_DB_URL`: any SQLAlchemy URL for the ledger (default `sqlite:///$HPCFT_HOME/ledger.db`).
- `conf/` and `sbatch_templates/` come from the source tree, or from inside the wheel (`hpcft/_conf`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

PKG = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    inside = PKG / f"_{name}"  # wheel install: force-included into the package
    if inside.is_dir():
        return inside
    return PKG.parent / name  # source tree / editable install


def conf_dir() -> Path:
    return _shipped("conf")


def templates_dir() -> Path:
    return _shipped("sbatch_templates")


def asset(rel: str) -> str:
    """Absolute path of a file shipped in `hpcft/assets/` (used by the `${hpcft_asset:...}` resolver)."""
    return str(PKG / "assets" / rel)


def home() -> Path:
    return Path(os.environ.get("HPCFT_HOME", Path.home() / ".hpcft")).expanduser()


def db_url() -> str:
    return os.environ.get("HPCFT_DB_URL") or f"sqlite:///{home() / 'ledger.db'}"


def public_db_url(url: str) -> str:
    """The ledger URL without any password (user:PASSWORD@ and ?password=...), for everything written to disk or
    handed to a job (submitit's pickle, sbatch scripts). Jobs authenticate with PGPASSWORD or ~/.pgpass instead.
    A URL without a password comes back unchanged."""
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)
    secret_keys = [k for k in u.query if k.lower() in ("password", "passwd", "sslpassword")]
    if u.password is None and not secret_keys:
        return url
    bare = URL.create(u.drivername, username=u.username, password=None, host=u.host, port=u.port,
                      database=u.database, query={k: v for k, v in u.query.items() if k not in secret_keys})
    return bare.render_as_string(hide_password=False)  # (URL.set(password=None) would keep the password)


def runs_root() -> Path:
    return Path(os.environ.get("HPCFT_RUNS", home() / "runs")).expanduser()
