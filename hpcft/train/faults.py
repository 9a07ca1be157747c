"""Test seams for the fault-injection suite (environment variables; unset in normal runs, then no-ops).

- HPCFT_TEST_CRASH_AT_STEP=N: SIGKILL this process right after optimizer step N (a crash between checkpoints).
- HPCFT_TEST_CRASH_IN_SAVE=N: SIGKILL this process in the middle of writing the checkpoint of step N (after some
  of its files are written, before it is published).
- HPCFT_TEST_STEP_DELAY_S=S: sleep S seconds after every optimizer step (a slow job, so that a time limit or a
  signal reliably lands mid-run on any machine).
- HPCFT_TEST_ALLOC_AT_STEP=N:MB: after step N, allocate and touch MB megabytes and hold them (a job that grows past
  its memory limit).
"""

from __future__ import annotations

import os
import signal
import time

CRASH_ENV = "HPCFT_TEST_CRASH_AT_STEP"
CRASH_IN_SAVE_ENV = "HPCFT_TEST_CRASH_IN_SAVE"
DELAY_ENV = "HPCFT_TEST_STEP_DELAY_S"
ALLOC_ENV = "HPCFT_TEST_ALLOC_AT_STEP"
_held: list = []


def _int(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0


def _die() -> None:
    from hpcft.train.metrics import flush_std

    flush_std()
    os.kill(os.getpid(), signal.SIGKILL)


def after_step(step: int) -> None:
    """Called by every trainer after each optimizer step."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    n = _int(CRASH_ENV)
    if n and step == n:
        _die()
    at, _, mb = os.environ.get(ALLOC_ENV, "").partition(":")
    if at.strip().isdigit() and int(at) == step and mb.strip().isdigit():
        import numpy as np

        _held.append(np.ones(int(mb) * 2**20, dtype=np.uint8))  # ones: every page is really touched
        time.sleep(10)  # hold it while the memory limit is enforced


def in_save(step: int) -> None:
    """Called by the checkpoint writer after part of a checkpoint is on disk, before it is published."""
    n = _int(CRASH_IN_SAVE_ENV)
    if n and step == n:
        _die()
