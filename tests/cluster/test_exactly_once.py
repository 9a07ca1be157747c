"""Exactly-once submission on the real local Slurm cluster: slurmctld stopped (SIGSTOP) while `hpcft submit` runs
sbatch. sbatch times out ("Socket timed out on send/recv operation") although slurmctld takes the job once it runs
again. hpcft never records `error` for it and never leaves a ghost allocation: the row stays queued (the submit
says why, exit non-zero), and `hpcft sync` finds the job by the identity its --comment carries and adopts it; the
job then trains to success, the only Slurm job with that identity."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support import hpcft_cli, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.train]

TRAIN = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", "training.max_steps=6",
         "training.epochs=100", "resources.time=10"]


def cli(args, timeout=180):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def jobs():
    r = cli(["list", "--json"])
    assert r.returncode == 0, r.stderr
    return {j["name"]: j for j in json.loads(r.stdout)}


def signal_ctld(sig: str) -> None:
    subprocess.run(["pkill", f"-{sig}", "-x", "slurmctld"], check=True)


def tagged(uuid: str) -> list:
    out = subprocess.run(["sacct", "-X", "--noheader", "--parsable2", "--format=JobID,State,Comment",
                          "-S", "now-1hours"], capture_output=True, text=True, check=True).stdout
    squeue = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%k"], capture_output=True,
                            text=True, check=True).stdout
    ids = {line.split("|")[0] for line in (out + squeue).splitlines() if f"hpcft:{uuid}" in line}
    return sorted(ids)


def test_a_submission_slurmctld_took_while_sbatch_timed_out_is_adopted_not_a_ghost(slurm_cluster, hpcft_home):
    name = "stalled-ctld"
    signal_ctld("STOP")
    try:
        t0 = time.monotonic()
        r = cli(["submit", *TRAIN, f"name={name}", "--yes"])
        took = time.monotonic() - t0
    finally:
        signal_ctld("CONT")
    assert r.returncode != 0 and "hpcft sync" in (r.stdout + r.stderr), r.stdout + r.stderr
    job = jobs()[name]
    assert job["state"] == "queued" and not job["slurm_job_id"], job  # never `error` for a job Slurm may hold
    uuid = json.loads((Path(job["output_dir"]) / "job.json").read_text())["uuid"]
    held = wait_for(lambda: tagged(uuid) or None, "slurmctld to take the stalled submission", timeout=120)
    assert len(held) == 1, held
    r = cli(["sync"])
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: jobs()[name]["slurm_job_id"] == held[0] or None, "the row to adopt the Slurm job", timeout=60)
    done = wait_for(lambda: (lambda j: j if j["state"] in ("success", "error", "stopped", "expired") else None)(
        jobs()[name]), "the adopted job to end", timeout=400)
    assert done["state"] == "success", done
    assert tagged(uuid) == held  # one allocation, the one the ledger knows
    r = cli(["events", str(done["id"]), "--json"])
    kinds = [e["kind"] for e in json.loads(r.stdout)]
    assert "submit_uncertain" in kinds and "error" not in [e.get("data", {}).get("to") for e in json.loads(r.stdout)]
    print(f"submit returned after {took:.0f} s; adopted Slurm job {held[0]}")
