"""`hpcft list` without SQLAlchemy: the job search (hpcft.ledger.query, the same SQL `Ledger.search` runs) through the
database driver directly, for the two ledgers users list most: SQLite (sqlite3) and PostgreSQL (psycopg).

Importing SQLAlchemy and SQLModel costs more than half a second, ten times the query itself at 10,000 jobs
(BENCHMARKS.md, bench_control). This module only reads. It answers None whenever it cannot answer exactly what the
full ledger would: another database, a ledger file that does not exist yet (one that is gone while run
directories name it is refused: hpcft.ledger.guard), a schema that is not at the newest
migration (opening the full ledger upgrades it), a locked or unreachable database. The caller then opens the full
`Ledger`, which creates, migrates, retries and reports errors as always. On PostgreSQL the rows a user sees are
decided by the database (row-level security), exactly as through the full ledger.

Rows come back as simple objects with the fields of `hpcft list --json` (hpcft.ledger.jobjson.FIELDS, without the
config), times as aware UTC datetimes.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, List, Optional

from hpcft import paths
from hpcft.ledger import query as jobquery
from hpcft.ledger.query import JobFilter

TIMES = ("created_at", "submitted_at", "started_at", "finished_at", "updated_at")


def _columns() -> List[str]:
    from hpcft.ledger.jobjson import FIELDS

    return [name for name, _, _ in FIELDS[1:]]


def _utc(value: Any) -> Optional[datetime]:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite: "YYYY-MM-DD HH:MM:SS.ffffff", UTC
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _rows(cols: List[str], records) -> List[SimpleNamespace]:
    out = []
    for rec in records:
        row = dict(zip(cols, rec, strict=True))
        for t in TIMES:
            row[t] = _utc(row[t])
        if isinstance(row["resources"], (str, bytes)):
            row["resources"] = json.loads(row["resources"] or "{}")
        out.append(SimpleNamespace(**row))
    return out


def _schema_ok(version_rows) -> bool:
    from hpcft.ledger.migrations import head

    return sorted(r[0] for r in version_rows) == [head()]


def _sqlite(url: str, where: JobFilter) -> Optional[List[SimpleNamespace]]:
    import sqlite3
    from urllib.parse import quote

    path = url[len("sqlite:///"):]
    if not url.startswith("sqlite:///") or not path or path == ":memory:" or "?" in path:
        return None
    from hpcft.ledger.guard import check_ledger_file

    check_ledger_file(url)  # gone while run directories name it: refused here too, never an empty answer
    try:  # mode=ro: never creates the file; the full ledger does that
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        if not _schema_ok(conn.execute("SELECT version_num FROM alembic_version").fetchall()):
            return None
        cols = _columns()
        sql, params = jobquery.build(where, dialect="sqlite", columns=cols)
        return _rows(cols, conn.execute(sql, params).fetchall())
    except sqlite3.Error:  # no tables yet, locked past the timeout, ...: the full ledger knows what to do
        return None
    finally:
        conn.close()


def _postgres(url: str, where: JobFilter) -> Optional[List[SimpleNamespace]]:
    try:
        import psycopg
    except ImportError:
        return None
    conninfo = re.sub(r"^(postgresql|postgres)(\+psycopg)?://", "postgresql://", url)
    try:
        conn = psycopg.connect(conninfo, connect_timeout=10)
    except psycopg.OperationalError as e:  # the full ledger could not connect either: say so after one try
        from hpcft.ledger.store import unreachable

        down = unreachable(e, url)
        if down is not None:
            raise down from None
        return None  # another refusal (authentication, ...): the full ledger says it its own way
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            if not _schema_ok(cur.fetchall()):
                return None
            cols = _columns()
            sql, params = jobquery.build(where, dialect="postgresql", columns=cols)
            cur.execute(re.sub(r":(p\d+)\b", r"%(\1)s", sql), params)
            return _rows(cols, cur.fetchall())
    except psycopg.Error:
        return None


def search(filter: Optional[JobFilter] = None, **filters: Any) -> Optional[List[SimpleNamespace]]:
    """Ledger.search(filter, **filters) answered without SQLAlchemy, or None: then ask the full Ledger."""
    where = JobFilter.of(filter, **filters)
    url = paths.db_url()
    if url.startswith("sqlite"):
        return _sqlite(url, where)
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return _postgres(url, where)
    return None
