"""Job states and the only place that decides which transitions are allowed."""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    queued = "queued"
    running = "running"
    error = "error"
    stopped = "stopped"
    expired = "expired"  # ran past its time limit
    success = "success"

    def __str__(self) -> str:
        return self.value


LIVE = frozenset({State.queued, State.running})
TERMINAL = frozenset({State.error, State.stopped, State.expired, State.success})

# Allowed moves. A terminal state is final for an attempt: the first terminal state recorded wins (so a late
# `sync` cannot turn a user's stop into an error). Leaving a terminal state means a new attempt (resume/retry),
# which goes back to queued. running -> queued covers Slurm requeue/preemption.
_ALLOWED = {
    State.queued: {State.running, *TERMINAL},
    State.running: {State.queued, *TERMINAL},
    State.error: {State.queued},
    State.stopped: {State.queued},
    State.expired: {State.queued},
    State.success: {State.queued},
}


def can_transition(src: State | str, dst: State | str) -> bool:
    return State(dst) in _ALLOWED[State(src)]


def is_terminal(state: State | str) -> bool:
    return State(state) in TERMINAL


# ---------------------------------------------------------------------------------------------------- causes
# Why an attempt ended (or went back to the queue), machine-readable: `Ledger.transition(..., cause=...)` stores it in
# the `state` event's data["cause"]; `Ledger.causes` reads it back; `hpcft retry` decides on it (hpcft.jobs.control).
NODE_FAIL = "node_fail"  # a node of the allocation failed (Slurm NODE_FAIL)
PREEMPTED = "preempted"  # a higher-priority job took the nodes (Slurm PREEMPTED)
BOOT_FAIL = "boot_fail"  # a node did not boot (Slurm BOOT_FAIL)
OOM = "oom"  # killed for exceeding its memory (Slurm OUT_OF_MEMORY, or "Exceeded job memory limit" in its output)
WORKER_LOST = "worker_lost"  # Slurm: the job's worker died (killed) before it could record how its trainer ended
USER_STOP = "user_stop"  # `hpcft stop`, scancel, Slurm CANCELLED
TIMEOUT = "timeout"  # ran past its time limit (Slurm TIMEOUT / DEADLINE, the local supervisor's deadline)
SUBMIT_FAILED = "submit_failed"  # the executor refused the job (sbatch error): nothing ran
SUPERVISOR_GONE = "supervisor_gone"  # local executor: the supervisor process vanished (reboot, kill -9)
BAD_INPUT = "bad_input"  # the config or the data is wrong (trainer exit code 2)
DISK_FULL = "disk_full"  # the trainer could not write its run: filesystem full or quota spent (exit code 74)
REQUEUED = "requeued"  # Slurm requeued it without a failure we know of (`scontrol requeue`, a requeue policy)

CAUSES = frozenset({NODE_FAIL, PREEMPTED, BOOT_FAIL, OOM, WORKER_LOST, USER_STOP, TIMEOUT, SUBMIT_FAILED,
                    SUPERVISOR_GONE, BAD_INPUT, DISK_FULL, REQUEUED})


def exit_cause(returncode: int) -> str:
    """The cause for a trainer's exit: 'signal:N' for a negative (signal) return code (recorded with exit code
    128+N: `exitcodes.shell_code`; `hpcft retry --exit-codes 137` retries a SIGKILLed trainer), 'bad_input' for
    exitcodes.BAD_INPUT (2), 'disk_full' for exitcodes.DISK_FULL (74), else 'exit:N' (e.g. 'exit:1', 'exit:75' =
    saved at the time-limit warning)."""
    from hpcft import exitcodes

    rc = int(returncode)
    if rc < 0:
        return f"signal:{-rc}"
    if rc == exitcodes.BAD_INPUT:
        return BAD_INPUT
    if rc == exitcodes.DISK_FULL:
        return DISK_FULL
    return f"exit:{rc}"


def is_cause(value: str) -> bool:
    """A known cause name, or exit:N / signal:N."""
    kind, _, num = str(value).partition(":")
    return value in CAUSES or (kind in ("exit", "signal") and num.isdigit())
