"""The time-limit warning while the trainer is still starting: Slurm may send `--signal=USR1@N` up to a minute
early, to every process of the step. A trainer that has not installed its handler yet (still importing torch) must
neither die of it nor lose it: it starts with the signal ignored and the worker's relay delivers the warning once
the trainer listens (hpcft.jobs.worker.WarningRelay)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from hpcft import exitcodes
from hpcft.jobs.worker import WarningRelay

# a "trainer" that takes a while before it listens for SIGUSR1, then waits for it and exits 0 when it came
SLOW_STARTER = """
import signal, sys, time
time.sleep(1.5)
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
deadline = time.time() + 10
while not got and time.time() < deadline:
    time.sleep(0.05)
sys.exit(0 if got else 3)
"""


def _wait(proc, relay=None, timeout=20.0):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if relay is not None:
            relay.pump()
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def test_without_the_relay_an_early_warning_kills_a_starting_trainer():
    """The fault itself (so that the test below can fail): SIGUSR1's default action ends the process."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STARTER])
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    assert _wait(proc) == -signal.SIGUSR1


@pytest.mark.parametrize("group", [False, True])
def test_an_early_warning_is_kept_and_delivered_once_the_trainer_listens(group):
    relay = WarningRelay(group=group)
    proc = relay.popen([sys.executable, "-c", SLOW_STARTER], start_new_session=group)
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)  # what Slurm does: every process of the step gets it (ignored for now)
    relay.warn()  # and the worker got it too: pending until the trainer listens
    assert relay.pending
    assert _wait(proc, relay) == 0  # it survived and then received the warning
    assert not relay.pending


@pytest.mark.train
def test_a_trainer_warned_while_importing_torch_saves_at_its_first_step(tmp_path):
    """The real trainer (`python -m hpcft.train.entry`), warned 0.2 s after it started: it lives, and stops with a
    checkpoint at its first step boundary (exit 75), as at any other time."""
    from support.train_helpers import job_config

    from hpcft.train.checkpoint import latest_checkpoint, read_state

    out = tmp_path / "run"
    cfg = job_config(out, "method=lora", "training.max_steps=30", "training.sequence_length=64",
                     "training.save_strategy=steps", "training.save_interval=100")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    relay = WarningRelay(group=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HPCFT_TEST_STEP_DELAY_S="0.05")
    proc = relay.popen([sys.executable, "-m", "hpcft.train.entry", "--config", str(out / "config.yaml")],
                       env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGUSR1)
    relay.warn()
    rc = _wait(proc, relay, timeout=240)
    log = proc.stdout.read().decode(errors="replace")
    assert rc == exitcodes.SAVED_AT_WARNING, log[-3000:]
    state = read_state(latest_checkpoint(out / "checkpoints"))
    assert state["reason"] == "warning" and 1 <= state["step"] < 30, state
