"""Ledger schema migrations (Alembic), shipped inside the package (`hpcft/ledger/migrations/`, one file per revision in
`versions/`, named `NNNN_slug.py` with revision id `NNNN`, a straight line of revisions).

Opening a ledger calls `ensure_schema`: one `SELECT version_num FROM alembic_version`; when that is the newest
revision shipped here, nothing else happens and alembic is not even imported (`hpcft list` stays fast). Otherwise
`upgrade` runs `alembic upgrade head` on one connection, under a lock so that processes opening a new ledger at once
migrate it exactly once: PostgreSQL `pg_advisory_xact_lock`, MariaDB/MySQL `GET_LOCK`, SQLite the writer engine's
`BEGIN IMMEDIATE` (the others wait, then find the ledger at head). A ledger made before migrations existed (tables
`jobs` and `events`, no `alembic_version`) is stamped as revision 0001 (that schema, exactly) before upgrading.

New revision (developers): `alembic -c hpcft/ledger/migrations/alembic.ini revision --autogenerate -m "what"` against a
ledger at head (`HPCFT_DB_URL`, default the SQLite ledger), then rename the file `NNNN_what.py` and set
`revision = "NNNN"`; tests/unit/test_migrations.py checks the convention and that head matches the models.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from hpcft.errors import HpcftError

HERE = Path(__file__).resolve().parent
VERSIONS = HERE / "versions"
V1 = "0001"  # the schema hpcft 0.1 created with SQLModel.metadata.create_all (no alembic_version table)
# indexes the migrations make that the models cannot declare (partial, where the dialect has it): autogenerate and
# the schema comparison of the tests leave them alone
MIGRATION_ONLY_INDEXES = frozenset({"ix_jobs_slurm_job_id_live"})  # 0006: one live row per Slurm job


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic's include_object hook: everything but MIGRATION_ONLY_INDEXES."""
    return not (type_ == "index" and name in MIGRATION_ONLY_INDEXES)


LOCK_NAME = "hpcft_ledger_migrations"
LOCK_KEY = 0x68706366  # "hpcf": the PostgreSQL advisory lock key
LOCK_TIMEOUT_S = 300
_THREAD_LOCK = threading.Lock()  # alembic's `context` and `op` are process-global: one migration at a time


class SchemaError(HpcftError):
    """The ledger's schema cannot be brought to the version this hpcft needs."""


def revisions() -> List[str]:
    """Revision ids shipped here, oldest first (from the file names; no alembic import)."""
    return sorted(p.name.split("_", 1)[0] for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


def head() -> str:
    return revisions()[-1]


def current(engine) -> Optional[List[str]]:
    """The revisions recorded in the ledger's alembic_version table, or None when it has no such table."""
    from sqlalchemy.exc import DBAPIError

    with engine.connect() as conn:  # a database that cannot be reached: raised, not taken for an empty one
        try:
            return sorted(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all())
        except DBAPIError:
            return None


def ensure_schema(reader, writer) -> None:
    """Bring the ledger to head: a single cheap query when it is there already, else `upgrade(writer)`."""
    if current(reader) == [head()]:
        return
    upgrade(writer)


def _config(conn):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = conn
    return cfg


@contextmanager
def _lock(conn) -> Iterator[None]:
    """Only one process migrates a ledger at a time (held until the end of the transaction on PostgreSQL,
    released explicitly on MariaDB/MySQL; on SQLite the writer's BEGIN IMMEDIATE already is the lock)."""
    name = conn.dialect.name
    if name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
        yield
    elif name in ("mysql", "mariadb"):
        got = conn.exec_driver_sql(f"SELECT GET_LOCK('{LOCK_NAME}', {LOCK_TIMEOUT_S})").scalar()
        if got != 1:
            raise SchemaError(f"ledger {conn.engine.url!r}: another process held the migration lock for "
                              f"{LOCK_TIMEOUT_S} s; try again")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{LOCK_NAME}')")
    else:
        yield


def upgrade(engine, target: str = "head") -> None:
    """`alembic upgrade TARGET` on one connection of `engine` (for SQLite: the ledger's writer engine), under the
    migration lock; a ledger without alembic_version but with a `jobs` table is stamped as revision 0001 first."""
    from alembic import command
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError

    url = engine.url.render_as_string(hide_password=True)
    with _THREAD_LOCK, engine.begin() as conn, _lock(conn):
        cfg = _config(conn)
        known = {r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()}
        heads = MigrationContext.configure(conn).get_current_heads()
        unknown = [h for h in heads if h not in known]
        if unknown:
            raise SchemaError(f"ledger {url}: schema revision {', '.join(unknown)} is newer than this hpcft knows "
                              f"(newest here: {head()}); upgrade hpcft")
        if not heads and inspect(conn).has_table("jobs"):
            command.stamp(cfg, V1)  # made by hpcft before migrations: that schema is revision 0001
        try:
            command.upgrade(cfg, target)
        except DBAPIError as e:
            raise SchemaError(f"ledger {url}: cannot upgrade its schema from {heads or 'nothing'} to {target}: "
                              f"{str(e.orig).strip().splitlines()[0]} (the database owner or an administrator "
                              f"opens it once to upgrade it)") from e
