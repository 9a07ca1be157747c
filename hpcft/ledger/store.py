"""The job ledger: every job and an append-only history of its events (SQLModel on any SQLAlchemy URL).

SQLite (the default) is made safe for many processes at once (CLI, running jobs, cron `sync`): WAL journal,
a busy timeout, writes in short `BEGIN IMMEDIATE` transactions, and retries when the database is busy.
State changes go through `Ledger.transition`, which applies `hpcft.states.can_transition` atomically and records
a `state` event (with a machine-readable `cause` when one is known: `Ledger.causes`). A new attempt of an ended job
is taken with `Ledger.claim`: one compare-and-set UPDATE, so that of many racing `hpcft retry` processes exactly one
wins and submits.
"""

from __future__ import annotations

import copy
import getpass
import os
import re
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Dict, Iterator, List, Optional, Sequence

from sqlalchemy import JSON, Column, event as sa_event, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from hpcft import paths
from hpcft.ledger import query as jobquery
from hpcft.ledger import migrations
from hpcft.ledger.guard import check_ledger_file
from hpcft.ledger.query import JobFilter
from hpcft.ledger.rows import update_row, utcnow
from hpcft.errors import LedgerUnreachable, NotFound, StateError
from hpcft.states import State, can_transition, is_terminal


def current_user() -> str:
    """The login name; `HPCFT_USER` is honoured only for a single-user SQLite ledger (see Ledger.user)."""
    if os.environ.get("HPCFT_USER") and paths.db_url().startswith("sqlite"):
        return os.environ["HPCFT_USER"]
    return getpass.getuser()


def new_uuid() -> str:
    import uuid

    return str(uuid.uuid4())


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: Optional[int] = Field(default=None, primary_key=True)
    # the job's identity (UUID4, given at submit; 0005): written into its run directory (hpcft.rundir.identity) and its
    # checkpoints, so that another ledger's job with the same integer id never takes them (None: made before 0005)
    uuid: Optional[str] = Field(default_factory=new_uuid, index=True, unique=True)
    name: str = Field(index=True)
    description: str = ""
    owner: str = Field(index=True)
    project: str = Field(default="default", index=True)
    method: str = ""
    state: str = Field(default=State.queued.value, index=True)
    state_reason: Optional[str] = None
    executor: str = "local"  # local | slurm
    config: Dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    resources: Dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    resource_spec: str = Field(default="", index=True)  # e.g. "1x1 cpu1 gpu0 01:00:00 local"
    output_dir: str = Field(default="", index=True)
    # "123" or "123_4" for an array task; one live row per Slurm job (migration 0006)
    slurm_job_id: Optional[str] = Field(default=None, index=True)
    array_job_id: Optional[str] = Field(default=None, index=True)
    array_task_id: Optional[int] = None
    pid: Optional[int] = None  # local executor: the supervisor's pid (leader of its process group)
    # the last record of the job's journal (hpcft.rundir.journal) the ledger has applied (0007; hpcft.ledger.deliver)
    journal_seq: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    attempt: int = 1
    parent_id: Optional[int] = Field(default=None, index=True)  # the job this one was cloned/derived from
    # what the other members of the job's project may do with it: none | ro (read) | rw (read and change);
    # hpcft.ledger.access has the rules, and on PostgreSQL the database enforces them (row-level security, `hpcft admin init`)
    access: str = Field(default="none", sa_column_kwargs={"server_default": "none"})
    created_at: datetime = Field(default_factory=utcnow, index=True)  # `hpcft list` sorts by it (0004)
    submitted_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    updated_at: datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    __tablename__ = "events"

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    ts: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(index=True)  # submitted | started | checkpoint | finished | state | stop | extend | ...
    message: str = ""
    attempt: int = 1
    data: Dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Project(SQLModel, table=True):
    """A project = a Slurm account; its members may see the jobs shared with it (`hpcft admin sync-projects`)."""

    __tablename__ = "projects"

    name: str = Field(primary_key=True)


class ProjectMember(SQLModel, table=True):
    __tablename__ = "project_members"

    project: str = Field(primary_key=True, foreign_key="projects.name")
    username: str = Field(primary_key=True, index=True)


