"""Trust under faults on the local executor, with real tiny jobs, real processes and real signals: a SIGKILLed
trainer ends `error` with cause signal:9 and exit code 137 (and `hpcft retry --exit-codes 137` continues it), a
SIGKILLed supervisor takes its trainer with it, and a 1-CPU job trains with one thread."""

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

pytestmark = pytest.mark.train

FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8", "training.epochs=100",
        "training.save_strategy=steps", "training.save_interval=3"]


def run(args, env=None, timeout=300):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout, env=env)


def jobs():
    return {j["name"]: j for j in json.loads(run(["list", "--json"]).stdout)}


def wait_state(name, states, timeout=180):
    return wait_for(lambda: (lambda j: j if j["state"] in states else None)(jobs()[name]), f"{name} in {states}",
                    timeout)


def trainers(config: Path):
    """The live processes whose command line names this job's config (its trainer, whoever its parent is)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if str(config) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def training_started(name):
    """The job's output dir once its trainer has logged a step (torch imported, model built, training)."""
    out = Path(jobs()[name]["output_dir"])
    return wait_for(lambda: (out / "metrics.jsonl").is_file() and out, f"{name} training", timeout=240)


def submit(name, *overrides, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    env.update(env_extra or {})
    r = run(["submit", *FAST, f"name={name}", *overrides], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return jobs()[name]


def test_sigkilled_trainer_is_signal_9_exit_137_and_retry_exit_codes_137_continues_it(hpcft_home):
    from hpcft.ledger.store import Ledger

    submit("killed", "training.max_steps=12", env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.3"})
    out = training_started("killed")
    wait_for(lambda: (out / "checkpoints" / "latest").is_file(), "a checkpoint")
    (trainer,) = [p for p in trainers(out / "config.yaml") if "hpcft.train.entry" in " ".join(p.cmdline())]
    os.kill(trainer.pid, signal.SIGKILL)
    j = wait_state("killed", {"error", "success", "stopped", "expired"}, timeout=60)
    assert j["state"] == "error" and "killed by signal 9 (exit code 137)" in j["state_reason"], j
    ledger = Ledger()
    assert ledger.last_cause(j["id"]) == "signal:9"
    finished = [e for e in ledger.events(j["id"]) if e.kind == "finished"]
    assert finished[-1].data["exit_code"] == 137 and finished[-1].data["signal"] == 9
    r = run(["retry", "--exit-codes", "137", "--backoff", "0", "--max-attempts", "3"])
    assert r.returncode == 0 and "1 resubmitted" in r.stdout, r.stdout + r.stderr
    j = wait_state("killed", {"error", "success", "stopped", "expired"}, timeout=240)
    assert j["state"] == "success" and j["attempt"] == 2, j


def test_sigkilled_supervisor_takes_its_trainer_with_it(hpcft_home):
    submit("orphan", "training.max_steps=400", env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.3"})
    out = training_started("orphan")
    config = out / "config.yaml"
    assert any("hpcft.train.entry" in " ".join(p.cmdline()) for p in trainers(config))
    supervisor = jobs()["orphan"]["pid"]
    t0 = time.monotonic()
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not trainers(config), "the trainer to die with its supervisor", timeout=10, every=0.1)
    gone_after = time.monotonic() - t0
    print(f"\ntrainer gone {gone_after:.2f} s after the supervisor's SIGKILL")
    assert gone_after < 5
    assert run(["sync"]).returncode == 0
    j = jobs()["orphan"]
    assert j["state"] == "error" and "supervisor process" in j["state_reason"], j


def test_a_one_cpu_job_trains_with_one_thread(hpcft_home):
    """resources.cpus_per_task=1 (and no OMP_NUM_THREADS from the submitter): the trainer's torch uses 1 thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    r = run(["submit", *FAST, "name=one-cpu", "training.max_steps=2", "resources.cpus_per_task=1", "--wait"],
            env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    log = (Path(jobs()["one-cpu"]["output_dir"]) / "logs" / "job.log").read_text()
    assert "[hpcft] threads: torch 1, OMP_NUM_THREADS 1, data-loader workers 0 (1 CPU(s) per task)" in log, log
