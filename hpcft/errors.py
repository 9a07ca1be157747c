"""Errors shown to users as one line (what was wrong and how to fix it); the CLI exits non-zero on them."""


class HpcftError(Exception):
    exit_code = 1


class ConfigError(HpcftError):
    """A job config that must not be submitted."""

    exit_code = 2


class NotFound(HpcftError):
    exit_code = 3


class StateError(HpcftError):
    """A state change the job's current state does not allow."""

    exit_code = 4


class SchedulerError(HpcftError):
    """The scheduler (Slurm) refused or failed a request."""

    exit_code = 5


class LedgerUnreachable(HpcftError):
    """The ledger's database server refused the connection, or did not answer within its connect timeout (down, a
    network partition, a frozen host): try again later; running jobs go on and keep their records in their run
    directories (hpcft.rundir.journal)."""

    exit_code = 6
