"""`xinfang index status|reconcile`: a replica's repeat index (a cache of the store) and its change-feed mark."""

from __future__ import annotations

from pathlib import Path

import typer

DATA_DIR = typer.Option(None, "--data-dir", help="Replica data dir (default: XINFANG_DATA_DIR or <repo>/var).")


def _config(data_dir: Path | None):
    from xinfang.serving.config import ServiceConfig

    return ServiceConfig.from_env(data_dir)


def register(app: typer.Typer) -> None:
    index_app = typer.Typer(help="The repeat index of a data dir: its change-feed mark, repair.",
                            no_args_is_help=True)

    @index_app.command("status")
    def status_cmd(data_dir: Path = DATA_DIR) -> None:
        """Vectors, the change-feed mark saved with the index and the store's last change."""
        from xinfang.models.vector_index import VectorIndex
        from xinfang.serving.store import Store

        cfg = _config(data_dir)
        manifest = VectorIndex.read_manifest(cfg.index_path)
        store = Store(cfg.db_url)
        try:
            last, stored = store.last_change(), store.count_petitions()
        finally:
            store.close()
        mark = int((manifest.get("meta") or {}).get("feed_floor", 0))
        typer.echo(f"{cfg.index_path}: {manifest['count']} vectors ({manifest['active_factory']}), change-feed "
                   f"mark {mark}; store {store.safe_url}: {stored} petitions, last change {last} "
                   f"({last - mark} after the mark)")

    @index_app.command("reconcile")
    def reconcile_cmd(data_dir: Path = DATA_DIR) -> None:
        """Repair: compare every stored id with the index, add the missing (stored vectors, else embedded),
        drop the extra, save. Run it with that data dir's `xinfang serve` stopped (it owns the index files);
        the service itself follows the change feed and checks counts at start-up."""
        from xinfang.models.embedder import Embedder
        from xinfang.serving.index_keeper import IndexKeeper
        from xinfang.serving.store import Store

        cfg = _config(data_dir)
        embedder = Embedder(cfg.embed_encoder, backend=cfg.embedder_runtime, cache_dir=cfg.onnx_cache_dir,
                            threads=cfg.threads)
        store = Store(cfg.db_url)
        keeper = IndexKeeper(cfg.index_path, embedder.dim, embedder.fingerprint, store,
                             factory=cfg.index_factory, search_params=cfg.index_search)
        try:
            opened = keeper.open(embedder.encode)
            stats = opened if opened.get("reconciled") else keeper.reconcile(embedder.encode)
            keeper.close()
        finally:
            store.close()
        typer.echo(f"{cfg.index_path}: {stats['stored']} stored, {stats['added']} added, {stats['removed']} "
                   f"removed; change-feed mark {keeper.version}")

    app.add_typer(index_app, name="index")
