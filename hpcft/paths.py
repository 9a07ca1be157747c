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


def runs_root() -> Path:
    return Path(os.environ.get("HPCFT_RUNS", home() / "runs")).expanduser()
