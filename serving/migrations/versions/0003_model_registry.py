"""The model registry in the store: versions, per-task promotion state, events, and the bundle archives and
evaluation files as content-addressed blobs (chunked), so every replica on any machine sees one registry.

A registry kept as files (``<data dir>/registry/registry.json``) is imported by `xinfang models import-files`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table("registry_state",
                    sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
                    sa.Column("revision", sa.Integer(), nullable=False),
                    sa.Column("updated_at", WHEN, nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    op.create_table("registry_versions",
                    sa.Column("version", sa.String(64), nullable=False),
                    sa.Column("task", sa.String(32), nullable=False),
                    sa.Column("record", sa.JSON(), nullable=False),
                    sa.PrimaryKeyConstraint("version"))
    op.create_index("ix_registry_versions_task", "registry_versions", ["task"], unique=False)
    op.create_table("registry_tasks",
                    sa.Column("task", sa.String(32), nullable=False),
                    sa.Column("promoted", sa.String(64), nullable=True),
                    sa.Column("state", sa.JSON(), nullable=False),
                    sa.PrimaryKeyConstraint("task"))
    op.create_table("registry_events",
                    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
                    sa.Column("event", sa.JSON(), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    op.create_table("registry_blobs",
                    sa.Column("sha256", sa.String(64), nullable=False),
                    sa.Column("size", sa.BigInteger(), nullable=False),
                    sa.Column("chunks", sa.Integer(), nullable=False),
                    sa.Column("created_at", WHEN, nullable=False),
                    sa.PrimaryKeyConstraint("sha256"))
    op.create_table("registry_blob_chunks",
                    sa.Column("sha256", sa.String(64), nullable=False),
                    sa.Column("seq", sa.Integer(), nullable=False),
                    sa.Column("data", sa.LargeBinary(), nullable=False),
                    sa.PrimaryKeyConstraint("sha256", "seq"))


def downgrade() -> None:
    for name in ("registry_blob_chunks", "registry_blobs", "registry_events", "registry_tasks",
                 "registry_versions", "registry_state"):
        op.drop_table(name)
