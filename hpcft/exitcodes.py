"""Exit codes of a trainer process (`python -m hpcft.train.entry`), read by the worker that supervises it.

Torch-free: the worker, the CLI and cron `retry` import it.
"""

SUCCESS = 0
FAILED = 1  # an unexpected failure (an exception in the trainer): retried only when asked (`retry --exit-codes 1`)
BAD_INPUT = 2  # the config or the data is wrong: retrying cannot help, `hpcft retry` never does
SAVED_AT_WARNING = 75  # (EX_TEMPFAIL) the time-limit warning arrived: a checkpoint was saved, training can go on

MEANING = {
    SUCCESS: "finished",
    FAILED: "failed",
    BAD_INPUT: "refused its config or data",
    SAVED_AT_WARNING: "saved a checkpoint at the time-limit warning and stopped",
}
