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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, output_dir: os.PathLike, job_id: Optional[int] = None) -> "RunContext":
        """Rank and world size from torchrun/DeepSpeed (RANK/WORLD_SIZE) or Slurm (SLURM_PROCID/SLURM_NTASKS)."""
        env = os.environ
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
        world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
        local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
        return cls(Path(output_dir), job_id, rank, world, local, env.get("HPCFT_DB_URL"))

    def event(self, kind: str, message: str = "", **data: Any) -> None:
        """Record an event for this job in the ledger (main rank only; no-op outside a tracked job)."""
        if not self.is_main or self.job_id is None:
            return
        if self._ledger is None:
            from hpcft.ledger import Ledger

            self._ledger = Ledger(self.db_url)
        self._ledger.add_event(self.job_id, kind, message, **data)
