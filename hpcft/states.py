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
