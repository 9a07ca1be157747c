"""Model assets: one row per published model version (`hpcft publish`, hpcft.registry). Its PostgreSQL grants,
row-level security policies and guard trigger are created by `hpcft admin init` (hpcft.ledger.team), not here.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = ("name", "state", "owner", "project", "job_id")


def _str():
    return sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def _ts():
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_assets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _str(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", _str(), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("owner", _str(), nullable=False),
        sa.Column("project", _str(), nullable=False),
        sa.Column("visibility", _str(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("source", _str(), nullable=False),
        sa.Column("kind", _str(), nullable=False),
        sa.Column("method", _str(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("path", _str(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("published_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_model_assets_name_version"),
    )
    for col in INDEXES:
        op.create_index(f"ix_model_assets_{col}", "model_assets", [col], unique=False)


def downgrade() -> None:
    for col in INDEXES:
        op.drop_index(f"ix_model_assets_{col}", table_name="model_assets")
    op.drop_table("model_assets")
