"""The job search as SQL text: one builder for `Ledger.search` (run through SQLAlchemy) and for `hpcft list`'s fast
read (hpcft.ledger.fastread: the DB-API driver directly, so that listing never imports SQLAlchemy).

Pure: a `JobFilter` (the one list of the search's keywords) in, `(sql, params)` out, with `:name` placeholders
(SQLAlchemy's text() and sqlite3 take them as they are; hpcft.ledger.fastread rewrites them for psycopg). Every filter
value is a bound parameter, never SQL text; column names and sort directions come only from the fixed tables below.

Matching rules (the one place they are written):
- name / output: case-insensitive substring; `%`, `_` and `!` in the value are taken literally.
- resources: `key=value` tokens (a string is split on spaces), each equal to a whole token of the job's
  resource_spec, case-insensitive: gpus=8 matches `gpus=8`, never `gpus=80`.
- state / owner / project / executor / ids: equality.
- since / until: created at or after / before; a naive datetime is UTC. The ledger stores UTC: on SQLite as text
  "YYYY-MM-DD HH:MM:SS.ffffff" (how SQLAlchemy writes it), on PostgreSQL as `timestamp with time zone`.
- sort: id, created, name, state, user; `-` prefix for descending; ties newest (highest id) first.
- limit: the sort and the cut run on the ids alone, then those rows are read (the sort never carries the JSON
  columns); the ids come from a derived table because MariaDB refuses LIMIT inside an IN subquery.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Sequence, Tuple

from hpcft.errors import HpcftError
from hpcft.states import State

SORT_COLUMNS = {"id": "id", "created": "created_at", "name": "name", "state": "state", "user": "owner"}
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _like(value: str) -> str:
    """A LIKE pattern matching `value` literally (escape character `!`)."""
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def time_param(dt: datetime, dialect: str) -> Any:
    """A datetime as the ledger compares it: UTC; on SQLite the text SQLAlchemy stores, elsewhere an aware datetime
    (the columns are `timestamp with time zone` on PostgreSQL)."""
    utc = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return utc.strftime(SQLITE_TIME) if dialect == "sqlite" else utc


def order_by(sort: Sequence[str]) -> str:
    parts = []
    for key in sort:
        col = SORT_COLUMNS.get(key.lstrip("-"))
        if col is None:
            raise ValueError(f"sort key {key!r}: use one of {', '.join(SORT_COLUMNS)} (prefix - for descending)")
        parts.append(f"{col} {'DESC' if key.startswith('-') else 'ASC'}")
    return ", ".join([*parts, "id DESC"])


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a search selects, in which order, how many: `Ledger.search`, hpcft.ledger.fastread and
    `hpcft list` all take one (the matching rules: this module's docstring)."""

    ids: Optional[Sequence[int]] = None
    name: Optional[str] = None
    state: Optional[Sequence[str]] = None
    owner: Optional[str] = None
    project: Optional[str] = None
    resources: Optional[str | Sequence[str]] = None
    output: Optional[str] = None
    executor: Optional[str] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None
    sort: Sequence[str] = ("-created",)
    limit: Optional[int] = None
    offset: int = 0  # skip this many of the sorted jobs first (with limit: a page of the web console's list)

    @classmethod
    def of(cls, filter: Optional[JobFilter] = None, **fields: Any) -> JobFilter:
        """`filter` (default: match every job) with `fields` set; an unknown keyword raises TypeError."""
        return replace(filter, **fields) if filter is not None else cls(**fields)


