"""The job's journal: `journal.jsonl` in its run directory, the record of everything the job itself says.

The run directory is the record and the ledger an index of it. The worker and the trainer append every event and
state change here first (one JSON line, numbered, fsync'ed), then deliver it to the ledger (hpcft.ledger.deliver),
at once when the database answers and later when it does not: a database restart, a failover or a network blip
never stops training and loses nothing. `hpcft sync` takes what a job wrote during an outage (its true end state,
end time and cause), and `hpcft admin rebuild` makes a lost ledger's jobs and events again from their run
directories.

    {"seq": 7, "ts": "2026-12-06T02:40:11.532+00:00", "op": "event", "kind": "checkpoint",
     "message": "checkpoint at step 200 (steps)", "data": {"step": 200}, "attempt": 1}
    {"seq": 8, "ts": "...", "op": "state", "to": "success", "reason": "trainer finished", "cause": null,
     "source": "hpcft", "fields": {}, "attempt": 1}

`seq` counts from 1 and never repeats within a run directory (appenders take an exclusive flock on the file and read
its last number), so the ledger's `jobs.journal_seq` says exactly how far it has taken the journal. A line torn by a
crash in the middle of a write is skipped, and the next append starts on a line of its own.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

JOURNAL_FILE = "journal.jsonl"
TAIL_BYTES = 65536  # the last record is found in the file's tail (a record is a few hundred bytes)


def journal_path(run_dir: os.PathLike) -> Path:
    return Path(run_dir) / JOURNAL_FILE


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _parse(line: bytes) -> Dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:  # a line torn by a crash mid-write
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None


def _tail_seq(fd: int) -> tuple:
    """(the last complete record's seq, whether the file ends with a newline) from the file's tail."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, True
    start = max(0, size - TAIL_BYTES)
    chunk = os.pread(fd, size - start, start)
    for line in reversed(chunk.splitlines()):
        rec = _parse(line)
        if rec is not None:
            return rec["seq"], chunk.endswith(b"\n")
    if start > 0:  # nothing parsable in the tail: read it all (never in practice)
        return last_seq_of(read_all(fd)), chunk.endswith(b"\n")
    return 0, chunk.endswith(b"\n")


def read_all(fd: int) -> List[Dict[str, Any]]:
    size = os.fstat(fd).st_size
    return [r for r in (_parse(x) for x in os.pread(fd, size, 0).splitlines()) if r is not None]


def last_seq_of(records: List[Dict[str, Any]]) -> int:
    return max((r["seq"] for r in records), default=0)


def append(run_dir: os.PathLike, op: str, **fields: Any) -> int:
    """Append one record (op "event" or "state") and fsync it; returns its seq. OSError (a full disk, a run
    directory gone) is the caller's to handle: the ledger is then written directly."""
    fd = os.open(journal_path(run_dir), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        seq, clean = _tail_seq(fd)
        rec = {"seq": seq + 1, "ts": fields.pop("ts", None) or now_iso(), "op": op, **fields}
        line = json.dumps(rec, separators=(",", ":"), default=str) + "\n"
        os.write(fd, (line if clean else "\n" + line).encode())
        os.fsync(fd)
        return seq + 1
    finally:
        os.close(fd)  # closing releases the flock


def last_seq(run_dir: os.PathLike) -> int:
    """The newest record's seq (0 when there is no journal): a stat and one read of the tail."""
    try:
        fd = os.open(journal_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return _tail_seq(fd)[0]
    finally:
        os.close(fd)


def read(run_dir: os.PathLike, after: int = 0) -> List[Dict[str, Any]]:
    """The records numbered above `after`, in order ([] when there is no journal)."""
    try:
        fd = os.open(journal_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return sorted((r for r in read_all(fd) if r["seq"] > after), key=lambda r: r["seq"])
    finally:
        os.close(fd)


def parse_ts(value: Any) -> datetime | None:
    """A record's time in UTC (a time without an offset is taken as UTC), or None when it has none."""
    try:
        dt = datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