class Setting(SQLModel, table=True):
    """Site settings an administrator sets (`sharing`: on | off)."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True)
    value: str = ""


class Admin(SQLModel, table=True):
    """Ledger administrators: they see and may change every job (`hpcft admin grant`)."""

    __tablename__ = "admins"

    username: str = Field(primary_key=True)


from hpcft.ledger.assets import ModelAsset  # noqa: E402,F401  (the model registry's table: hpcft.registry)

_ENGINES: Dict[str, Any] = {}


def engine_url(url: str) -> str:
    """The SQLAlchemy URL to connect with: a bare `postgresql://` / `postgres://` URL (libpq style) gets the psycopg
    (3) driver that hpcft installs; every other URL is used as given."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


# A database host that stops answering (a network partition, a frozen server) must not hold a caller forever:
# TCP's own connect timeout is about 2 minutes on Linux and an established connection waits for an answer without
# end. These bound the connect, and find a dead peer of an open connection within about a minute. A value given in
# the URL (`?connect_timeout=3`) wins. A running job's worker bounds every call besides (hpcft.ledger.courier).
NETWORK_TIMEOUTS = {
    "postgresql": {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                   "keepalives_count": 3, "tcp_user_timeout": 60000},
    "mysql": {"connect_timeout": 10, "read_timeout": 300, "write_timeout": 300},
}


def network_timeouts(url: str) -> Dict[str, Any]:
    """connect_args for a server URL: NETWORK_TIMEOUTS of its dialect, less those the URL's query sets."""
    from sqlalchemy.engine import make_url

    u = make_url(engine_url(url))
    dialect = "mysql" if u.get_backend_name() in ("mysql", "mariadb") else u.get_backend_name()
    if dialect == "mysql" and u.get_driver_name() != "pymysql":
        return {}  # other MySQL drivers name these differently
    return {k: v for k, v in NETWORK_TIMEOUTS.get(dialect, {}).items() if k not in u.query}


# what drivers say when the server is not reached (psycopg/libpq, pymysql); never a refusal the server itself gave
# (a wrong password, a missing database: "FATAL: ...")
_UNREACHABLE = re.compile(r"timeout expired|timed out|connection refused|no such file or directory|"
                          r"server closed the connection|connection reset|connection is lost|the connection is closed|"
                          r"could not translate host name|network is unreachable|no route to host|"
                          r"can't connect to mysql server|lost connection to mysql server", re.IGNORECASE)


def unreachable(e: BaseException, url: Optional[str] = None) -> Optional[LedgerUnreachable]:
    """The one-line LedgerUnreachable for an error that says a database server could not be reached (refused, no
    answer within the connect timeout, a connection lost), or None for any other error (and for SQLite files)."""
    url = url or paths.db_url()
    if url.startswith("sqlite") or type(e).__name__ not in ("OperationalError", "InterfaceError",
                                                             "ConnectionTimeout"):
        return None
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if not _UNREACHABLE.search(first) or "FATAL:" in first:
        return None
    from sqlalchemy.engine import make_url

    shown = make_url(engine_url(url)).render_as_string(hide_password=True)
    return LedgerUnreachable(f"the ledger database does not answer ({shown}: {first}); check that it is up and "
                             f"reachable from here, then try again (running jobs go on: their run directories keep "
                             f"what they write)")


def _engines(url: str):
    """(reader, writer) engines for a URL, created once per process; the schema is brought to the newest migration
    (hpcft.ledger.migrations: one cheap query when it already is) before they are handed out."""
    if url in _ENGINES:
        return _ENGINES[url]
    if url.startswith("sqlite"):
        check_ledger_file(url)  # a ledger file that is gone while run directories name it: refused, not recreated
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])), exist_ok=True)

        def make(begin_sql: str):
            eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

            @sa_event.listens_for(eng, "connect")
            def _on_connect(dbapi_conn, _rec):  # take transaction control from pysqlite
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            @sa_event.listens_for(eng, "begin")
            def _on_begin(conn):
                conn.exec_driver_sql(begin_sql)

            return eng

        pair = (make("BEGIN"), make("BEGIN IMMEDIATE"))  # the writer's BEGIN IMMEDIATE also serialises migrations
    else:
        eng = create_engine(engine_url(url), pool_pre_ping=True, connect_args=network_timeouts(url))
        pair = (eng, eng)
    migrations.ensure_schema(*pair)
    _ENGINES[url] = pair
    return pair


