"""`xinfang backup --to DIR` and `xinfang restore --from DIR`: consistent snapshots of the service's data
(store, index, model registry, models) with a checksum file; see xinfang.serving.backup."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

DATA_DIR = typer.Option(None, "--data-dir", help="Service data dir (default: XINFANG_DATA_DIR or <repo>/var).")
DB_URL = typer.Option(None, "--database-url", help="Store URL (default: XINFANG_DATABASE_URL or the SQLite store "
                      "in the data dir).")


def _config(data_dir: Path | None, database_url: str | None):
    from xinfang.serving.config import ServiceConfig

    config = ServiceConfig.from_env(data_dir)
    return replace(config, database_url=database_url) if database_url else config


def register(app: typer.Typer) -> None:
    @app.command("backup")
    def backup(
        to: Path = typer.Option(..., "--to", help="New (or empty) directory for the snapshot."),
        data_dir: Path = DATA_DIR,
        database_url: str = DB_URL,
    ) -> None:
        """Snapshot the store (SQLite online backup or pg_dump), the index, the registry and the models while
        the service runs; writes SHA256SUMS beside them."""
        from xinfang.serving.backup import backup as take

        meta = take(_config(data_dir, database_url), to)
        typer.echo(json.dumps({k: meta.get(k) for k in ("created_at", "store", "counts", "index", "files")},
                              ensure_ascii=False))
        typer.echo(f"snapshot written to {to}", err=True)

    @app.command("restore")
    def restore(
        from_: Path = typer.Option(..., "--from", help="A snapshot directory written by `xinfang backup`."),
        data_dir: Path = DATA_DIR,
        database_url: str = DB_URL,
    ) -> None:
        """Check a snapshot's checksums and restore it into an empty data dir (and an empty database); a
        non-empty target or a corrupted snapshot is refused, naming the file."""
        from xinfang.serving.backup import restore as put

        meta = put(_config(data_dir, database_url), from_)
        typer.echo(json.dumps({"restored_counts": meta["restored_counts"], "created_at": meta["created_at"]},
                              ensure_ascii=False))
        typer.echo("restored; run `xinfang encoder prepare` if the encoders are not there, then `xinfang serve`",
                   err=True)
