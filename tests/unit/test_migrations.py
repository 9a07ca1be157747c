"""Ledger schema migrations (hpcft/migrations, Alembic) on SQLite, MariaDB and PostgreSQL.

tests/fixtures/ledger-v1.sqlite was made by hpcft before migrations existed (SQLModel.metadata.create_all; 3 jobs,
11 events: a finished job with a checkpoint, a retried Slurm array task, a stopped child job).
"""

import multiprocessing as mp
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import JSON, Column, MetaData, Table, create_engine, insert, inspect, select
from sqlmodel import SQLModel

from hpcft.ledger import migrations
from hpcft.ledger.store import Ledger, engine_url
from support.ledger_dbs import BACKENDS, fresh_database

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ledger-v1.sqlite"
JSON_COLUMNS = {"jobs": ("config", "resources"), "events": ("data",)}


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _fixture_engine():
    return create_engine(f"sqlite:///file:{FIXTURE}?mode=ro&uri=true")  # read-only: the committed file stays as is


def _rows(engine):
    """{table: [row dicts in id order]} of jobs and events, read with reflected tables (no model involved)."""
    md = MetaData()
    out = {}
    with engine.connect() as conn:
        for name in ("jobs", "events"):
            t = Table(name, md, autoload_with=conn)
            out[name] = [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.id))]
    return out


def _make_v1(url):
    """The ledger hpcft made before migrations, with the fixture's rows: on SQLite the fixture file itself; on a
    server revision 0001 alone (that schema), no alembic_version table, and the fixture's rows copied in."""
    if url.startswith("sqlite"):
        shutil.copy(FIXTURE, url[len("sqlite:///"):])
        return
    eng = create_engine(engine_url(url))
    migrations.upgrade(eng, migrations.V1)
    with eng.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    rows = _rows(_fixture_engine())
    md = MetaData()
    with eng.begin() as conn:
        for name in ("jobs", "events"):
            t = Table(name, md, *[Column(c, JSON) for c in JSON_COLUMNS[name]], autoload_with=conn)
            conn.execute(insert(t), rows[name])
        if eng.dialect.name == "postgresql":  # rows copied with their ids: move the sequences past them
            for name in ("jobs", "events"):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id)) FROM {name}")
    eng.dispose()


def _schema_diff(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": migrations.include_object})
        return compare_metadata(ctx, SQLModel.metadata)


def test_revisions_are_a_straight_line_named_by_their_files():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations.HERE))
    revs = list(reversed(list(script.walk_revisions())))  # oldest first
    assert [r.revision for r in revs] == migrations.revisions()
    assert revs[0].revision == migrations.V1 and revs[0].down_revision is None
    for prev, rev in zip(revs[:-1], revs[1:], strict=True):
        assert rev.down_revision == prev.revision
    for rev in revs:
        assert Path(rev.path).name.startswith(rev.revision + "_")
    assert script.get_heads() == [migrations.head()]


def test_revision_1_is_the_schema_hpcft_created_before_migrations(tmp_path):
    # the very DDL (tables, columns, indexes) that create_all wrote into the fixture, statement by statement
    eng = create_engine(f"sqlite:///{tmp_path}/v1.db")
    migrations.upgrade(eng, migrations.V1)
    q = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version' ORDER BY name"
    with eng.connect() as conn:
        made = [tuple(r) for r in conn.exec_driver_sql(q)]
    with _fixture_engine().connect() as conn:
        assert made == [tuple(r) for r in conn.exec_driver_sql(q)]


def test_new_ledger_is_at_head_and_matches_the_models(db_url):
    led = Ledger(db_url)
    eng = led._writer
    assert migrations.current(eng) == [migrations.head()]
    assert _schema_diff(eng) == []
    assert led.create_job(name="first", owner="ann").id == 1


def test_v1_ledger_is_stamped_and_upgraded_keeping_every_row(db_url):
    _make_v1(db_url)
    eng = create_engine(engine_url(db_url))
    assert not inspect(eng).has_table("alembic_version")
    before = _rows(eng)
    assert [r["id"] for r in before["jobs"]] == [1, 2, 3] and len(before["events"]) == 11

    led = Ledger(db_url)  # stamps revision 0001, upgrades to head
    assert migrations.current(eng) == [migrations.head()]
    after = _rows(eng)
    for name, rows in before.items():
        assert [{k: r[k] for k in rows[0]} for r in after[name]] == rows  # every row, every v1 column unchanged
    assert _schema_diff(eng) == []

    # and the upgraded ledger works through the API
    assert [(j.id, j.name, j.state, j.attempt) for j in led.search()] == [
        (3, "dpo-from-1", "stopped", 1), (2, "sweep-lr", "queued", 2), (1, "quickstart-tiny-lora", "success", 1)]
    assert led.get(1).config == {"model": {"name": "tiny"}, "training": {"epochs": 1}}
    assert led.get(3).description == "unicode: héllo ✓" and led.get(3).parent_id == 1
    assert led.last_cause(2) == "node_fail" and led.last_cause(3) == "user_stop"
    assert [e.kind for e in led.events(1)] == ["created", "state", "checkpoint", "state"]
    new = led.create_job(name="after-upgrade", owner="ann")
    assert new.id == 4 and led.transition(new.id, "running")
    eng.dispose()


def _open_at_once(url, barrier, i):
    import os

    open(f"{barrier}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(barrier):
        time.sleep(0.005)
    Ledger(url).create_job(name=f"p{i}", owner="ann")


def test_processes_opening_a_new_ledger_at_once_migrate_it_once(db_url, tmp_path):
    barrier = tmp_path / "go"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open_at_once, args=(db_url, str(barrier), i)) for i in range(3)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    barrier.write_text("go")
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    led = Ledger(db_url)
    assert sorted(j.name for j in led.search()) == ["p0", "p1", "p2"]
    assert migrations.current(led._writer) == [migrations.head()]


def _imports_alembic(url) -> bool:
    code = f"import sys; from hpcft.ledger.store import Ledger; Ledger({url!r}).search(); print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1] == "True"


def test_an_up_to_date_ledger_opens_without_importing_alembic(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "old.db")
    assert _imports_alembic(f"sqlite:///{tmp_path}/old.db")  # the probe can fail: an upgrade needs alembic
    assert not _imports_alembic(f"sqlite:///{tmp_path}/old.db")  # at head now: one SELECT, no alembic


def test_a_ledger_from_a_newer_hpcft_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/newer.db"
    Ledger(url)
    con = sqlite3.connect(tmp_path / "newer.db")
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    eng = create_engine(url)
    with pytest.raises(migrations.SchemaError, match=r"schema revision 9999 is newer than this hpcft knows"):
        migrations.ensure_schema(eng, eng)
