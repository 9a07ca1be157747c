"""A ledger outage never stops training and loses nothing (the run directory is the record), on the real local
Slurm cluster with a real PostgreSQL ledger (a private server, so the outage touches no other test) and Slurm's
own MariaDB stopped too:

- `long` trains through the whole outage (PostgreSQL down `HPCFT_FAULT_OUTAGE_S`, default 300 s; MariaDB down
  `HPCFT_FAULT_MARIADB_S`, default 120 s, inside it): every step trained once, its checkpoints' events delivered
  once when the database answers again, its end `success`;
- `short` ends during the outage: its worker cannot record the end; `hpcft sync` after the outage takes the
  journal: `success` with the job's own end time (from before the database came back), every event once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from support import hpcft_cli, wait_for
from support.pg_private import PrivatePostgres, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.train]

OUTAGE_S = int(os.environ.get("HPCFT_FAULT_OUTAGE_S", "300"))
MARIADB_S = min(OUTAGE_S, int(os.environ.get("HPCFT_FAULT_MARIADB_S", "120")))
DELAY_S = 2.0
BASE = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", "training.epochs=1000",
        "training.save_strategy=steps", "training.save_interval=10", "training.keep_checkpoints=2",
        "resources.time=30"]


@pytest.fixture
def pg():
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def cli(args, url, timeout=120, slow=False, linger=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    env["HPCFT_DB_URL"] = url
    if linger is not None:  # how long the job's worker keeps trying at its end (hpcft.ledger.courier)
        env["HPCFT_JOURNAL_LINGER_S"] = str(linger)
    if slow:  # reaches the trainers through the submitter's environment (sbatch exports it)
        env["HPCFT_TEST_STEP_DELAY_S"] = str(DELAY_S)
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def jobs(url):
    r = cli(["list", "--json"], url)
    assert r.returncode == 0, r.stdout + r.stderr
    return {j["name"]: j for j in json.loads(r.stdout)}


def events(url, job_id):
    r = cli(["events", str(job_id), "--json"], url)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def journal(out: Path):
    return [json.loads(x) for x in (Path(out) / "journal.jsonl").read_text().splitlines()]


def steps(out: Path):
    from hpcft.rundir.metrics_io import read_metrics

    return [r["step"] for r in read_metrics(out, "train")]


def mariadb(up: bool) -> None:
    if not up:
        subprocess.run(["mysqladmin", "shutdown"], check=True, timeout=60)
        return
    subprocess.Popen("mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld && exec setsid mysqld_safe --user=mysql",
                     shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: subprocess.run(["mysqladmin", "ping"], capture_output=True).returncode == 0, 60)


def check_delivered_once(url, job, out):
    recs = journal(out)
    evs = events(url, job["id"])
    for kind in ("checkpoint", "finished", "started"):
        in_journal = [r["message"] for r in recs if r["op"] == "event" and r["kind"] == kind]
        in_ledger = [e["message"] for e in evs if e["kind"] == kind]
        assert in_ledger == in_journal, (job["name"], kind)  # every event, once, in order
    assert len(set(steps(out))) == len(steps(out))  # no step trained twice


def test_a_ledger_outage_loses_no_step_and_no_event(slurm_cluster, hpcft_home, pg):
    url = pg.url
    long_steps = int((40 + OUTAGE_S + 60) / DELAY_S)
    r = cli(["submit", *BASE, "name=long", f"training.max_steps={long_steps}", "--yes"], url, slow=True)
    assert r.returncode == 0, r.stdout + r.stderr
    short_steps = 10 + int(OUTAGE_S * 0.4 / DELAY_S)  # ends well inside the outage
    r = cli(["submit", *BASE, "name=short", f"training.max_steps={short_steps}", "--yes"], url, slow=True,
            linger=5)
    assert r.returncode == 0, r.stdout + r.stderr
    outs = {n: Path(j["output_dir"]) for n, j in jobs(url).items()}
    wait_for(lambda: all(any(e["kind"] == "checkpoint" for e in events(url, j["id"])) for j in jobs(url).values()),
             "both jobs to report a checkpoint", timeout=300)

    pg.stop()
    t_down = time.time()
    mariadb(False)
    try:
        time.sleep(MARIADB_S)
    finally:
        mariadb(True)
    short_end = wait_for(lambda: next((r for r in journal(outs["short"]) if r.get("to") == "success"), None),
                         "short to finish during the outage", timeout=max(30, OUTAGE_S - MARIADB_S))
    still = max(0.0, OUTAGE_S - (time.time() - t_down))
    time.sleep(still)
    during = steps(outs["long"])
    pg.start()
    t_up = time.time()

    long_job = wait_for(lambda: (lambda j: j if j["state"] != "running" else None)(jobs(url)["long"]),
                        "long to end", timeout=OUTAGE_S + 300)
    assert long_job["state"] == "success", long_job
    assert max(steps(outs["long"])) == long_steps and max(during) < long_steps  # it trained through the outage
    log = "".join(p.read_text() for p in (outs["long"] / "slurm").glob("*_log.out"))  # the worker's own log
    assert "the ledger is unreachable" in log and "the ledger answers again" in log

    # short ended while the database was down: its worker left the rest in the journal, which `hpcft sync` (or the
    # refresh of a read command such as `hpcft list`) takes: its own end and time
    assert "`hpcft sync` takes the rest" in "".join(p.read_text() for p in (outs["short"] / "slurm").glob("*_log.out"))
    r = cli(["sync"], url)
    assert r.returncode == 0, r.stdout + r.stderr
    short = jobs(url)["short"]
    assert short["state"] == "success", short
    ended = datetime.fromisoformat(short["finished_at"]).timestamp()
    assert ended < t_up and abs(ended - datetime.fromisoformat(short_end["ts"]).timestamp()) < 1
    for name, job in jobs(url).items():
        check_delivered_once(url, job, outs[name])
    print(f"outage {OUTAGE_S} s (MariaDB {MARIADB_S} s): long trained steps {min(during)}..{max(during)} during it; "
          f"{sum(1 for r in journal(outs['long']) if r['op'] == 'event')} events delivered once")
