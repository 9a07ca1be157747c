"""Exit codes of a trainer process (`python -m hpcft.train.entry`), read by the worker that supervises it.

Torch-free: the worker, the CLI and cron `retry` import it.
"""

SUCCESS = 0
FAILED = 1  # an unexpected failure (an exception in the trainer): retried only when asked (`retry --exit-codes 1`)
BAD_INPUT = 2  # the config or the data is wrong: retrying cannot help, `hpcft retry` never does
RUN_DIR_BUSY = 73  # (EX_CANTCREAT) another live trainer of the same rank holds the run directory: nothing touched
DISK_FULL = 74  # (EX_IOERR) a write of the run failed: its filesystem is full or the quota spent (one line)
SAVED_AT_WARNING = 75  # (EX_TEMPFAIL) the time-limit warning arrived: a checkpoint was saved, training can go on
SIGNAL_BASE = 128  # a process killed by signal N is reported (recorded, exited with) as 128 + N, as a shell does

MEANING = {
    SUCCESS: "finished",
    FAILED: "failed",
    BAD_INPUT: "refused its config or data",
    RUN_DIR_BUSY: "refused to start: another trainer holds its run directory",
    DISK_FULL: "could not write its run: disk full",
    SAVED_AT_WARNING: "saved a checkpoint at the time-limit warning and stopped",
}


def shell_code(returncode: int) -> int:
    """A subprocess return code as a shell reports it: -N (killed by signal N) -> 128 + N; others unchanged."""
    rc = int(returncode)
    return SIGNAL_BASE - rc if rc < 0 else rc