def build(f: JobFilter, *, dialect: str, columns: Sequence[str] = ("*",)) -> Tuple[str, Dict[str, Any]]:
    """(SQL, params) selecting `columns` of the jobs `f` matches, in its order. `dialect`: sqlite, postgresql, mysql,
    mariadb (SQLAlchemy's dialect names)."""
    where, params = [], {}

    def bind(value: Any) -> str:
        key = f"p{len(params)}"
        params[key] = value
        return f":{key}"

    if f.ids:
        where.append(f"id IN ({', '.join(bind(int(i)) for i in f.ids)})")
    if f.name:
        where.append(f"lower(name) LIKE lower({bind('%' + _like(f.name) + '%')}) ESCAPE '!'")
    if f.state:
        where.append(f"state IN ({', '.join(bind(State(s).value) for s in f.state)})")
    if f.owner:
        where.append(f"owner = {bind(f.owner)}")
    if f.project:
        where.append(f"project = {bind(f.project)}")
    spaced = ("CONCAT(' ', resource_spec, ' ')" if dialect in ("mysql", "mariadb")  # || is OR there
              else "' ' || resource_spec || ' '")
    for tok in (f.resources.split() if isinstance(f.resources, str) else f.resources or ()):
        where.append(f"lower({spaced}) LIKE lower({bind('% ' + _like(tok) + ' %')}) ESCAPE '!'")
    if f.output:
        where.append(f"lower(output_dir) LIKE lower({bind('%' + _like(f.output) + '%')}) ESCAPE '!'")
    if f.executor:
        where.append(f"executor = {bind(f.executor)}")
    if f.since is not None:
        where.append(f"created_at >= {bind(time_param(f.since, dialect))}")
    if f.until is not None:
        where.append(f"created_at < {bind(time_param(f.until, dialect))}")
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    order = order_by(f.sort)
    cols = ", ".join(columns)
    if f.limit:
        skip = f" OFFSET {int(f.offset)}" if f.offset else ""
        top = f"SELECT id FROM jobs{cond} ORDER BY {order} LIMIT {int(f.limit)}{skip}"
        return f"SELECT {cols} FROM jobs WHERE id IN (SELECT id FROM ({top}) AS top_ids) ORDER BY {order}", params
    return f"SELECT {cols} FROM jobs{cond} ORDER BY {order}", params


# the keys of a resource spec (hpcft.ledger.record.resource_spec) a search may name
RESOURCE_KEYS = ("nodes", "gpus", "tasks", "cpus", "mem", "time", "partition", "qos", "priority", "account",
                 "nodelist", "reservation", "constraint")
_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: Optional[str], option: str) -> Optional[datetime]:
    """--since/--until: an ISO date or date-time (local time unless it has an offset) or a time ago (2h, 3d)."""
    from datetime import timedelta

    if text is None or not str(text).strip():
        return None
    t = text.strip()
    if t[:-1].isdigit() and t[-1:].lower() in _AGO:
        return datetime.now(timezone.utc) - timedelta(seconds=int(t[:-1]) * _AGO[t[-1].lower()])
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise HpcftError(f"{option} {text}: not a date or a time ago; e.g. {option} 2025-05-01, "
                         f"{option} 2025-05-01T09:30 or {option} 3d (also s, m, h, w)") from None
    return dt if dt.tzinfo else dt.astimezone()  # naive = this machine's local time


def from_options(*, state: Sequence[str] = (), resources: Sequence[str] = (), sort: Sequence[str] = ("-created",),
                 since: Optional[str] = None, until: Optional[str] = None, **fields: Any) -> JobFilter:
    """The JobFilter of `hpcft list`'s options (and the web console's search form): states, `key=value` resource
    tokens and sort keys checked, times parsed; HpcftError (one line, the option's name) for a bad one."""
    for s in state or []:
        if s not in State.__members__:
            raise HpcftError(f"--state {s}: unknown state; use one of {', '.join(State.__members__)}")
    tokens = [t for r in resources or [] for t in r.split()]
    for t in tokens:
        if t.partition("=")[0].lower() not in RESOURCE_KEYS or not t.partition("=")[2]:
            raise HpcftError(f"--resources {t}: expected key=value with a key of {', '.join(RESOURCE_KEYS)}; "
                             "e.g. --resources gpus=8")
    keys = [k.strip() for s in sort for k in s.split(",") if k.strip()]
    for k in keys:
        if k.lstrip("-") not in SORT_COLUMNS:
            raise HpcftError(f"--sort {k}: unknown key; use one of {', '.join(SORT_COLUMNS)} (- prefix: descending)")
    return JobFilter(state=list(state or []) or None, resources=tokens, sort=keys or ("-created",),
                     since=parse_when(since, "--since"), until=parse_when(until, "--until"), **fields)
