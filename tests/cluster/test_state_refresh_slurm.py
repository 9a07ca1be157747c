"""On the real local Slurm cluster: a job that hits its time limit without a warning becomes `expired` through
`hpcft list` alone (no `hpcft sync`), with Slurm's End as finished_at, and at most one sacct call per interval."""

import os
import shutil
import subprocess
import time

import pytest
from support import hpcft_cli

from hpcft.ledger.store import Ledger
from hpcft.slurm import commands as C

pytestmark = pytest.mark.slurm


def test_list_alone_records_a_timeout_with_slurms_end(slurm_cluster, hpcft_home, tmp_path):
    bindir, log = tmp_path / "bin", tmp_path / "sacct.log"
    bindir.mkdir()
    (bindir / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {shutil.which("sacct")} "$@"\n')
    (bindir / "sacct").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    env.pop("HPCFT_STATE_REFRESH", None)  # the default interval

    # no --signal: no warning before the time limit; the job cannot record its own end
    jid = C.parse_sbatch_parsable(C.run(["sbatch", "--parsable", "--time=1", f"--output={tmp_path}/%j.out",
                                         "--wrap", "sleep 300"])).job_id
    try:
        ledger = Ledger()
        job = ledger.create_job(name=f"slurm-{jid}", executor="slurm", state="queued", slurm_job_id=jid,
                                resources={})

        def listed():
            r = subprocess.run(hpcft_cli() + ["list"], capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 0, r.stderr
            return next(line for line in r.stdout.splitlines() if f"slurm-{jid}" in line)

        deadline = time.monotonic() + 240  # a 1-minute limit, plus Slurm's timeout check and kill wait
        while "expired" not in listed():
            assert time.monotonic() < deadline, "hpcft list never showed the job expired"
            time.sleep(1)
        calls = log.read_text().splitlines()
        assert all(c.count("-j") == 1 for c in calls)
        assert "expired" in listed() and log.read_text().splitlines() == calls  # right after: no sacct call

        got = ledger.get(job.id)
        rec = C.parse_sacct(C.run(C.sacct_argv([jid])))[jid]
        assert rec.slurm_state == "TIMEOUT"
        as_naive = [t.replace(tzinfo=None) for t in (C.slurm_time(rec.start), C.slurm_time(rec.end))]
        assert [got.started_at.replace(tzinfo=None), got.finished_at.replace(tzinfo=None)] == as_naive
    finally:
        subprocess.run(["scancel", jid], capture_output=True)
