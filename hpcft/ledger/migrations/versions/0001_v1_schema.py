"""v1: the ledger as hpcft 0.1 created it with SQLModel.metadata.create_all (tables jobs and events, their
indexes). Ledgers made before migrations existed are stamped as this revision.

Frozen: plain SQLAlchemy types giving the same DDL as the models did (sqlmodel's AutoString is VARCHAR, VARCHAR(255)
on MariaDB/MySQL; its datetimes are DateTime(timezone=True): TIMESTAMP WITH TIME ZONE on PostgreSQL).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JOB_INDEXES = ("name", "owner", "project", "state", "resource_spec", "output_dir", "slurm_job_id", "array_job_id",
               "parent_id")
EVENT_INDEXES = ("job_id", "ts", "kind")


def _str():
    return sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def _ts():
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _str(), nullable=False),
        sa.Column("description", _str(), nullable=False),
        sa.Column("owner", _str(), nullable=False),
        sa.Column("project", _str(), nullable=False),
        sa.Column("method", _str(), nullable=False),
        sa.Column("state", _str(), nullable=False),
        sa.Column("state_reason", _str(), nullable=True),
        sa.Column("executor", _str(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("resources", sa.JSON(), nullable=True),
        sa.Column("resource_spec", _str(), nullable=False),
        sa.Column("output_dir", _str(), nullable=False),
        sa.Column("slurm_job_id", _str(), nullable=True),
        sa.Column("array_job_id", _str(), nullable=True),
        sa.Column("array_task_id", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("submitted_at", _ts(), nullable=True),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for col in JOB_INDEXES:
        op.create_index(f"ix_jobs_{col}", "jobs", [col], unique=False)
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("ts", _ts(), nullable=False),
        sa.Column("kind", _str(), nullable=False),
        sa.Column("message", _str(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    for col in EVENT_INDEXES:
        op.create_index(f"ix_events_{col}", "events", [col], unique=False)


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("jobs")
