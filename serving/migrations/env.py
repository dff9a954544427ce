"""Alembic environment of the store: run by `xinfang db upgrade` (xinfang.serving.schema) on the store's own
engine (`config.attributes["connection"]`), or on `sqlalchemy.url` when run by the alembic command."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from xinfang.serving.tables import Base

config = context.config


def run(connection) -> None:
    # batch mode: SQLite cannot ALTER most things; alembic rebuilds the table instead
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
