"""Read commands keep states honest: `hpcft list`, `show`, `top`, `curve` (and the web console, through
`refresh_states`) bring the acting user's live Slurm jobs up to date before they print them.

- Only when it matters: some job being read is a live Slurm job (queued/running with a Slurm id) of the acting user
  whose recorded state is older than `STALE_AFTER_S`. Otherwise nothing happens and nothing is imported beyond
  this module (`hpcft list` of ended or local jobs stays on the fast read path, without SQLAlchemy).
- Then ALL the acting user's live Slurm jobs are synced by `SlurmExecutor.sync`, the path `hpcft sync` takes: ONE
  batched sacct call, the same state mapping and causes, and an end recorded here notifies exactly as `sync` does.
- At most one refresh per `interval()` seconds (`HPCFT_STATE_REFRESH`, default `REFRESH_EVERY_S`; 0 turns it
  off), whoever runs a read command: a stamp file `$HPCFT_HOME/state-refresh.stamp`, claimed under a lock.
- Never fails the read: Slurm not answering (or the ledger refusing the write) gives `Refresh.stale`, one line the
  command prints beside what the ledger has.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, List, Optional, Sequence

from hpcft import paths
from hpcft.states import LIVE, State

REFRESH_EVERY_S = 10.0  # at most one refresh (one sacct call) per this many seconds per HPCFT_HOME
STALE_AFTER_S = 5.0  # a state recorded more recently than this is fresh enough to show as it is
STAMP = "state-refresh.stamp"


@dataclass
class Refresh:
    ran: bool = False  # sacct was asked
    changed: int = 0  # jobs whose state changed
    stale: Optional[str] = None  # the one line to print when the states could not be refreshed


def interval() -> float:
    """Seconds between two refreshes (`HPCFT_STATE_REFRESH`; 0 = never refresh on read)."""
    try:
        return max(0.0, float(os.environ.get("HPCFT_STATE_REFRESH", REFRESH_EVERY_S)))
    except ValueError:
        return REFRESH_EVERY_S


def _utc(dt: Optional[datetime]) -> Optional[datetime]:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt  # SQLite gives back naive UTC


def live_slurm(jobs: Sequence[Any], now: Optional[datetime] = None) -> List[Any]:
    """The jobs that a refresh could change: live, on Slurm, with a state recorded over STALE_AFTER_S ago."""
    now = now or datetime.now(timezone.utc)
    out = []
    for j in jobs:
        if not getattr(j, "slurm_job_id", None) or State(j.state) not in LIVE:
            continue
        seen = _utc(getattr(j, "updated_at", None))
        if seen is None or (now - seen).total_seconds() >= STALE_AFTER_S:
            out.append(j)
    return out


def _claim(every: float) -> bool:
    """Take the refresh slot: True when no refresh ran in the last `every` seconds (in any process)."""
    import fcntl

    stamp = paths.home() / STAMP
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(stamp, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True  # no place for a stamp: refresh unthrottled rather than show stale states
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # another process is claiming it right now
        try:
            last = float(os.read(fd, 64).decode() or 0)
        except ValueError:
            last = 0.0
        now = time.time()
        if 0 <= now - last < every:
            return False
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{now:.3f}".encode())
        return True
    finally:
        os.close(fd)  # releases the lock


def _guess_user() -> Optional[str]:
    """The acting user without opening the ledger (SQLite: as Ledger.user says); None where only the database
    can tell (PostgreSQL: the session role), then every owner passes this first check."""
    import getpass

    if paths.db_url().startswith("sqlite"):
        return os.environ.get("HPCFT_USER") or getpass.getuser()
    return None


def refresh_states(jobs: Sequence[Any], ledger=None) -> Refresh:
    """Before showing `jobs` (ledger rows or fast-read rows): sync the acting user's live Slurm jobs when one of
    `jobs` is one with a state older than STALE_AFTER_S and no refresh ran in the last `interval()` seconds.
    `ledger`: an open Ledger, if the caller has one. Never raises for Slurm or the ledger: see Refresh.stale."""
    every = interval()
    candidates = live_slurm(jobs) if every > 0 else []
    if not candidates:
        return Refresh()
    user = ledger.user if ledger is not None else _guess_user()
    if user is not None and not any(j.owner == user for j in candidates):
        return Refresh()
    if not _claim(every):
        return Refresh()
    return _sync_mine(ledger)


def _sync_mine(ledger) -> Refresh:
    from hpcft.errors import HpcftError
    from hpcft.jobs.executors.slurm import SlurmExecutor

    try:
        if ledger is None:
            from hpcft.ledger.store import Ledger

            ledger = Ledger()
        mine = [j for j in ledger.live_jobs(executor="slurm") if j.owner == ledger.user and j.slurm_job_id]
        return Refresh(True, SlurmExecutor().sync(ledger, mine) if mine else 0)
    except (HpcftError, OSError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Refresh(True, 0, f"(states may be stale: could not ask Slurm: {why})")
