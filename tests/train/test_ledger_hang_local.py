"""A ledger that stops answering without refusing (a network partition, a frozen database host: every process of a
private PostgreSQL server stopped with SIGSTOP, so connections are taken and nothing replies) holds nobody: a real
tiny job on the local executor trains on, ends, and its worker exits while the server is frozen (each of its
database calls waited for at most HPCFT_LEDGER_WAIT_S, hpcft.ledger.courier); a CLI command gives up with one line
after its connect timeout (hpcft.ledger.store.NETWORK_TIMEOUTS) instead of hanging; once the server answers again,
`hpcft sync` takes the journal: success, every event once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support import hpcft_cli, wait_for
from support.pg_private import PrivatePostgres

pytestmark = pytest.mark.train

STEPS, DELAY_S = 60, 0.5


@pytest.fixture
def pg():
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL server runs as the postgres user: root only")
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        try:
            server.thaw()
        except (OSError, ValueError):
            pass
        server.remove()


def cli(args, url, timeout=120):
    env = dict(os.environ, HPCFT_DB_URL=url, HPCFT_LEDGER_WAIT_S="3", HPCFT_JOURNAL_LINGER_S="5",
               HPCFT_TEST_STEP_DELAY_S=str(DELAY_S))
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def the_job(url):
    r = cli(["list", "--json"], url)
    assert r.returncode == 0, r.stdout + r.stderr
    (job,) = json.loads(r.stdout)
    return job


def journal(out: Path):
    return [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_a_frozen_database_holds_neither_the_job_nor_the_cli(hpcft_home, pg):
    r = cli(["submit", "executor=local", "name=frozen", "training.sequence_length=64", "training.batch_size=8",
             "training.epochs=1000", f"training.max_steps={STEPS}", "training.save_strategy=steps",
             "training.save_interval=10", "training.keep_checkpoints=2"], pg.url)
    assert r.returncode == 0, r.stdout + r.stderr
    job = the_job(pg.url)
    out = Path(job["output_dir"])
    wait_for(lambda: any(r.get("kind") == "checkpoint" for r in journal(out)) and
             the_job(pg.url)["state"] == "running", "the job to run and save a checkpoint", timeout=180)
    supervisor = next(r["fields"]["pid"] for r in journal(out) if r.get("to") == "running")
    assert alive(supervisor)

    pg.freeze()
    frozen = time.monotonic()
    t = time.monotonic()
    r = cli(["list"], pg.url, timeout=60)  # a new connection to a server that takes it and never answers
    waited = time.monotonic() - t
    assert r.returncode == 6 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "the ledger database does not answer" in r.stderr, r.stderr
    assert waited < 30, waited  # one connect timeout (10 s), not TCP's minutes nor forever
    end = wait_for(lambda: next((r for r in journal(out) if r.get("to") == "success"), None),
                   "the job to end while the database is frozen", timeout=STEPS * DELAY_S + 120)
    wait_for(lambda: not alive(supervisor), "the worker to exit while the database is frozen", timeout=120)
    log = (out / "logs" / "job.log").read_text()
    assert "the ledger is unreachable" in log and "`hpcft sync` takes the rest" in log, log[-2000:]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("type") == "train"]
    assert max(steps) == STEPS and len(steps) == len(set(steps))  # trained to the end, no step twice
    held = time.monotonic() - frozen

    pg.thaw()
    r = cli(["sync"], pg.url)
    assert r.returncode == 0, r.stdout + r.stderr
    job = the_job(pg.url)
    assert job["state"] == "success", job
    r = cli(["events", str(job["id"]), "--json"], pg.url)
    assert r.returncode == 0, r.stdout + r.stderr
    in_ledger = [(e["kind"], e["message"]) for e in json.loads(r.stdout)]
    for kind in ("started", "checkpoint", "finished"):
        assert [m for k, m in in_ledger if k == kind] == [r["message"] for r in journal(out)
                                                          if r["op"] == "event" and r["kind"] == kind], kind
    print(f"frozen database: `hpcft list` gave up after {waited:.1f} s; the job ended ({end['ts']}) and its worker "
          f"exited {held:.0f} s into the freeze; sync delivered {sum(1 for r in journal(out) if r['op'] == 'event')} "
          f"events once")
