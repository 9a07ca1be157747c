"""The run directory is the record, with real tiny jobs on the local executor: a finished job's journal holds
everything the job said; the ledger removed, `hpcft admin rebuild` makes its jobs and events again from the run
directories (same ids, states, causes, times; a second run changes nothing); a job that ended while its ledger
could not be written gets its own end when `hpcft sync` takes its journal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import hpcft_cli, wait_for

pytestmark = pytest.mark.train

FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8", "training.epochs=2",
        "training.save_strategy=steps", "training.save_interval=2"]


def run(args, timeout=300):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout)


def jobs():
    r = run(["list", "--json"])
    assert r.returncode == 0, r.stdout + r.stderr
    return {j["name"]: j for j in json.loads(r.stdout)}


def events(job_id):
    r = run(["events", str(job_id), "--json"])
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def journal_kinds(out: Path):
    return [(r["op"], r.get("kind") or r.get("to")) for r in
            (json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines())]


def test_rebuild_makes_a_lost_ledger_again_from_the_run_directories(hpcft_home):
    for name in ("first", "second"):
        r = run(["submit", *FAST, f"name={name}"])
        assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: all(j["state"] == "success" for j in jobs().values()) and len(jobs()) == 2, "both succeed",
             timeout=300)
    before = jobs()
    out = Path(before["first"]["output_dir"])
    kinds = journal_kinds(out)
    assert ("state", "running") in kinds and ("state", "success") in kinds and ("event", "checkpoint") in kinds
    old_events = {n: [(e["kind"], e["message"]) for e in events(j["id"]) if e["kind"] != "created"]
                  for n, j in before.items()}
    assert all(evs[0][0] == "submitted" for evs in old_events.values())  # the submit's own: in the record too

    (hpcft_home / "ledger.db").unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(hpcft_home / "ledger.db") + suffix).unlink(missing_ok=True)
    r = run(["list"])
    assert r.returncode != 0 and "hpcft admin rebuild" in (r.stdout + r.stderr)  # loud, not a new empty ledger

    r = run(["admin", "rebuild"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 job(s) made again" in r.stdout
    after = jobs()
    for name, job in before.items():
        again = after[name]
        for key in ("id", "state", "output_dir", "owner", "resource_spec"):
            assert again[key] == job[key], (name, key)
        new_events = [(e["kind"], e["message"]) for e in events(again["id"])
                      if e["kind"] not in ("created", "rebuilt")]
        assert new_events == old_events[name]  # every event the job wrote, once, in order
    n = {name: len(events(j["id"])) for name, j in after.items()}
    r = run(["admin", "rebuild"])
    assert r.returncode == 0 and "0 job(s) made again, 0 brought up to date" in r.stdout
    assert {name: len(events(j["id"])) for name, j in after.items()} == n
