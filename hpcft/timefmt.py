"""Slurm time strings <-> seconds. Slurm accepts: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""

from __future__ import annotations

import re

_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_duration(value: object) -> int:
    """Seconds in a Slurm time limit (an int counts as minutes, like sbatch --time). ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"duration must be positive: {value!r}")
        return int(value * 60)
    s = str(value).strip()
    m = _RE.match(s)
    if not m:
        raise ValueError(f"not a Slurm time (use HH:MM:SS, D-HH:MM:SS or minutes): {value!r}")
    days, a, b, c = m.groups()
    a, b, c = int(a), (int(b) if b else None), (int(c) if c else None)
    if days is not None:  # D-H, D-H:M, D-H:M:S
        total = int(days) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        total = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        total = a * 60 + b
    else:  # M
        total = a * 60
    if total <= 0:
        raise ValueError(f"duration must be positive: {value!r}")
    return total


def format_duration(seconds: int) -> str:
    """Seconds -> Slurm's [D-]HH:MM:SS."""
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    hms = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{d}-{hms}" if d else hms


def local_time(dt) -> str:
    """A ledger time as this machine's local time (`hpcft list`/`show` and the web console); a naive datetime is the
    ledger's UTC (SQLite gives it back without its offset); "-" for none."""
    from datetime import timezone

    if not dt:
        return "-"
    return (dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def elapsed(started, finished) -> str:
    """A job's run time as [D-]HH:MM:SS from its start to its end (or now, while it runs); "-" before it started."""
    from datetime import datetime, timezone

    def utc(dt):  # SQLite gives back the stored UTC time without its offset
        return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt

    if not started:
        return "-"
    end = utc(finished) if finished else datetime.now(timezone.utc)
    return format_duration(max(0, int((end - utc(started)).total_seconds())))
