"""What a trainer gets from the job that runs it: where to write, who it is in the world, how to report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class RunContext:
    output_dir: Path
    job_id: Optional[int] = None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    db_url: Optional[str] = None
    _ledger: Any = field(default=None, repr=False)
    _uuid: Optional[str] = field(default=None, repr=False)  # "" once looked up and not known

    @property
    def job_uuid(self) -> Optional[str]:
        """The job's identity (its ledger row's UUID, hpcft.rundir.identity), which its checkpoints carry and
        `hpcft.train.checkpoint.resolve_resume` checks: `HPCFT_JOB_UUID` when set, else looked up once in the ledger.
        None outside a tracked job, for a job made before the ledger recorded UUIDs, or when the ledger cannot say
        (then checkpoints are matched by the integer job id, as before)."""
        if self._uuid is None:
            self._uuid = os.environ.get("HPCFT_JOB_UUID") or self._recorded_uuid() or self._ledger_uuid() or ""
        return self._uuid or None

    def _recorded_uuid(self) -> Optional[str]:
        """The identity the run directory records (job.json) for this job id of this ledger: no database needed.
        Another ledger's job with the same integer id (two ledgers sharing a runs root) is not this job."""
        from hpcft.paths import db_url, public_db_url
        from hpcft.rundir.identity import read_identity

        found = read_identity(self.output_dir)
        if self.job_id is None or found is None or found.get("job_id") != self.job_id:
            return None
        if found.get("ledger") != public_db_url(self.db_url or db_url()):
            return None
        return str(found["uuid"])

    def _ledger_uuid(self) -> Optional[str]:
        if self.job_id is None:
            return None
        from hpcft.ledger.store import Ledger

        try:
            return Ledger(self.db_url).get(self.job_id).uuid
        except Exception:  # not in this ledger (a run started by hand with --job-id), or it does not answer
            return None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, output_dir: os.PathLike, job_id: Optional[int] = None) -> "RunContext":
        """Rank and world size from torchrun/DeepSpeed/the hpcft worker (RANK/WORLD_SIZE), else from Slurm's
        variables through the one mapping (`hpcft.slurm.env.dist_env`)."""
        env = os.environ
        if "RANK" not in env and "SLURM_PROCID" in env:
            from hpcft.slurm.env import dist_env

            env = dist_env(env, expand=None)
        rank = int(env.get("RANK", 0))
        world = int(env.get("WORLD_SIZE", 1))
        local = int(env.get("LOCAL_RANK", 0))
        return cls(Path(output_dir), job_id, rank, world, local, os.environ.get("HPCFT_DB_URL"))

    def event(self, kind: str, message: str = "", **data: Any) -> None:
        """Record an event for this job (main rank only; no-op outside a tracked job): into the run directory's
        journal (hpcft.rundir.journal), which the job's worker delivers to the ledger. A trainer run without a
        worker (by hand, with --job-id) delivers it itself. No ledger error ever reaches the training loop."""
        if not self.is_main or self.job_id is None:
            return
        if self._ledger is None:
            from hpcft.ledger.courier import JournaledLedger
            from hpcft.paths import db_url

            self._ledger = JournaledLedger(self.db_url or db_url(), self.job_id, self.output_dir)
        self._ledger.add_event(self.job_id, kind, message, **data)
        if os.environ.get("HPCFT_COURIER") != "worker":
            self._ledger.deliver_now()
