"""accounts: server-side web sessions, login throttling, token scope and expiry, case-insensitive user names

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- ``web_session``: one row per signed-in browser (the cookie carries a random id; the row holds its sha256).
  Cookies of the old format (signed, stateless) no longer open a session: everyone signs in once more.
- ``login_throttle``: failed sign-ins per account and per client address, shared by every worker and host.
- ``api_token.scope`` ("full" for existing tokens), ``api_token.expires_at`` and ``api_token.issued_by``.
  Existing tokens never expired; they now expire 90 days after this upgrade (the default lifetime of a new one).
- ``user.name_key``: the name NFKC-normalized and case-folded, unique among login accounts. Computed here in
  Python (SQL's lower() knows neither NFKC nor full case folding). Where existing login accounts differ only in
  case (``ADMIN1`` and ``admin1``), the oldest keeps the key; the others keep their rows, sign in with their exact
  name, and the upgrade names them on stderr so an admin can deactivate the extra ones. Imported annotators
  (role "external") get no key: their names are data, and two that differ in case are two people.
"""

import sys
import unicodedata
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LEGACY_TOKEN_DAYS = 90


def _name_key(name: str) -> str:
    # The same rule as tether.store.accounts.name_key, kept here so this migration never changes with the code.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("id_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
    )
    op.create_index("ix_web_session_user_id", "web_session", ["user_id"])
    op.create_index("ix_web_session_expires_at", "web_session", ["expires_at"])
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_login_throttle_last_failure_at", "login_throttle", ["last_failure_at"])

    op.add_column("api_token", sa.Column("scope", sa.String(20), nullable=False, server_default="full"))
    op.add_column("api_token", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_token", sa.Column("issued_by", sa.String(200), nullable=True))
    api_token = sa.table("api_token", sa.column("expires_at", sa.DateTime(timezone=True)))
    op.execute(api_token.update().values(expires_at=datetime.now(timezone.utc) + timedelta(days=LEGACY_TOKEN_DAYS)))

    op.add_column("user", sa.Column("name_key", sa.String(200), nullable=True))
    conn = op.get_bind()
    user = sa.table("user", sa.column("id", sa.Integer()), sa.column("name", sa.String()), sa.column("role", sa.String()),
                    sa.column("name_key", sa.String()))
    taken: dict[str, str] = {}
    for user_id, name in conn.execute(sa.select(user.c.id, user.c.name).where(user.c.role != "external").order_by(user.c.id)).all():
        key = _name_key(name)
        if key in taken:
            sys.stderr.write(f"note: user {name!r} differs from {taken[key]!r} only in case or form; both kept, {name!r} signs in "
                             "with its exact name. Deactivate the one that is not in use.\n")
            continue
        taken[key] = name
        conn.execute(user.update().where(user.c.id == user_id).values(name_key=key))
    op.create_index("ux_user_name_key", "user", ["name_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_user_name_key", table_name="user")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy: with foreign keys on, dropping the old
    # user table would cascade to every judgment (see 0002).
    op.execute('ALTER TABLE "user" DROP COLUMN name_key')
    for column in ("issued_by", "expires_at", "scope"):
        op.execute(f"ALTER TABLE api_token DROP COLUMN {column}")
    op.drop_index("ix_login_throttle_last_failure_at", table_name="login_throttle")
    op.drop_table("login_throttle")
    op.drop_index("ix_web_session_expires_at", table_name="web_session")
    op.drop_index("ix_web_session_user_id", table_name="web_session")
    op.drop_table("web_session")
