"""Operations on existing jobs shared by the CLI commands (resume, retry)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hpcft.errors import HpcftError
from hpcft.states import State, is_terminal


def resume(ledger, job_id: int, checkpoint: Optional[str] = None, reason: Optional[str] = None):
    """A new attempt of an ended job, in its run directory, from its latest (or a chosen) checkpoint."""
    from omegaconf import OmegaConf

    from hpcft.executors import get_executor
    from hpcft.submit import write_config

    job = ledger.get(job_id)
    if not is_terminal(job.state):
        raise HpcftError(f"job {job_id} is {job.state}; only an ended job can be resumed (stop it first)")
    if checkpoint and not Path(checkpoint).is_dir():
        raise HpcftError(f"--checkpoint {checkpoint}: not a directory; see {job.output_dir}/checkpoints")
    cfg = OmegaConf.create(job.config)
    cfg.training.resume_from = str(Path(checkpoint).resolve()) if checkpoint else "latest"
    write_config(cfg, Path(job.output_dir))
    why = reason or f"resumed from {cfg.training.resume_from}"
    ledger.transition(job_id, State.queued, why, strict=True, config=OmegaConf.to_container(cfg))
    return get_executor(job.executor).submit(ledger, [ledger.get(job_id)])[0]


def retry_failed(ledger, max_attempts: int, states: List[str]) -> List[int]:
    """Resume every job in `states` whose attempt count is below max_attempts (for cron)."""
    retried = []
    for job in ledger.search(state=states):
        if job.attempt < max_attempts:
            resume(ledger, job.id, reason=f"retry {job.attempt + 1}/{max_attempts} after {job.state}: "
                                          f"{job.state_reason or ''}".rstrip(": "))
            retried.append(job.id)
    return retried
