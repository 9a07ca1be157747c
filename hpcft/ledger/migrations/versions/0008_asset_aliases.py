"""Model asset aliases and tags: `model_assets.tags` (KEY=VALUE on a version, `hpcft models tag`) and the table
`model_aliases` (NAME@ALIAS -> one version of NAME, `hpcft models alias`; `asset:NAME@ALIAS` resolves through it).
A version may also be `corrupt` now (a state value, no schema change). The PostgreSQL policies, guard trigger and
grants of the new table are created by `hpcft admin init` (hpcft.ledger.team), not here.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _str():
    return sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def _ts():
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("model_assets", sa.Column("tags", sa.JSON(), nullable=True))
    op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _str(), nullable=False),
        sa.Column("alias", _str(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("owner", _str(), nullable=False),
        sa.Column("project", _str(), nullable=False),
        sa.Column("visibility", _str(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "alias", name="uq_model_aliases_name_alias"),
    )
    op.create_index("ix_model_aliases_name", "model_aliases", ["name"], unique=False)
    op.create_index("ix_model_aliases_owner", "model_aliases", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_model_aliases_owner", table_name="model_aliases")
    op.drop_index("ix_model_aliases_name", table_name="model_aliases")
    op.drop_table("model_aliases")
    with op.batch_alter_table("model_assets") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("tags")