def _retry(fn, tries: int = 8):
    for i in range(tries):
        try:
            return fn()
        except OperationalError as e:  # "database is locked" past the busy timeout, or a dropped connection
            if i == tries - 1 or not ("locked" in str(e) or "busy" in str(e) or "connection" in str(e)):
                raise
            time.sleep(min(2.0, 0.05 * 2**i))


def _acting_engine(engine, name: str):
    """`engine` (same pool) whose transactions act for `name`: a listener on this copy only (Ledger.as_user)."""
    eng = engine.execution_options(hpcft_acting_user=name)

    @sa_event.listens_for(eng, "begin")
    def _act(conn) -> None:
        conn.exec_driver_sql("SELECT set_config('hpcft.acting_user', %(n)s, true)", {"n": name})

    return eng


def _state_data(src: State, to: State, reason: Optional[str], source: str, cause: Optional[str]) -> Dict[str, Any]:
    data: Dict[str, Any] = {"from": src.value, "to": to.value, "reason": reason, "source": source}
    if cause is not None:
        data["cause"] = cause
    return data


def apply_transition(s: Session, job: Job, to: State, reason: Optional[str], *, source: str = "hpcft",
                     cause: Optional[str] = None, strict: bool = False, fields: Optional[Dict[str, Any]] = None,
                     at: Optional[datetime] = None, attempt: Optional[int] = None) -> bool:
    """Ledger.transition's rule on a row locked in session `s` (also hpcft.ledger.deliver's, for a state change a job
    wrote in its journal at time `at`): move `job` to `to` when the state machine allows it and add the `state`
    event. Same state: no-op. Returns True when the state changed."""
    src = State(job.state)
    if src == to:
        return False
    if not can_transition(src, to) or (is_terminal(src) and to == State.queued):
        # a new attempt of an ended job is only ever taken with `claim` (compare-and-set on state and
        # attempt): a late writer that read the job while it was live (a `sync` seeing Slurm requeue it
        # just as its worker recorded the end) must not resurrect it
        if strict:
            raise StateError(f"job {job.id} is {src}: cannot become {to}")
        return False
    now = at or utcnow()
    job.state = to.value
    job.state_reason = reason
    job.updated_at = utcnow()
    if to == State.running and job.started_at is None:
        job.started_at = now
    if is_terminal(to):
        job.finished_at = now
    for k, v in (fields or {}).items():
        setattr(job, k, v)
    s.add(job)
    msg = f"{src} -> {to}" + (f": {reason}" if reason else "")
    s.add(Event(job_id=job.id, kind="state", message=msg, attempt=attempt or job.attempt, ts=now,
                data=_state_data(src, to, reason, source, cause)))
    return True


