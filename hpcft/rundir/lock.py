"""One trainer per run directory and rank: an exclusive `fcntl.flock` held for the trainer's whole life.

`hpcft.train.entry` takes the lock of its global rank before it touches anything in the run directory. The ranks of
one job share the run directory and each holds its own lock (`.trainer-rank-<R>.lock`); two lineages of the same
job (a retry or a resume started while an old trainer still lives) collide on the same rank, and the second one is
refused with ONE line naming the holder (pid, host, job id, since). The kernel releases a flock when the last
descriptor of it closes, so a trainer that dies (even SIGKILLed) frees its rank at once: nothing to clean up.
Torch-free; files only.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

from hpcft.errors import HpcftError
from hpcft.rundir.files import make_run_dir
from hpcft.timefmt import format_duration


class RunDirBusy(HpcftError):
    """Another live trainer holds this run directory's lock for the same rank."""


def lock_path(run_dir: os.PathLike, rank: int = 0) -> Path:
    return Path(run_dir) / f".trainer-rank-{int(rank)}.lock"


def _holder_text(info: Dict[str, Any]) -> str:
    since = info.get("since")
    ago = ""
    if isinstance(since, (int, float)):
        ago = f" ({format_duration(max(0, int(time.time() - since)))} ago)"
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))
    job = f", job {info['job_id']}" if info.get("job_id") is not None else ""
    slurm = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{job}{slurm}, since {since or '?'}{ago}"


class TrainerLock:
    """The held lock (keep the object alive for as long as the trainer runs; `release()` or process exit frees it)."""

    def __init__(self, path: Path, fd: int, info: Dict[str, Any]) -> None:
        self.path, self.fd, self.info = path, fd, info

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_holder(run_dir: os.PathLike, rank: int = 0) -> Optional[Dict[str, Any]]:
    """What the lock file of `rank` says about its (last) holder, or None."""
    try:
        return json.loads(lock_path(run_dir, rank).read_text() or "null")
    except (OSError, ValueError):
        return None


def acquire(run_dir: os.PathLike, rank: int = 0, job_id: Optional[int] = None) -> TrainerLock:
    """Take the exclusive lock of `rank` in `run_dir` (made, private, when missing) and record this process in it;
    raise RunDirBusy (one line naming the holder) when another process holds it. Never waits."""
    if not Path(run_dir).is_dir():
        make_run_dir(run_dir)
    path = lock_path(run_dir, rank)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "null") or {}
        except ValueError:  # the holder is writing it this very moment
            info = {}
        os.close(fd)
        raise RunDirBusy(f"run directory {Path(run_dir)} is in use by another trainer of rank {rank}: "
                         f"{_holder_text(info)}; not starting") from None
    info = {"pid": os.getpid(), "host": os.uname().nodename, "job_id": job_id, "rank": int(rank),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "since": round(time.time(), 3)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return TrainerLock(path, fd, info)
