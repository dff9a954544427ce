"""Schema migrations (xinfang.serving.schema, `xinfang db`): a database written before migrations is refused
until `xinfang db upgrade`, which keeps its rows; a new database is created at head; the migrated schema equals
the table definitions; a newer database is refused. SQLite always, PostgreSQL with XINFANG_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from xinfang.cli import app as cli
from xinfang.serving.matters_store import MatterStore
from xinfang.serving.schema import SchemaError, current_revision, head_revision
from xinfang.serving.store import Store
from xinfang.serving.tables import Base

PG_URL = os.environ.get("XINFANG_TEST_POSTGRES_URL")
FIXTURE = Path(__file__).parent / "fixtures" / "store-5c8a9c8.sql"  # written by the store of commit 5c8a9c8
FIXTURE_KEY = "xf_legacy-fixture-key"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request, tmp_path):
    """The URL of a database with nothing in it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: XINFANG_TEST_POSTGRES_URL is not set")
    base, name = make_url(PG_URL), f"xf_migr_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_legacy(url: str, tmp_dir: Path | None = None) -> None:
    """A store as commit 5c8a9c8 wrote it: its SQL dump on SQLite; on PostgreSQL its `create_all` (the same
    definitions, no revision) holding the dump's rows."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(make_url(url).database)
        con.executescript(FIXTURE.read_text(encoding="utf-8"))
        con.close()
        return
    assert tmp_dir is not None
    write_legacy(f"sqlite:///{tmp_dir / 'legacy.db'}")
    src, dst = create_engine(f"sqlite:///{tmp_dir / 'legacy.db'}"), create_engine(url)
    legacy = [t for t in Base.metadata.sorted_tables if t.name in set(inspect(src).get_table_names())]
    Base.metadata.create_all(dst, tables=legacy)  # the tables that code had, not those added since
    with src.connect() as a, dst.begin() as b:
        for table in legacy:
            rows = [dict(r._mapping) for r in a.execute(table.select())]
            if rows:
                b.execute(table.insert(), rows)
        for table in ("api_keys", "audit_log", "feedback"):
            b.execute(text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"))
    src.dispose()
    dst.dispose()


def db(*args: str):
    return CliRunner().invoke(cli, ["db", *args])


def schema_diff(store: Store) -> list:
    with store.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_a_new_database_is_created_at_head_equal_to_the_tables(empty_url) -> None:
    store = Store(empty_url)
    try:
        assert current_revision(store.engine) == head_revision()
        assert schema_diff(store) == []
        assert set(inspect(store.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        store.close()
    result = db("current", "--database-url", empty_url)
    assert result.exit_code == 0 and "up to date" in result.stdout


def test_a_database_of_the_old_code_is_refused_then_upgraded_with_its_rows(empty_url, tmp_path) -> None:
    write_legacy(empty_url, tmp_path)
    with pytest.raises(SchemaError, match="before schema migrations.*run `xinfang db upgrade`") as err:
        Store(empty_url)
    assert "\n" not in str(err.value)
    assert db("current", "--database-url", empty_url).exit_code == 1

    result = db("upgrade", "--database-url", empty_url)
    assert result.exit_code == 0, result.output
    assert f"no revision -> {head_revision()}" in result.stdout
    store = Store(empty_url)
    try:
        assert schema_diff(store) == []
        rows, total = store.list_petitions()
        assert total == 2 and [r["id"] for r in rows] == ["demo-legacy-2", "demo-legacy-1"]
        first = store.get_petition_row("demo-legacy-1")
        assert first["received_at"] == datetime(2024, 5, 1, tzinfo=UTC)
        assert first["labels"]["department"]["label"] == "住建局" and first["response"] == {"id": "demo-legacy-1"}
        assert first["title"] == "小区停车费" and first["text"].startswith("城东区某小区物业")
        assert [(f["kind"], f["target_id"]) for f in store.list_feedback("demo-legacy-2")] == [
            ("repeat_confirm", "demo-legacy-1")]
        assert store.authenticate(FIXTURE_KEY) == ("ops", "admin")
        matter = MatterStore(store).get("M-demo-legacy-1")
        assert matter and [m["id"] for m in matter["members"]] == ["demo-legacy-1", "demo-legacy-2"]
        assert "matter.merge" in {a["action"] for a in store.list_audit()}
        store.create_key("after-upgrade", "intake")  # new rows after the old ones
    finally:
        store.close()
    assert db("upgrade", "--database-url", empty_url).exit_code == 0  # idempotent


def test_a_database_older_than_matters_gets_the_matter_tables(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    write_legacy(url)
    con = sqlite3.connect(tmp_path / "old.db")
    con.executescript("DROP TABLE matter_members; DROP TABLE matters; DROP TABLE matter_cannot_links;")
    con.close()
    assert db("upgrade", "--database-url", url).exit_code == 0
    store = Store(url)
    try:
        assert schema_diff(store) == [] and store.count_petitions() == 2
        assert MatterStore(store).ensure_all() == 2
    finally:
        store.close()


def test_a_newer_database_is_refused(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Store(url).close()
    con = sqlite3.connect(tmp_path / "new.db")
    con.execute("UPDATE alembic_version SET version_num = 'ffff'")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="revision ffff is newer than this xinfang"):
        Store(url)
    result = db("upgrade", "--database-url", url)
    assert isinstance(result.exception, SchemaError)
    assert "newer than this xinfang" in db("current", "--database-url", url).stdout


def test_serve_refuses_an_unmigrated_database_naming_the_command(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_legacy(f"sqlite:///{data / 'xinfang.db'}")
    result = CliRunner().invoke(cli, ["serve", "--data-dir", str(data)])
    assert isinstance(result.exception, SchemaError)
    assert "xinfang db upgrade" in str(result.exception) and "\n" not in str(result.exception)
    assert db("upgrade", "--data-dir", str(data)).exit_code == 0
    assert current_revision(Store(f"sqlite:///{data / 'xinfang.db'}", create=False).engine) == head_revision()
