"""One live ledger row per Slurm job: a unique index on jobs.slurm_job_id over the queued and running rows
(`ix_jobs_slurm_job_id_live`; an array task's id, `123_4`, is its own). A second row carrying a live job's Slurm id
is how a user could point an operator's `hpcft admin apply` at a Slurm job that is not theirs; the database now
refuses it. Ended rows keep their ids and may share them: Slurm's ids start again after a cluster is remade and wrap
at MaxJobId, and a new job must still be recordable then. Live rows already sharing an id (a ledger older than this
revision) keep it on the newest row only: the older rows lose it, each with an event saying which job holds it now.
The index is partial, which PostgreSQL and SQLite have and MariaDB has not: there (no row-level security either)
`hpcft admin apply`'s check of Slurm's own record is what refuses a forged row. It lives in this migration only
(hpcft.ledger.migrations.MIGRATION_ONLY_INDEXES), not in the model: SQLAlchemy cannot say "partial, where the
dialect has it".

Revision ID: 0006
Revises: 0005
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEX = "ix_jobs_slurm_job_id_live"
LIVE = "state IN ('queued', 'running')"


def _clear_duplicates() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text(f"SELECT id, slurm_job_id, attempt FROM jobs WHERE slurm_job_id IS NOT NULL AND {LIVE} "
                                "ORDER BY id DESC")).all()
    holder = {}
    events = sa.table("events", sa.column("job_id", sa.Integer), sa.column("ts", sa.DateTime),
                      sa.column("kind", sa.String), sa.column("message", sa.String),
                      sa.column("attempt", sa.Integer), sa.column("data", sa.JSON))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for job_id, sid, attempt in rows:
        if sid not in holder:
            holder[sid] = job_id
            continue
        conn.execute(sa.text("UPDATE jobs SET slurm_job_id = NULL WHERE id = :i"), {"i": job_id})
        conn.execute(events.insert().values(
            job_id=job_id, ts=now, kind="slurm_id_cleared", attempt=attempt or 1,
            message=f"Slurm job id {sid} cleared (migration 0006): job {holder[sid]} holds it",
            data={"slurm_job_id": sid, "held_by": holder[sid]}))


def upgrade() -> None:
    if op.get_bind().dialect.name not in ("postgresql", "sqlite"):
        return
    _clear_duplicates()
    op.execute(f"CREATE UNIQUE INDEX {INDEX} ON jobs (slurm_job_id) WHERE {LIVE}")


def downgrade() -> None:
    if op.get_bind().dialect.name in ("postgresql", "sqlite"):
        op.execute(f"DROP INDEX {INDEX}")
