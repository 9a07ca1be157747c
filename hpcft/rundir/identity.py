"""Whose run directory this is: `job.json`, the job's identity, written at submit before anything else of the job.

    {"uuid": "5b0c...", "job_id": 12, "owner": "alice", "created": "2025-05-01T09:30:00+00:00",
     "ledger": "sqlite:////home/alice/.hpcft/ledger.db"}

`uuid` is the ledger row's `jobs.uuid` (unique across ledgers); `job_id` the row's integer id, which two ledgers
sharing a runs root, or a ledger removed and made again, both hand out. hpcft.jobs.submit never reuses a run
directory holding another job's identity, the trainer core (hpcft.train.checkpoint.resolve_resume) resumes only
checkpoints of its own job, and opening a SQLite ledger whose file is gone while run directories name it is refused
(hpcft.ledger.guard). `ledger` is the ledger's URL without any password (hpcft.paths.public_db_url).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

IDENTITY_FILE = "job.json"


def identity_of(job: Any, ledger_url: str) -> Dict[str, Any]:
    """The identity of a ledger job (any object with uuid, id, owner, created_at)."""
    from hpcft.paths import public_db_url

    created = getattr(job, "created_at", None) or datetime.now(timezone.utc)
    if created.tzinfo is None:  # SQLite gives back the stored UTC time without its offset
        created = created.replace(tzinfo=timezone.utc)
    return {"uuid": job.uuid, "job_id": int(job.id), "owner": job.owner, "created": created.isoformat(),
            "ledger": public_db_url(ledger_url)}


def write_identity(run_dir: os.PathLike, identity: Dict[str, Any]) -> Path:
    """job.json in `run_dir`, written through a temp file and a rename (never half written)."""
    path = Path(run_dir) / IDENTITY_FILE
    tmp = path.with_name(IDENTITY_FILE + ".tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_identity(run_dir: os.PathLike) -> Optional[Dict[str, Any]]:
    """The identity in `run_dir`, or None when it has none (a directory made by an older hpcft, or not a run
    directory at all; an unreadable or malformed job.json counts as none)."""
    try:
        data = json.loads((Path(run_dir) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("uuid") else None


def foreign_identity(run_dir: os.PathLike, uuid: Optional[str]) -> Optional[Dict[str, Any]]:
    """The identity in `run_dir` when it is another job's (not `uuid`), else None."""
    found = read_identity(run_dir)
    return found if found is not None and found.get("uuid") != uuid else None


def identities(runs_root: os.PathLike) -> Iterator[Dict[str, Any]]:
    """The identities of the run directories directly under `runs_root` (none when it does not exist)."""
    try:
        entries = list(os.scandir(runs_root))
    except OSError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            found = read_identity(e.path)
            if found is not None:
                yield found
