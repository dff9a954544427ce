"""Initial schema: the store as xinfang wrote it before migrations (commit 5c8a9c8).

A database written by that code already has these tables (and no ``alembic_version``): the tables that exist
are checked for their columns and kept as they are, the missing ones (the matter tables of a database older
than matters) are created. A new database gets them all.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)  # UTCDateTime's column type (stored as UTC on every backend)


def _tables() -> list[tuple[str, list, dict[str, list[str]]]]:
    """(table, columns and constraints, {index name: columns}) in creation order."""
    return [
        ("petitions", [
            sa.Column("id", sa.String(128), nullable=False),
            sa.Column("title", sa.Text(), nullable=True),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("petitioner", sa.String(200), nullable=True),
            sa.Column("received_at", WHEN, nullable=True),
            sa.Column("channel", sa.String(64), nullable=True),
            sa.Column("text_hash", sa.String(64), nullable=False),
            sa.Column("request_hash", sa.String(64), nullable=False),
            sa.Column("labels", sa.JSON(), nullable=False),
            sa.Column("topic", sa.String(200), nullable=True),
            sa.Column("department", sa.String(200), nullable=True),
            sa.Column("needs_review", sa.Boolean(), nullable=False),
            sa.Column("repeat_count", sa.Integer(), nullable=False),
            sa.Column("models", sa.JSON(), nullable=False),
            sa.Column("response", sa.JSON(), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ], {"ix_petitions_created_at": ["created_at"], "ix_petitions_department": ["department"],
            "ix_petitions_needs_review": ["needs_review"], "ix_petitions_text_hash": ["text_hash"],
            "ix_petitions_topic": ["topic"]}),
        ("feedback", [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("petition_id", sa.String(128), nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("target_id", sa.String(128), nullable=True),
            sa.Column("label", sa.String(200), nullable=True),
            sa.Column("who", sa.String(100), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ], {"ix_feedback_created_at": ["created_at"], "ix_feedback_petition_id": ["petition_id"],
            "ix_feedback_target_id": ["target_id"]}),
        ("api_keys", [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("role", sa.String(20), nullable=False),
            sa.Column("key_hash", sa.String(64), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.Column("revoked_at", WHEN, nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("key_hash"),
            sa.UniqueConstraint("name"),
        ], {}),
        ("audit_log", [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("who", sa.String(100), nullable=False),
            sa.Column("action", sa.String(50), nullable=False),
            sa.Column("object_ids", sa.JSON(), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ], {"ix_audit_log_action": ["action"], "ix_audit_log_created_at": ["created_at"]}),
        ("matters", [
            sa.Column("id", sa.String(140), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.Column("updated_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ], {"ix_matters_status": ["status"], "ix_matters_updated_at": ["updated_at"]}),
        ("matter_members", [
            sa.Column("petition_id", sa.String(128), nullable=False),
            sa.Column("matter_id", sa.String(140), nullable=False),
            sa.Column("via", sa.String(128), nullable=True),
            sa.Column("probability", sa.Float(), nullable=True),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("joined_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("petition_id"),
        ], {"ix_matter_members_matter_id": ["matter_id"]}),
        ("matter_cannot_links", [
            sa.Column("a", sa.String(128), nullable=False),
            sa.Column("b", sa.String(128), nullable=False),
            sa.Column("who", sa.String(100), nullable=False),
            sa.Column("created_at", WHEN, nullable=False),
            sa.PrimaryKeyConstraint("a", "b"),
        ], {"ix_matter_cannot_links_b": ["b"]}),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, items, indexes in _tables():
        if name in existing:  # written before migrations: the same definitions, checked
            have = {c["name"] for c in inspector.get_columns(name)}
            missing = [c.name for c in items if isinstance(c, sa.Column) and c.name not in have]
            if missing:
                raise RuntimeError(f"table {name} lacks column(s) {', '.join(missing)}: not a xinfang store")
            continue
        op.create_table(name, *items)
        for index, columns in indexes.items():
            op.create_index(index, name, columns, unique=False)


def downgrade() -> None:
    for name, _items, _indexes in reversed(_tables()):
        op.drop_table(name)
