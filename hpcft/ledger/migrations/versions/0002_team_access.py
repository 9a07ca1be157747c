"""Team access: a per-job `access` (none | ro | rw for the other members of the job's project), projects and their
members (Slurm accounts), site settings (`sharing`), administrators. The PostgreSQL roles, grants and row-level
security policies that enforce them are created by `hpcft admin init` (hpcft.ledger.team), not here: a migration runs as
whoever opens the ledger first.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _str():
    return sa.String().with_variant(sa.String(255), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("access", _str(), nullable=False, server_default="none"))
    op.create_table("projects", sa.Column("name", _str(), nullable=False), sa.PrimaryKeyConstraint("name"))
    op.create_table(
        "project_members",
        sa.Column("project", _str(), nullable=False),
        sa.Column("username", _str(), nullable=False),
        sa.ForeignKeyConstraint(["project"], ["projects.name"]),
        sa.PrimaryKeyConstraint("project", "username"),
    )
    op.create_index("ix_project_members_username", "project_members", ["username"], unique=False)
    op.create_table("settings", sa.Column("key", _str(), nullable=False), sa.Column("value", _str(), nullable=False),
                    sa.PrimaryKeyConstraint("key"))
    op.create_table("admins", sa.Column("username", _str(), nullable=False), sa.PrimaryKeyConstraint("username"))


def downgrade() -> None:
    op.drop_table("admins")
    op.drop_table("settings")
    op.drop_index("ix_project_members_username", table_name="project_members")
    op.drop_table("project_members")
    op.drop_table("projects")
    with op.batch_alter_table("jobs") as b:
        b.drop_column("access")
