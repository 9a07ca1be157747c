"""The contract every executor fulfils. Jobs are ledger rows (state queued, config.yaml already written to
`job.output_dir`); the executor starts them and records its ids (pid / Slurm job id) on the rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

if TYPE_CHECKING:
    from hpcft.ledger.store import Job, Ledger


class Executor:
    name: str = "?"

    def submit(self, ledger: "Ledger", jobs: Sequence["Job"]) -> List["Job"]:
        """Start these jobs (several = one sweep: Slurm submits them as ONE array). Returns without waiting."""
        raise NotImplementedError

    def stop(self, ledger: "Ledger", job: "Job") -> None:
        """Ask the job to stop; its state becomes `stopped` (by the job itself or the next sync)."""
        raise NotImplementedError

    def sync(self, ledger: "Ledger", jobs: Sequence["Job"]) -> int:
        """Bring the ledger's states of these live jobs in line with reality; returns how many changed."""
        raise NotImplementedError
