"""`hpcft admin rebuild`: make a lost ledger's jobs and events again from the run directories (the record).

Every run directory under the runs root that holds an identity (`job.json`, hpcft.rundir.identity) is a job:
- a job the ledger has (same UUID) gets what its journal holds beyond the row (hpcft.ledger.deliver);
- a job the ledger lacks is made again: its row from `config.yaml` (the fields a submit records:
  hpcft.ledger.record.ledger_fields), its identity (UUID, owner, creation time, and its integer id when that is
  still free), then its whole journal replayed through the one state machine: states, causes, Slurm ids and times
  as the job itself wrote them, every event once.
Directories of another ledger (job.json names another ledger URL) are left alone unless `everything` is asked.
Run it again at any time: it changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hpcft.rundir import identity as ident
from hpcft.rundir.journal import parse_ts


@dataclass
class Rebuilt:
    made: List[int] = field(default_factory=list)  # jobs made again (their ids)
    updated: List[int] = field(default_factory=list)  # jobs that took journal records
    skipped: List[str] = field(default_factory=list)  # "dir: why"


def _row_by_uuid(ledger: Any, uuid: str) -> Optional[Any]:
    from sqlmodel import select

    from hpcft.ledger.store import Job

    with ledger.read() as s:
        return s.exec(select(Job).where(Job.uuid == uuid)).first()


def _id_free(ledger: Any, job_id: Any) -> bool:
    from hpcft.ledger.store import Job

    if not isinstance(job_id, int):
        return False
    with ledger.read() as s:
        return s.get(Job, job_id) is None


def _make_row(ledger: Any, run: Path, found: dict) -> Any:
    from omegaconf import OmegaConf

    from hpcft.ledger.record import ledger_fields
    from hpcft.states import State

    cfg = OmegaConf.load(run / "config.yaml")
    fields = ledger_fields(cfg)
    created = parse_ts(found.get("created"))
    extra = {"id": found["job_id"]} if _id_free(ledger, found.get("job_id")) else {}
    executor = str(cfg.get("executor") or "local")
    job = ledger.create_job(**fields, **extra, uuid=found["uuid"], owner=str(found.get("owner") or ledger.user),
                            executor=executor if executor in ("local", "slurm") else "local", output_dir=str(run),
                            state=State.queued.value, **({"created_at": created, "submitted_at": created}
                                                          if created else {}))
    ledger.add_event(job.id, "rebuilt", f"made again from its run directory {run} by `hpcft admin rebuild`",
                     job_id_before=found.get("job_id"))
    return job


def _slurm_ids(ledger: Any, job_id: int, run: Path) -> None:
    """A job made again takes the Slurm ids its journal names last (the submit's `slurm` event, or a start), when
    the replay left none: `hpcft sync` asks Slurm about it by that id, as before the loss."""
    from hpcft.rundir import journal

    ids: dict = {}
    for rec in journal.read(run):
        data = rec.get("data") if rec.get("op") == "event" and rec.get("kind") == "slurm" else rec.get("fields")
        if isinstance(data, dict) and data.get("slurm_job_id"):
            ids = {k: data[k] for k in ("slurm_job_id", "array_job_id", "array_task_id") if data.get(k) is not None}
    row = ledger.get(job_id)
    if ids and not row.slurm_job_id and row.executor == "slurm":
        ledger.update(job_id, **ids)


def _bump_sequence(ledger: Any) -> None:
    """PostgreSQL: rows made with their old ids leave the id sequence behind; move it past them."""
    if not ledger.url.startswith(("postgresql", "postgres")):
        return
    from sqlalchemy import text

    ledger.write(lambda s: s.execute(text("SELECT setval(pg_get_serial_sequence('jobs', 'id'), "
                                          "GREATEST((SELECT COALESCE(MAX(id), 1) FROM jobs), 1))")))


def rebuild(ledger: Any, root: Path, everything: bool = False) -> Rebuilt:
    from hpcft.ledger.deliver import ahead, deliver
    from hpcft.paths import public_db_url

    out = Rebuilt()
    mine = public_db_url(ledger.url)
    for run in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        found = ident.read_identity(run)
        if found is None:
            continue
        if not everything and found.get("ledger") and found["ledger"] != mine:
            out.skipped.append(f"{run}: recorded in another ledger ({found['ledger']})")
            continue
        try:
            row = _row_by_uuid(ledger, found["uuid"])
            if row is None:
                if not (run / "config.yaml").is_file():
                    out.skipped.append(f"{run}: no config.yaml")
                    continue
                row = _make_row(ledger, run, found)
                out.made.append(row.id)
            if ahead(row):
                deliver(ledger, row.id, run)
                if row.id not in out.made:
                    out.updated.append(row.id)
            if row.id in out.made:
                _slurm_ids(ledger, row.id, run)
        except Exception as e:  # one unreadable directory never stops the rest
            out.skipped.append(f"{run}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    if out.made:
        _bump_sequence(ledger)
    return out
