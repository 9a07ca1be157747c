"""Executors put ledger jobs onto compute: `local` (this machine) or `slurm` (submitit + sbatch).

`auto` picks Slurm when `sbatch` is on PATH, else local. Each backend lives in its own module and is imported
only when used.
"""

from __future__ import annotations

import shutil

from hpcft.errors import ConfigError
from hpcft.jobs.executors.base import Executor

NAMES = ("local", "slurm")


def resolve_name(name: str) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if name not in NAMES:
        raise ConfigError(f"executor={name}: unknown executor; use executor=auto|local|slurm")
    return name


def get_executor(name: str) -> Executor:
    name = resolve_name(name)
    if name == "local":
        from hpcft.jobs.executors.local import LocalExecutor

        return LocalExecutor()
    from hpcft.jobs.executors.slurm import SlurmExecutor

    return SlurmExecutor()


__all__ = ["Executor", "get_executor", "resolve_name", "NAMES"]
