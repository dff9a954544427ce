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

# Each module under xinfang.commands exposes `register(app)`; a module that is not there yet is skipped.
COMMAND_MODULES = ["encoder", "demo", "classify", "repeats", "matters", "serve", "keys", "registry", "feedback",
                   "departments", "backup", "db", "settings"]

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"xinfang.commands.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while an area is unbuilt
        if exc.name != f"xinfang.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except XinfangError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
