"""A lost worker on the real local Slurm cluster (ProctrackType=proctrack/linuxproc: Slurm alone would not find a
trainer whose worker died): `kill -9` of a running job's submitit worker takes its trainer with it within seconds,
`hpcft sync` records the cause `worker_lost` (never `oom`), and `hpcft retry` (worker_lost is retried like a node
failure) continues it from its checkpoint with no step trained twice beyond it. And a SIGKILLed trainer (its worker
alive) is `signal:9` with exit code 137, which `hpcft retry --exit-codes 137` resubmits (it was `exit:119`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from support import hpcft_cli, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.train]

STEPS = 60
TRAIN = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", f"training.max_steps={STEPS}",
         "training.epochs=100", "training.save_strategy=steps", "training.save_interval=5",
         "training.keep_checkpoints=2", "resources.time=10"]
ENDED = {"success", "error", "stopped", "expired"}


def cli(args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    env.update(env_extra or {})
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def job(name):
    r = cli(["list", "--json"])
    assert r.returncode == 0, r.stderr
    return {j["name"]: j for j in json.loads(r.stdout)}[name]


def processes(*needles):
    """Live processes whose command line holds every needle."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if all(n in cmd for n in needles) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def latest_step(out: Path):
    f = out / "checkpoints" / "latest"
    return int(f.read_text().strip().split("-")[1]) if f.is_file() else None


def train_steps(out: Path) -> list:
    from hpcft.rundir.metrics_io import read_metrics

    return [r["step"] for r in read_metrics(out, "train")]


def test_killed_worker_takes_its_trainer_is_worker_lost_and_retry_resumes_it(slurm_cluster, hpcft_home):
    name = "lost-worker"
    r = cli(["submit", *TRAIN, f"name={name}", "--yes"], env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.3"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = Path(job(name)["output_dir"])
    config = str(out / "config.yaml")
    wait_for(lambda: (latest_step(out) or 0) >= 5, "a checkpoint", timeout=240)
    wait_for(lambda: max(train_steps(out)) >= latest_step(out) + 2, "steps past the checkpoint", timeout=60)
    # the submitit worker: the python process running submitit's task for this job's folder (not srun's argv)
    workers = [p for p in processes("-m submitit.core._submit", str(out / "slurm"))
               if "python" in os.path.basename(p.cmdline()[0])]
    assert len(workers) == 1, [p.cmdline() for p in workers]
    assert processes("hpcft.train.entry", config), "no trainer running"
    t0 = time.monotonic()
    os.kill(workers[0].pid, signal.SIGKILL)
    wait_for(lambda: not processes("hpcft.train.entry", config), "the trainer to die with its worker", timeout=5,
             every=0.1)
    gone_after = time.monotonic() - t0
    before = train_steps(out)
    last = latest_step(out)

    def ended():
        cli(["sync"])
        j = job(name)
        return j if j["state"] in ENDED else None

    j = wait_for(ended, "the ledger to record the end", timeout=60, every=1.0)
    from hpcft.ledger.store import Ledger

    cause = Ledger().last_cause(j["id"])
    assert j["state"] == "error" and cause == "worker_lost", (j, cause)
    assert "memory" not in j["state_reason"], j["state_reason"]

    r = cli(["retry", "--backoff", "0", "--max-attempts", "3"])
    assert r.returncode == 0 and "1 resubmitted" in r.stdout, r.stdout + r.stderr

    def done():
        cli(["sync"])
        j = job(name)
        return j if j["state"] in ENDED and j["attempt"] == 2 else None

    j = wait_for(done, "the retried job to end", timeout=240, every=1.0)
    assert j["state"] == "success", j
    steps = train_steps(out)
    resumed = steps[len(before):]
    assert resumed[0] == last + 1 and resumed == list(range(last + 1, STEPS + 1)), (last, steps)
    redone = len(steps) - len(set(steps))
    assert redone == max(before) - last  # only the steps after the last checkpoint were trained again
    print(f"\nworker_lost: trainer gone {gone_after:.2f} s after the worker's SIGKILL; checkpoint {last}, "
          f"{redone} step(s) redone")


def test_sigkilled_trainer_on_slurm_is_signal_9_and_retried_with_exit_codes_137(slurm_cluster, hpcft_home):
    from hpcft.ledger.store import Ledger

    name = "killed-trainer"
    r = cli(["submit", *TRAIN, f"name={name}", "--yes"], env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.3"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = Path(job(name)["output_dir"])
    wait_for(lambda: (latest_step(out) or 0) >= 5, "a checkpoint", timeout=240)
    (trainer,) = processes("hpcft.train.entry", str(out / "config.yaml"))
    os.kill(trainer.pid, signal.SIGKILL)

    def ended():
        cli(["sync"])
        j = job(name)
        return j if j["state"] in ENDED else None

    j = wait_for(ended, "the ledger to record the end", timeout=60, every=1.0)
    assert j["state"] == "error" and Ledger().last_cause(j["id"]) == "signal:9", j
    assert "trainer killed by signal 9 (exit code 137" in j["state_reason"], j["state_reason"]
    r = cli(["retry", "--backoff", "0", "--max-attempts", "3", "--exit-codes", "137"])
    assert r.returncode == 0 and "1 resubmitted" in r.stdout, r.stdout + r.stderr
    assert cli(["stop", str(j["id"])]).returncode == 0  # resubmitted is all this test needs
