"""The ONE mapping from Slurm's environment to torch.distributed's (and to the job's identity).

Pure functions of an environment mapping (tests pass dicts). The worker calls `dist_env` in every task and
exports the result to the trainer; `RunContext.from_env` reads the result (or torchrun's variables).
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Callable, Dict, Mapping, Optional


def master_port(job_id: str, array_task: Optional[str] = None) -> int:
    """The rendezvous port of a job: derived from its id (every task of the job computes the same one)."""
    return 20000 + (int(job_id) * 7 + int(array_task or 0)) % 20000


def first_host(nodelist: str, expand: Optional[Callable[[str], list]] = None) -> str:
    """First host of a Slurm node list ("n[1-2],gpu3" -> "n1"); `expand` (e.g. `scontrol show hostnames`) wins
    when given and it answers."""
    if expand is not None:
        hosts = expand(nodelist)
        if hosts:
            return hosts[0]
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    if "[" in head:
        prefix, rng = head.split("[", 1)
        return prefix + re.split(r"[-,\]]", rng)[0]
    return head


def scontrol_hostnames(nodelist: str) -> list:
    try:
        return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=20, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []


def dist_env(environ: Mapping[str, str] = os.environ,
             expand: Optional[Callable[[str], list]] = scontrol_hostnames) -> Dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT for a Slurm task. Values already
    in the environment (MASTER_ADDR/MASTER_PORT set by an admin's script) win."""
    job = environ.get("SLURM_ARRAY_JOB_ID") or environ.get("SLURM_JOB_ID") or "0"
    task = environ.get("SLURM_ARRAY_TASK_ID") if environ.get("SLURM_ARRAY_JOB_ID") else None
    return {
        "RANK": environ.get("SLURM_PROCID", "0"),
        "WORLD_SIZE": environ.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0].split(",")[0],
        "MASTER_ADDR": environ.get("MASTER_ADDR")
        or first_host(environ.get("SLURM_JOB_NODELIST", "localhost"), expand),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(master_port(job, task)),
    }


def restart_count(environ: Mapping[str, str] = os.environ) -> int:
    """How many times Slurm restarted this job (requeue after node failure, preemption, `scontrol requeue`)."""
    try:
        return int(environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def slurm_ids(environ: Mapping[str, str] = os.environ) -> Dict[str, object]:
    """The ledger's view of this Slurm job's id ("123", or "123_4" for an array task)."""
    array_job = environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        task = environ.get("SLURM_ARRAY_TASK_ID", "0")
        return {"slurm_job_id": f"{array_job}_{task}", "array_job_id": array_job, "array_task_id": int(task)}
    return {"slurm_job_id": environ.get("SLURM_JOB_ID")}
