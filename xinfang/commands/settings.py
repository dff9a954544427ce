"""`xinfang settings`: the settings in force (XINFANG_* variables), or their table for docs/settings.md."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("settings")
    def settings_cmd(
        markdown: bool = typer.Option(False, "--markdown", help="Print the table of every variable (type, "
                                      "default, description) that docs/settings.md holds."),
    ) -> None:
        """Print each XINFANG_* variable with the value in force (a bad value is an error naming it)."""
        from xinfang.settings import load_settings, markdown_table, variables

        if markdown:
            typer.echo(markdown_table(), nl=False)
            return
        settings = load_settings().model_dump()
        for env, path, _info in variables():
            value = settings
            for part in path.split("."):
                value = value[part]
            typer.echo(f"{env}={'' if value is None else value}")
