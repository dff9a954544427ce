"""`xinfang keys create|list|revoke`: API keys of the service (only their sha256 is stored)."""

from __future__ import annotations

from pathlib import Path

import typer


def _store(data_dir: Path | None, database_url: str | None):
    from xinfang.serving.config import ServiceConfig
    from xinfang.serving.store import Store

    cfg = ServiceConfig.from_env(data_dir)
    return Store(database_url or cfg.db_url)


DATA_DIR = typer.Option(None, "--data-dir", help="Service data dir (default: XINFANG_DATA_DIR or <repo>/var).")
DB_URL = typer.Option(None, "--database-url", help="Store URL (default: XINFANG_DATABASE_URL or the SQLite store).")


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="API keys for `xinfang serve` (roles: intake, caseworker, admin).",
                           no_args_is_help=True)

    @keys_app.command("create")
    def create(
        role: str = typer.Option(..., "--role", help="intake, caseworker or admin."),
        name: str = typer.Option(..., "--name", help="Unique name of the key's holder (appears in the audit log)."),
        data_dir: Path = DATA_DIR,
        database_url: str = DB_URL,
    ) -> None:
        """Create a key and print it once (store it now: it cannot be shown again)."""
        store = _store(data_dir, database_url)
        try:
            key = store.create_key(name, role, who="cli")
        finally:
            store.close()
        typer.echo(f"created {role} key {name!r}; it is shown only this once:", err=True)
        typer.echo(key)

    @keys_app.command("list")
    def list_keys(data_dir: Path = DATA_DIR, database_url: str = DB_URL) -> None:
        """Names, roles and state of all keys (never the keys themselves)."""
        store = _store(data_dir, database_url)
        try:
            rows = store.list_keys()
        finally:
            store.close()
        if not rows:
            typer.echo("no keys; create one with: xinfang keys create --role admin --name NAME", err=True)
        for r in rows:
            state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
            typer.echo(f"{r['name']}\t{r['role']}\tcreated {r['created_at']:%Y-%m-%d %H:%M}\t{state}")

    @keys_app.command("revoke")
    def revoke(name: str = typer.Argument(..., help="Name of the key."), data_dir: Path = DATA_DIR,
               database_url: str = DB_URL) -> None:
        """Revoke a key: requests with it get 401 from now on."""
        from xinfang.errors import XinfangError

        store = _store(data_dir, database_url)
        try:
            if not store.revoke_key(name, who="cli"):
                raise XinfangError(f"no active key named {name!r}")
        finally:
            store.close()
        typer.echo(f"revoked {name!r}")

    app.add_typer(keys_app, name="keys")
