"""Change feed and stored vectors: `changes` (a sequence number per write) and `petition_vectors`.

Existing petitions get one `petition` change each (in creation order), so a replica's index catches up from
the feed; their vectors are not stored (a replica embeds those from the text). On PostgreSQL a statement
trigger on `changes` sends NOTIFY xinfang_changes, delivered at commit, which wakes the replicas.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHANNEL = "xinfang_changes"


def upgrade() -> None:
    op.create_table(
        "petition_vectors",
        sa.Column("petition_id", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("petition_id"),
    )
    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("object_id", sa.String(140), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sqlite_autoincrement=True,
    )
    op.execute("INSERT INTO changes (kind, object_id, created_at) "
               "SELECT 'petition', id, created_at FROM petitions ORDER BY created_at, id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE OR REPLACE FUNCTION xinfang_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('{CHANNEL}', ''); RETURN NULL; END $$""")
        op.execute("CREATE TRIGGER changes_notify AFTER INSERT ON changes "
                   "FOR EACH STATEMENT EXECUTE FUNCTION xinfang_notify_change()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS changes_notify ON changes")
        op.execute("DROP FUNCTION IF EXISTS xinfang_notify_change()")
    op.drop_table("changes")
    op.drop_table("petition_vectors")
