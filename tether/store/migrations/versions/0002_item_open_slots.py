"""item.open_slots: the queue's per-item count of free slots, with the indexes that make "next item" one lookup

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

``open_slots = project.overlap - (assignments of the item that are pending or done)``. Pending assignments hold
their slot until the queue marks them expired (see tether.store.campaigns), so the count is exact for the rows as
stored; this migration computes it once for existing items. Indexes:
- ``ix_item_open`` (project_id, is_gold, id) over items with open slots: next item = first entry not yet given to
  the annotator, instead of a scan of every item with a count of its assignments;
- ``ix_item_project_gold`` (project_id, is_gold, id): gold items in id order without walking ordinary ones;
- ``ix_assignment_state_expires`` (state, expires_at): pending assignments whose time ran out, found directly.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPEN = sa.text("open_slots > 0")


def upgrade() -> None:
    op.add_column("item", sa.Column("open_slots", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        """
        UPDATE item SET open_slots = (SELECT project.overlap FROM project WHERE project.id = item.project_id)
            - (SELECT count(*) FROM assignment WHERE assignment.item_id = item.id AND assignment.state IN ('pending', 'done'))
        """
    )
    # Created in this order on purpose: between two indexes that serve a query equally well, SQLite's planner
    # (without ANALYZE statistics) takes the one created last, and ordinary items must come from the partial one.
    op.create_index("ix_item_project_gold", "item", ["project_id", "is_gold", "id"], unique=False)
    op.create_index("ix_item_open", "item", ["project_id", "is_gold", "id"], unique=False, sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_index("ix_assignment_state_expires", "assignment", ["state", "expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_assignment_state_expires", table_name="assignment")
    op.drop_index("ix_item_project_gold", table_name="item")
    op.drop_index("ix_item_open", table_name="item")
    # Not a batch (copy-and-rename) operation: with foreign keys on, dropping the old item table would cascade to
    # every assignment, judgment and item_completion row. SQLite 3.35+ drops a plain column in place.
    op.execute("ALTER TABLE item DROP COLUMN open_slots")
