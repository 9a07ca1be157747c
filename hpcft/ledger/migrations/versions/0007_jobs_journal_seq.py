"""jobs.journal_seq: how far the ledger has taken in the job's journal (`journal.jsonl` in its run directory,
hpcft.rundir.journal). The run directory is the record: a job appends every event and state change there first,
then delivers it to the ledger (hpcft.ledger.deliver); each delivery applies the records numbered above
journal_seq and moves it in the same transaction, so a record is applied exactly once however many processes (the
worker, the trainer, `hpcft sync`, `hpcft admin rebuild`) deliver the same journal, and however often. 0: nothing
taken yet (every job made before this revision).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("journal_seq", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("journal_seq")
