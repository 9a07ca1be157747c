"""Fresh throw-away ledger databases on every backend the ledger supports, for tests.

- sqlite: a file in the test's tmp_path.
- mariadb: a database on the local MariaDB (as root over its socket; scripts/slurm-local up starts it).
- postgresql: a database on the server at HPCFT_TEST_PG_URL (scripts/test exports it after
  `scripts/postgres-local up`; default: the local socket with peer authentication), created through that URL.
A missing server skips the test, or fails it where the test command requires the server (HPCFT_REQUIRE_SLURM=1 for
MariaDB, which slurm-local starts; HPCFT_REQUIRE_POSTGRES=1 for PostgreSQL).
"""

import itertools
import os
import subprocess
from contextlib import contextmanager
from typing import Iterator

import pytest

BACKENDS = ["sqlite", "mariadb", "postgresql"]
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"  # started by scripts/slurm-local up (slurmdbd's database)
PG_DEFAULT_URL = "postgresql+psycopg:///hpcft?host=/var/run/postgresql"  # scripts/postgres-local url
_seq = itertools.count()


def pg_admin_url() -> str:
    return os.environ.get("HPCFT_TEST_PG_URL") or PG_DEFAULT_URL


def _unavailable(what: str, required_by: str, why: str):
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {what}: {why}")
    pytest.skip(f"{what}: {why}")


def _name() -> str:
    return f"hpcft_test_{os.getpid()}_{next(_seq)}"


def pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")


def new_database(kind: str, tmp_path) -> str:
    """A SQLAlchemy URL of a new empty database of this kind (skip or fail when the server is not there)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/ledger-{next(_seq)}.db"
    db = _name()
    if kind == "mariadb":
        if not os.path.exists(MARIADB_SOCKET):
            _unavailable("no local MariaDB", "HPCFT_REQUIRE_SLURM", "scripts/slurm-local up starts one")
        pytest.importorskip("pymysql")
        r = subprocess.run(["mysql", "-e", f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"], capture_output=True)
        if r.returncode != 0:
            _unavailable("cannot create a MariaDB database", "HPCFT_REQUIRE_SLURM", r.stderr.decode()[:200])
        return f"mysql+pymysql://root@localhost/{db}?unix_socket={MARIADB_SOCKET}"
    if kind == "postgresql":
        from sqlalchemy.engine import make_url

        eng = pg_admin_engine()
        try:
            with eng.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {db}")
        except Exception as e:  # no server, no role, no CREATEDB ...
            _unavailable("cannot create a PostgreSQL database", "HPCFT_REQUIRE_POSTGRES",
                         f"{pg_admin_url()}: {str(e).strip().splitlines()[0]} (run: scripts/postgres-local up)")
        finally:
            eng.dispose()
        return make_url(pg_admin_url()).set(database=db).render_as_string(hide_password=False)
    raise ValueError(kind)


def drop_database(url: str) -> None:
    """Drop a database made by new_database (the ledger's engines for it are disposed first)."""
    from hpcft.ledger import store as ledger_mod

    for eng in set(ledger_mod._ENGINES.pop(url, ())):
        eng.dispose()
    if url.startswith("sqlite"):
        return
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if url.startswith("mysql"):
        subprocess.run(["mysql", "-e", f"DROP DATABASE IF EXISTS {db}"], capture_output=True)
    else:
        eng = pg_admin_engine()
        with eng.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        eng.dispose()


@contextmanager
def fresh_database(kind: str, tmp_path) -> Iterator[str]:
    """A new database's URL, dropped afterwards."""
    url = new_database(kind, tmp_path)
    try:
        yield url
    finally:
        drop_database(url)
