"""`xinfang feedback export`: caseworker corrections and repeat decisions -> training data."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    fb_app = typer.Typer(help="Caseworker feedback stored by the service.", no_args_is_help=True)

    @fb_app.command("export")
    def export(
        output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write (several tasks: "
                                    "<stem>.topic.jsonl, <stem>.department.jsonl, <stem>.channel.jsonl, <stem>.pairs.jsonl)."),
        task: str = typer.Option("all", help="topic, department, channel, repeats, or all."),
        since: str = typer.Option(None, help="Only feedback given at or after this ISO date/time."),
        database_url: str = typer.Option(None, help="Store URL (default: XINFANG_DATABASE_URL, else the "
                                         "SQLite store in the data dir)."),
        data_dir: Path = typer.Option(None, help="Service data dir (default: XINFANG_DATA_DIR or <repo>/var)."),
        base: Path = typer.Option(None, help="Merge into this training file (one --task): labelled petitions "
                                  "(corrections relabel rows by id), or for repeats labelled pairs."),
        base_petitions: Path = typer.Option(None, help="repeats with --base: the petitions its pair ids name."),
    ) -> None:
        """Export topic/department/channel corrections as labelled rows (`xinfang train --data`) and repeat
        confirm/reject decisions as labelled pairs (repeat-scorer training)."""
        from xinfang.errors import DataError
        from xinfang.serving.config import ServiceConfig
        from xinfang.serving.store import Store
        from xinfang.training.feedback_export import (
            EXPORT_TASKS,
            export_feedback,
            output_paths,
            parse_since,
        )

        tasks = list(EXPORT_TASKS) if task == "all" else [task]
        if any(t not in EXPORT_TASKS for t in tasks):
            raise DataError(f"--task {task!r}: choose one of {', '.join(EXPORT_TASKS)} or all")
        if base is not None and len(tasks) != 1:
            raise DataError("--base needs one --task (topic, department, channel or repeats)")
        cfg = ServiceConfig.from_env(data_dir)
        url = database_url or cfg.db_url
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
            raise DataError(f"no store at {url[len('sqlite:///'):]}: start `xinfang serve` first or pass "
                            "--database-url / --data-dir")
        store = Store(url, create=False)
        try:
            when = parse_since(since)
            for t, path in output_paths(output, tasks).items():
                res = export_feedback(store, path, t, since=when, base=base, base_petitions=base_petitions)
                extra = f", {res.skipped_deleted} skipped (petition deleted)" if res.skipped_deleted else ""
                also = f" (petitions: {res.petitions_path})" if res.petitions_path else ""
                typer.echo(f"{t}: {res.rows} rows -> {res.path}{also} {res.labels}{extra}")
        finally:
            store.close()

    app.add_typer(fb_app, name="feedback")