class Ledger:
    def __init__(self, url: Optional[str] = None):
        self.url = url or paths.db_url()
        self._reader, self._writer = _engines(self.url)
        self._user: Optional[str] = None
        self._for_update = not self.url.startswith("sqlite")

    # ------------------------------------------------------------------------------------------ sessions
    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self._reader, expire_on_commit=False) as s:
            yield s

    def write(self, fn):
        """Run fn(session) in one short write transaction (retried when the database is busy)."""

        def once():
            with Session(self._writer, expire_on_commit=False) as s:
                out = fn(s)
                s.commit()
                return out

        return _retry(once)

    # ------------------------------------------------------------------------------------------ who
    @property
    def user(self) -> str:
        """Who is acting. PostgreSQL: the database role of this session (peer authentication makes it the Unix
        user; an environment variable cannot change it). SQLite: `HPCFT_USER` or the login name (a single-user
        ledger). Other databases: the login name."""
        if self._user is None:
            if self.url.startswith(("postgresql", "postgres")):
                with self._reader.connect() as c:
                    self._user = str(c.exec_driver_sql("SELECT session_user").scalar())
            elif self.url.startswith("sqlite"):
                self._user = os.environ.get("HPCFT_USER") or getpass.getuser()
            else:
                self._user = getpass.getuser()
        return self._user

    def as_user(self, name: str) -> "Ledger":
        """This ledger seen by `name` (the team console serving that user): every transaction of the view, reads
        and writes, begins with `SET LOCAL hpcft.acting_user`, on the same connection pool. The database honours it
        only from a console role (hpcft.ledger.team.console_role), so row-level security decides as in `name`'s own
        psql or CLI session; any other role stays itself. PostgreSQL only."""
        from hpcft.errors import HpcftError

        if not self.url.startswith(("postgresql", "postgres")):
            raise HpcftError(f"team mode needs the PostgreSQL ledger (HPCFT_DB_URL=postgresql://...), not "
                             f"{self.url.split(':')[0]}: row-level security is what makes each request its user's")
        if not name or len(name.encode()) > 63 or "\0" in name:
            raise HpcftError(f"user {name!r}: not a database role name (1 to 63 bytes)")
        view = copy.copy(self)
        view._reader = _acting_engine(self._reader, name)
        view._writer = view._reader if self._writer is self._reader else _acting_engine(self._writer, name)
        view._user = name
        view._owns_ledger = lambda s: False  # a console's connection never owns the tables, whoever it acts for
        return view

    def caller(self, name: Optional[str] = None):
        """The acting user (or the user `name`, e.g. a request's author) with their projects and administrator flag,
        as the database records them (hpcft.ledger.access.Caller)."""
        from hpcft.ledger.access import Caller

        me = name is None or name == self.user
        name = self.user if name is None else name
        with self.read() as s:
            admin = s.get(Admin, name) is not None or (me and self._owns_ledger(s))
            projects = frozenset(s.exec(select(ProjectMember.project).where(ProjectMember.username == name)).all())
        return Caller(name, admin, projects)

    def _owns_ledger(self, s: Session) -> bool:
        """PostgreSQL: the role that owns the tables (it bypasses row-level security) is an administrator."""
        if not self.url.startswith(("postgresql", "postgres")):
            return False
        owner = s.connection().exec_driver_sql("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                               "WHERE oid = 'public.jobs'::regclass").scalar()
        return owner == self.user

    def sharing(self) -> bool:
        """The administrator's switch: with sharing off every job is private to its owner (and administrators)."""
        with self.read() as s:
            row = s.get(Setting, "sharing")
        return row is None or row.value != "off"

    def set_setting(self, key: str, value: str) -> None:
        def fn(s: Session) -> None:
            row = s.get(Setting, key) or Setting(key=key)
            row.value = value
            s.add(row)

        self.write(fn)

    def set_projects(self, members: Dict[str, List[str]]) -> None:
        """Replace the project table with `members` ({project: [usernames]})."""
        def fn(s: Session) -> None:
            for m in s.exec(select(ProjectMember)).all():
                s.delete(m)
            s.flush()
            known = {p.name for p in s.exec(select(Project)).all()}
            for project in sorted(members):
                if project not in known:
                    s.add(Project(name=project))
            s.flush()
            for project, users in sorted(members.items()):
                for u in sorted(set(users)):
                    s.add(ProjectMember(project=project, username=u))

        self.write(fn)

    def projects(self) -> Dict[str, List[str]]:
        with self.read() as s:
            rows = s.exec(select(ProjectMember)).all()
        out: Dict[str, List[str]] = {}
        for r in rows:
            out.setdefault(r.project, []).append(r.username)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def set_admin(self, username: str, admin: bool = True) -> None:
        def fn(s: Session) -> None:
            row = s.get(Admin, username)
            if admin and row is None:
                s.add(Admin(username=username))
            elif not admin and row is not None:
                s.delete(row)

        self.write(fn)

    # ------------------------------------------------------------------------------------------ requests
    def request(self, job_id: int, action: str, by: str, **data: Any) -> str:
        """Record a request on another user's job (stop, extend, priority): the job's own worker, or an
        operator's `hpcft admin apply`, carries it out and records `request_done`. Returns the request id."""
        import uuid

        rid = uuid.uuid4().hex[:12]
        self.add_event(job_id, "request", f"{action} requested by {by}", request=rid, action=action, by=by, **data)
        return rid

    def open_requests(self, job_id: int, action: Optional[str] = None) -> List[Event]:
        """Requests on a job not yet carried out (oldest first)."""
        with self.read() as s:
            q = select(Event).where(Event.job_id == int(job_id), Event.kind.in_(["request", "request_done"]))  # type: ignore[attr-defined]
            evs = list(s.exec(q.order_by(Event.id)).all())  # type: ignore[arg-type]
        done = {(e.data or {}).get("request") for e in evs if e.kind == "request_done"}
        return [e for e in evs if e.kind == "request" and (e.data or {}).get("request") not in done
                and (action is None or (e.data or {}).get("action") == action)]

    def request_done(self, job_id: int, request: Event, outcome: str) -> None:
        self.add_event(job_id, "request_done", f"{(request.data or {}).get('action')} requested by "
                       f"{(request.data or {}).get('by')}: {outcome}", request=(request.data or {}).get("request"))

    # ------------------------------------------------------------------------------------------ jobs
    def create_job(self, **fields: Any) -> Job:
        fields.setdefault("owner", self.user)
        now = utcnow()
        fields.setdefault("submitted_at", now)

        def fn(s: Session) -> Job:
            job = Job(**fields)
            s.add(job)
            s.flush()
            s.add(Event(job_id=job.id, kind="created", message=f"job created in state {job.state}",
                        attempt=job.attempt))
            return job

        return self.write(fn)

    def get(self, job_id: int) -> Job:
        with self.read() as s:
            job = s.get(Job, int(job_id))
        if job is None:
            raise NotFound(f"job {job_id}: not in the ledger ({paths.public_db_url(self.url)}); see `hpcft list`")
        return job

    def update(self, job_id: int, **fields: Any) -> Job:
        return update_row(self, Job, job_id, f"job {job_id}", fields)

    def search(self, filter: Optional[JobFilter] = None, **filters: Any) -> List[Job]:
        """Jobs matching `filter` with `filters` (JobFilter's keywords: name=..., state=[...], limit=...) set, in its
        `sort` order (the matching rules: hpcft.ledger.query, the one query builder, which `hpcft list` also runs
        without SQLAlchemy through hpcft.ledger.fastread)."""
        from sqlalchemy import text

        sql, params = jobquery.build(JobFilter.of(filter, **filters), dialect=self._reader.dialect.name)
        with self.read() as s:
            return list(s.execute(select(Job).from_statement(text(sql).bindparams(**params))).scalars().all())

    def live_jobs(self, executor: Optional[str] = None) -> List[Job]:
        return self.search(state=[State.queued, State.running], executor=executor)

    # ------------------------------------------------------------------------------------------ events
    def add_event(self, job_id: int, kind: str, message: str = "", **data: Any) -> None:
        def fn(s: Session) -> None:
            job = s.get(Job, int(job_id))
            attempt = job.attempt if job else 1
            s.add(Event(job_id=int(job_id), kind=kind, message=message, attempt=attempt, data=data))

        self.write(fn)

    def events(self, job_id: int) -> List[Event]:
        with self.read() as s:
            q = select(Event).where(Event.job_id == int(job_id)).order_by(Event.id)  # type: ignore[arg-type]
            return list(s.exec(q).all())

    # ------------------------------------------------------------------------------------------ states
    def transition(
        self,
        job_id: int,
        to: State | str,
        reason: Optional[str] = None,
        *,
        source: str = "hpcft",
        strict: bool = False,
        cause: Optional[str] = None,
        **fields: Any,
    ) -> bool:
        """Move a job to `to` if the state machine allows it; record a `state` event. Same state: no-op.

        `cause` (hpcft.states: "node_fail", "oom", "exit:1", "user_stop", ...) is stored in the event's data for
        `causes()` / `hpcft retry`. Returns True when the state changed. A refused move returns False (or raises
        StateError if strict), so that racing writers (a job finishing while `sync` runs) settle on the first
        terminal state.
        """
        to = State(to)
        ended: List[Job] = []  # the row as this transition ended it (for hpcft.ledger.notify)

        def fn(s: Session) -> bool:
            q = select(Job).where(Job.id == int(job_id))
            if self._for_update:
                q = q.with_for_update()
            job = s.exec(q).first()
            if job is None:
                raise NotFound(f"job {job_id}: not in the ledger")
            changed = apply_transition(s, job, to, reason, source=source, cause=cause, strict=strict, fields=fields)
            ended[:] = [job] if changed and is_terminal(to) else []
            return changed

        changed = self.write(fn)
        if changed and ended:  # only the process whose transition recorded the end sends (exactly once)
            from hpcft.ledger.notify import job_ended

            job_ended(self, ended[0], cause)
        return changed

    def claim(
        self,
        job_id: int,
        expected_state: State | str,
        expected_attempt: int,
        reason: str,
        *,
        cause: Optional[str] = None,
        source: str = "hpcft",
        **fields: Any,
    ) -> bool:
        """Take a new attempt of an ended job: queued, attempt + 1, with a `state` event, in ONE compare-and-set
        `UPDATE jobs ... WHERE id=? AND state=? AND attempt=?` (any SQL database; no lock file). Exactly one of
        many racing callers gets True and must submit the job; the others get False and leave it alone.

        The previous attempt's scheduler ids (slurm_job_id, array ids, pid) are cleared in the same UPDATE, so
        that a `sync` running before the new submission is recorded cannot read the old attempt's end state.
        `fields` (e.g. config=...) are set in the same UPDATE.
        """
        src = State(expected_state)
        if not is_terminal(src) or not can_transition(src, State.queued):
            raise StateError(f"job {job_id}: only an ended job can be claimed for a new attempt, not {src}")
        attempt = int(expected_attempt)

        def fn(s: Session) -> bool:
            now = utcnow()
            values: Dict[str, Any] = dict(slurm_job_id=None, array_job_id=None, array_task_id=None, pid=None)
            values.update(fields)
            values.update(state=State.queued.value, state_reason=reason, attempt=attempt + 1, started_at=None,
                          finished_at=None, updated_at=now)
            stmt = (update(Job)
                    .where(Job.id == int(job_id), Job.state == src.value, Job.attempt == attempt)  # type: ignore[arg-type]
                    .values(**values)
                    .execution_options(synchronize_session=False))
            if s.exec(stmt).rowcount != 1:  # type: ignore[attr-defined]
                return False
            msg = f"{src} -> {State.queued}" + (f": {reason}" if reason else "")
            s.add(Event(job_id=int(job_id), kind="state", message=msg, attempt=attempt + 1,
                        data=_state_data(src, State.queued, reason, source, cause)))
            return True

        return self.write(fn)

    def causes(self, job_ids: Sequence[int]) -> Dict[int, Optional[str]]:
        """{job id: the cause recorded with its latest state change (None when none was)}, in one query per
        500 jobs."""
        ids = sorted({int(j) for j in job_ids})
        out: Dict[int, Optional[str]] = {j: None for j in ids}
        with self.read() as s:
            for i in range(0, len(ids), 500):
                q = (select(Event)
                     .where(Event.job_id.in_(ids[i:i + 500]), Event.kind == "state")  # type: ignore[attr-defined]
                     .order_by(Event.id))  # type: ignore[arg-type]
                for ev in s.exec(q).all():
                    out[ev.job_id] = (ev.data or {}).get("cause")
        return out

    def last_cause(self, job_id: int) -> Optional[str]:
        """The cause recorded with this job's latest state change, or None."""
        return self.causes([job_id])[int(job_id)]

    def delete(self, job_ids: Sequence[int]) -> int:
        def fn(s: Session) -> int:
            n = 0
            for jid in job_ids:
                for ev in s.exec(select(Event).where(Event.job_id == int(jid))).all():
                    s.delete(ev)
                job = s.get(Job, int(jid))
                if job is not None:
                    s.delete(job)
                    n += 1
            return n

        return self.write(fn)
