"""A missing SQLite ledger is loud: when the ledger file is gone but run directories under the runs root say they
were recorded in it (their `job.json`, hpcft.rundir.identity), opening the ledger is refused in one line, instead of
silently starting an empty one (whose job 1 would then meet the old job 1's run directory). A genuinely first use
(no run directory names that file) creates the ledger as always. Light: no SQLAlchemy, so the fast read path
(hpcft.ledger.fastread) and the full ledger (hpcft.ledger.store) both check it.
"""

from __future__ import annotations

import os
from typing import Optional

from hpcft import paths
from hpcft.errors import HpcftError


class MissingLedger(HpcftError):
    """The ledger file is gone while run directories recorded in it remain."""


def sqlite_file(url: str) -> Optional[str]:
    """The absolute path of a SQLite ledger file, or None (another database, in memory, a URI with options)."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:" or path.startswith("file:") or "?" in path:
        return None
    return os.path.abspath(os.path.expanduser(path))


def check_ledger_file(url: str) -> None:
    """Raise MissingLedger when `url` is a SQLite file that does not exist and run directories name it."""
    path = sqlite_file(url)
    if path is None or os.path.exists(path):
        return
    from hpcft.rundir.identity import identities

    root = paths.runs_root()
    n = sum(1 for ident in identities(root) if sqlite_file(str(ident.get("ledger") or "")) == path)
    if n:
        raise MissingLedger(
            f"the ledger {path} is missing, but {n} run director{'y' if n == 1 else 'ies'} under {root} "
            f"{'was' if n == 1 else 'were'} recorded in it: restore the file (from a backup), or point HPCFT_DB_URL at "
            "the ledger they were recorded in (HPCFT_DB_URL=sqlite:////path/to/ledger.db), or make it again from "
            "them with `hpcft admin rebuild`; no new empty ledger was created")
