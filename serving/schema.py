"""The store's schema version: Alembic migrations in serving/migrations/ (SQLite and PostgreSQL).

`xinfang db upgrade` brings a database to the code's head revision; the service and the CLI refuse a database
at any other revision (`SchemaError`, one line naming the command). A brand-new database -- no store tables
and no revision, as the embedded SQLite default is on a first start -- is created at head on first open.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from xinfang.errors import XinfangError
from xinfang.serving.tables import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
UPGRADE = "xinfang db upgrade"


log = logging.getLogger("xinfang.serving")
# alembic logs each plugin (at import) and each connection's dialect at INFO; `xinfang db` and `check` say what
# was done. Set before alembic is imported (below, where it is used).
logging.getLogger("alembic.runtime").setLevel(logging.WARNING)


class SchemaError(XinfangError):
    """The database is not at the code's schema revision (the message names the command to run)."""


def alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


@lru_cache(maxsize=1)
def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def store_tables(engine: Engine) -> set[str]:
    """The store's tables that exist in the database."""
    return set(inspect(engine).get_table_names()) & set(Base.metadata.tables)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to `revision` in one transaction per step; returns (revision before, revision after)."""
    before = current_revision(engine)
    if before is not None and before not in known_revisions():
        raise SchemaError(newer_message(before))
    from alembic import command

    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return before, current_revision(engine)


def newer_message(rev: str) -> str:
    return (f"schema revision {rev} is newer than this xinfang (head {head_revision()}): "
            "run a xinfang that has it, or restore a backup taken before")


def check(engine: Engine, where: str, create_empty: bool = True) -> None:
    """Refuse a database not at head; create a brand-new (empty) one at head when `create_empty`."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    if current is None and not store_tables(engine):
        if not create_empty:
            raise SchemaError(f"{where}: no store here yet: run `{UPGRADE}` to create it")
        try:
            upgrade(engine)
        except Exception:
            if current_revision(engine) != head:  # another process creating it at the same time is fine
                raise
        log.info("new store %s created at schema revision %s", where, head)
        return
    if current is None:
        raise SchemaError(f"{where}: database written before schema migrations (no revision): "
                          f"run `{UPGRADE}` (same --data-dir / --database-url)")
    if current not in known_revisions():
        raise SchemaError(f"{where}: {newer_message(current)}")
    raise SchemaError(f"{where}: schema revision {current}, this xinfang needs {head}: run `{UPGRADE}` "
                      "(same --data-dir / --database-url)")


def drop_everything(engine: Engine) -> None:
    """Drop the store's tables and its revision (tests and tools that start a database over)."""
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
        if engine.dialect.name == "postgresql":  # the change feed's NOTIFY trigger function (0002)
            conn.execute(text("DROP FUNCTION IF EXISTS xinfang_notify_change() CASCADE"))
