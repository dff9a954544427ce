"""`xinfang db upgrade|current`: the store's schema migrations (Alembic, see xinfang.serving.schema)."""

from __future__ import annotations

from pathlib import Path

import typer

DATA_DIR = typer.Option(None, "--data-dir", help="Service data dir (default: XINFANG_DATA_DIR or <repo>/var).")
DB_URL = typer.Option(None, "--database-url", help="Store URL (default: XINFANG_DATABASE_URL or the SQLite store "
                      "in the data dir).")


def _open(data_dir: Path | None, database_url: str | None):
    from xinfang.serving.config import ServiceConfig
    from xinfang.serving.store import Store

    return Store(database_url or ServiceConfig.from_env(data_dir).db_url, create=False)


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Schema migrations of the store (SQLite or PostgreSQL).", no_args_is_help=True)

    @db_app.command("upgrade")
    def upgrade_cmd(
        data_dir: Path = DATA_DIR,
        database_url: str = DB_URL,
        revision: str = typer.Option("head", help="Target revision."),
    ) -> None:
        """Migrate the store to the code's schema (a new database is created; one written before migrations
        is adopted: its tables are checked and the missing ones created). Take a backup first."""
        from xinfang.serving.schema import upgrade

        store = _open(data_dir, database_url)
        try:
            before, after = upgrade(store.engine, revision)
        finally:
            store.close()
        typer.echo(f"{store.safe_url}: {before or 'no revision'} -> {after}")

    @db_app.command("current")
    def current_cmd(data_dir: Path = DATA_DIR, database_url: str = DB_URL) -> None:
        """The store's schema revision and the code's head (exit status 1 when they differ)."""
        from xinfang.serving.schema import current_revision, head_revision, known_revisions, store_tables

        store = _open(data_dir, database_url)
        try:
            current, head = current_revision(store.engine), head_revision()
            tables = store_tables(store.engine)
        finally:
            store.close()
        state = ("up to date" if current == head else
                 "new database" if current is None and not tables else
                 "written before migrations" if current is None else
                 "newer than this xinfang" if current not in known_revisions() else "needs `xinfang db upgrade`")
        typer.echo(f"{store.safe_url}: revision {current or 'none'}, head {head} ({state})")
        if current != head:
            raise typer.Exit(1)

    app.add_typer(db_app, name="db")
