"""snapshot_judgment: which judgments each snapshot used, so a purge follows lineage instead of timestamps

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- ``snapshot_judgment (snapshot_id, judgment_id)``: one row per judgment a snapshot used (its aggregation's votes
  and the reviewers' decisions). The primary key serves "the judgments of a snapshot"; the index on judgment_id
  serves "the snapshots that used these judgments" (a purge). Both foreign keys cascade.
- ``snapshot.judgments_recorded``: true for snapshots made from now on. Snapshots made before this migration have
  no rows in the table (which judgments they used was never stored), so a purge marks every one of them whose set
  lost judgments.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshot_judgment",
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("judgment_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["snapshot_id"], ["snapshot.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["judgment_id"], ["judgment.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("snapshot_id", "judgment_id"),
    )
    op.create_index("ix_snapshot_judgment_judgment_id", "snapshot_judgment", ["judgment_id"], unique=False)
    op.add_column("snapshot", sa.Column("judgments_recorded", sa.Boolean(), nullable=False, server_default=sa.text("false")))


def downgrade() -> None:
    # Not a batch (copy-and-rename) operation, for the reason migration 0002 gives; SQLite 3.35+ drops in place.
    op.execute("ALTER TABLE snapshot DROP COLUMN judgments_recorded")
    op.drop_index("ix_snapshot_judgment_judgment_id", table_name="snapshot_judgment")
    op.drop_table("snapshot_judgment")
