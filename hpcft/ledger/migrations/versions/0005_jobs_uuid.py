"""jobs.uuid: every job's unique identity (a UUID4 given at submit), written into its run directory (`job.json`,
hpcft.rundir.identity) and into its checkpoints, so that two ledgers sharing a runs root, or a ledger removed and
made again, never take another job's run directory or checkpoint for their own. Jobs made before this revision keep
no UUID (NULL): they resume by their integer id, as before.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("uuid", sa.String().with_variant(sa.String(255), "mysql", "mariadb"), nullable=True))
    op.create_index("ix_jobs_uuid", "jobs", ["uuid"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_jobs_uuid", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("uuid")
