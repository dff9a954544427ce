"""The `xinfang` command line: one entry point, one sub-command module per area."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from xinfang.errors import XinfangError

app = typer.Typer(
    help="xinfang (信访): classify Chinese petitions, find repeat petitions, serve the models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Each module under xinfang.commands exposes `register(app)`.
COMMAND_MODULES = ["encoder", "classify", "repeats", "matters", "serve", "keys", "registry", "feedback",
                   "departments", "backup", "db", "index", "settings"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"xinfang.commands.{_name}").register(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except XinfangError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
