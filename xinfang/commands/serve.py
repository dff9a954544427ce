"""`xinfang serve`: the HTTP API (FastAPI + uvicorn). Settings: XINFANG_* variables, see docs/settings.md."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8000, help="Port."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Store, index and models (default: XINFANG_DATA_DIR "
                                      "or <repo>/var)."),
        workers: int = typer.Option(1, min=1, max=16, help="Worker processes. 1 is right for 2 cores: one process "
                                    "micro-batches all requests. With more, each process loads its own models and "
                                    "follows the store's change feed with its own index copy."),
        runtime: str = typer.Option(None, help="torch, onnx or onnx-int8 (default: XINFANG_RUNTIME or onnx-int8)."),
        log_level: str = typer.Option("info", help="debug, info, warning, error."),
    ) -> None:
        """Serve the classification, petition store and repeat search API (JSON-lines logs on stderr)."""
        import inspect
        import logging

        import uvicorn
        from uvicorn.supervisors import Multiprocess

        from xinfang.serving.app import create_app
        from xinfang.serving.config import ServiceConfig
        from xinfang.serving.observability import configure_json_logging
        from xinfang.serving.store import Store
        from xinfang.settings import RUNTIMES, load_settings

        # OpenMP threads that spin while waiting collapse under CPU contention (measured: a 2-thread torch
        # forward went from 3 ms to 800 ms with other jobs on the 2 cores); passive waiting costs nothing when
        # the cores are free. An OpenMP setting (not one of xinfang's), read when torch is first imported.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        runtime_changes: dict = {"log_json": log_level}
        if runtime and runtime.strip().lower() not in RUNTIMES:
            raise typer.BadParameter(f"{runtime!r}: choose one of {', '.join(RUNTIMES)}", param_hint="--runtime")
        if runtime:
            runtime_changes["runtime"] = runtime
        base = load_settings(runtime=runtime_changes, **({"data_dir": Path(data_dir).resolve()} if data_dir else {}))
        config = ServiceConfig.from_settings(base)
        configure_json_logging(getattr(logging, base.runtime.log_json or "INFO", logging.INFO))
        store = Store(config.db_url)  # refuses an unmigrated or newer database, naming `xinfang db upgrade`
        try:
            active = [k for k in store.list_keys() if not k["revoked_at"]]
        finally:
            store.close()
        if not active:
            dd = f" --data-dir {data_dir}" if data_dir else ""
            typer.echo("no API keys yet: create one with\n"
                       f"  xinfang keys create --role admin --name ops{dd}\n"
                       f"then: curl -H 'Authorization: Bearer <key>' http://{host}:{port}/v1/models", err=True)
        typer.echo(f"serving on http://{host}:{port} (docs: /docs, UI: /ui/, store: {store.safe_url}, "
                   f"runtime: {config.runtime})", err=True)
        # The settings travel to every worker as the factory's argument (pickled into spawned workers). A worker
        # loading its models answers the parent's health check late on busy cores: give it a minute.
        extra = ({"timeout_worker_healthcheck": 60}
                 if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters else {})
        uv = uvicorn.Config(partial(create_app, base), factory=True, host=host, port=port, workers=workers,
                            log_config=None, access_log=False, timeout_graceful_shutdown=20, **extra)
        server = uvicorn.Server(uv)
        if workers > 1:
            Multiprocess(uv, sockets=[uv.bind_socket()]).run()
        else:
            server.run()
            if not server.started:
                raise typer.Exit(3)
