"""A database server that cannot be reached holds nobody: one that refuses (nothing listens) or one that takes the
connection and never answers (a black hole: a real socket that accepts and stays silent, as a frozen host or a
network partition looks to a client). The worker's calls are bounded (hpcft.ledger.courier.Bounded); engines get
connect and keepalive timeouts (hpcft.ledger.store.NETWORK_TIMEOUTS); a CLI command says so in one line with exit
code 6 (hpcft.errors.LedgerUnreachable). The frozen PostgreSQL server itself: tests/train/test_ledger_hang_local.py."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from hpcft.ledger.courier import Bounded, JournaledLedger, NoAnswer
from hpcft.ledger.store import Ledger, network_timeouts, unreachable
from hpcft.rundir import journal
from hpcft.states import State
from support import hpcft_cli


@pytest.fixture
def black_hole():
    """127.0.0.1:PORT that takes every connection and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_bounded_calls_give_up_in_time_and_leave_one_thread_behind():
    call, release = Bounded(wait_s=0.3), threading.Event()
    before = {th for th in threading.enumerate() if th.name == "hpcft-ledger-call"}
    assert call(lambda x: x + 1, 1) == 2
    with pytest.raises(ZeroDivisionError):
        call(lambda: 1 / 0)  # the call's own error reaches the caller
    t = time.monotonic()
    with pytest.raises(NoAnswer):
        call(release.wait)  # hangs
    with pytest.raises(NoAnswer):  # the hung call still holds the line: this one is not started
        call(lambda: pytest.fail("started beside a hung call"))
    assert time.monotonic() - t < 2
    hung = [th for th in threading.enumerate() if th.name == "hpcft-ledger-call" and th not in before]
    assert len(hung) == 1
    release.set()
    hung[0].join(timeout=5)
    assert call(lambda: "again") == "again"  # answered again: calls go through


def test_engine_timeouts_defaults_and_the_urls_own():
    pg = network_timeouts("postgresql://u:p@db/ledger")
    assert pg["connect_timeout"] == 10 and pg["keepalives"] == 1 and pg["tcp_user_timeout"] == 60000
    assert "connect_timeout" not in network_timeouts("postgresql://u@db/ledger?connect_timeout=3")
    assert network_timeouts("mysql+pymysql://u@db/ledger")["read_timeout"] == 300
    assert network_timeouts("sqlite:////tmp/x.db") == {}


def test_a_silent_database_holds_the_worker_for_its_bound_only(tmp_path, monkeypatch, black_hole):
    monkeypatch.setenv("HPCFT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HPCFT_LEDGER_WAIT_S", "1")
    local = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    run = tmp_path / "runs" / "j"
    run.mkdir(parents=True)
    job = local.create_job(name="j", output_dir=str(run))
    jl = JournaledLedger(f"postgresql://nobody@127.0.0.1:{black_hole}/none", job.id, run, job)
    t = time.monotonic()
    assert jl.transition(job.id, State.running, "started") is None  # no answer: it stands in the journal
    jl.add_event(job.id, "checkpoint", "step 10")
    assert jl.get(job.id) is job  # the row as last read
    assert [e.kind for e in jl.events(job.id)] == ["checkpoint"]  # from the journal
    with pytest.raises(NoAnswer):
        jl.open_requests(job.id, "stop")
    assert jl.close(linger_s=0) is False
    assert time.monotonic() - t < 20  # each call waited ~1 s, not TCP's minutes nor forever
    assert [r.get("to") or r.get("kind") for r in journal.read(run)] == ["running", "checkpoint"]
    assert "no answer from the database within 1 s" in (jl.down or "")


def test_the_cli_says_in_one_line_that_the_ledger_does_not_answer(tmp_path, black_hole):
    env = dict(os.environ, HPCFT_HOME=str(tmp_path),
               HPCFT_DB_URL=f"postgresql://nobody:secret@127.0.0.1:{black_hole}/none?connect_timeout=2")
    for args in (["list"], ["sync"], ["show", "1"]):
        t = time.monotonic()
        r = subprocess.run(hpcft_cli() + args, capture_output=True, text=True, env=env, timeout=120)
        assert time.monotonic() - t < 30, args
        err = r.stderr.strip()
        assert r.returncode == 6 and len(err.splitlines()) == 1, (args, r.returncode, r.stdout, r.stderr)
        assert err.startswith("error: the ledger database does not answer") and "secret" not in err, err
    env["HPCFT_DB_URL"] = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"  # refused: nothing listens
    r = subprocess.run(hpcft_cli() + ["list"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 6 and "the ledger database does not answer" in r.stderr, r.stderr


def test_other_errors_are_not_called_unreachable():
    from sqlalchemy.exc import OperationalError

    assert unreachable(ValueError("connection"), "postgresql://u@h/d") is None
    assert unreachable(OperationalError("SELECT", {}, Exception("division by zero")), "postgresql://u@h/d") is None
    assert unreachable(OperationalError("SELECT", {}, Exception("connection refused")), "sqlite:////x.db") is None
    import psycopg  # the server answered, with a refusal of its own: not "does not answer"

    assert unreachable(psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5432 '
                                                'failed: FATAL:  password authentication failed for user "x"'),
                       "postgresql://x@127.0.0.1/d") is None
    e = unreachable(OperationalError("SELECT", {}, Exception("connection timeout expired")), "postgresql://u:pw@h/d")
    assert e is not None and e.exit_code == 6 and "pw" not in str(e)
