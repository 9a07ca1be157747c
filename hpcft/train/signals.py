"""The time-limit warning as a flag that all ranks agree on.

Slurm sends `SIGUSR1` `resources.signal_grace` seconds before a job's time limit (`--signal=USR1@N`); the local
executor does the same before its deadline. The handler only sets a flag. At each step boundary the loop asks
`WarningFlag.agreed()`: one tiny all-reduce (max) so that every rank of a DDP/DeepSpeed job sees the signal at the
same step, saves the same checkpoint collectively and stops together, even if the signal reached only some ranks.
"""

from __future__ import annotations

import signal
from typing import Optional

WARNING_SIGNAL = signal.SIGUSR1


class WarningFlag:
    def __init__(self) -> None:
        self.raised = False
        self.signum: Optional[int] = None
        self._agreed = False

    def install(self, signals=(WARNING_SIGNAL,)) -> "WarningFlag":
        for s in signals:
            signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum, _frame) -> None:
        self.raised = True
        self.signum = signum

    def agreed(self) -> bool:
        """True on every rank once any rank has the flag (a collective: call it on every rank at the same step)."""
        if self._agreed:
            return True
        from hpcft.train import distributed as dist

        self._agreed = dist.all_reduce_max(1.0 if self.raised else 0.0) > 0
        return self._agreed


_early: Optional[WarningFlag] = None


def install_early() -> WarningFlag:
    """The first thing `hpcft.train.entry` does, before importing torch: from here on the warning is caught (the
    trainer starts with it ignored, see `hpcft.jobs.worker.WarningRelay`), and one that arrives while the model is still
    being built is kept for the trainer's flag (`install`)."""
    global _early
    _early = WarningFlag().install()
    return _early


def install() -> WarningFlag:
    """The trainer's warning flag, with the handler installed (call once, in the main thread); raised already when
    the warning came after `install_early`."""
    global _early
    flag = WarningFlag().install()
    if _early is not None and _early.raised:
        flag.raised, flag.signum = True, _early.signum
    _early = None
    return flag


class SavedAtWarning(Exception):
    """Raised by a trainer after it saved a checkpoint on the warning and stopped: `hpcft.train.entry` turns it into
    exit code `hpcft.exitcodes.SAVED_AT_WARNING` (75) and the worker expires or requeues the job from there."""

    def __init__(self, step: int, checkpoint: object = None):
        super().__init__(f"time-limit warning: checkpoint of step {step} saved at {checkpoint}; stopping")
        self.step = step
        self.checkpoint = checkpoint
