"""`xinfang departments from-replies`: the handling unit of closed cases, read from their official replies."""

from __future__ import annotations

import collections
from pathlib import Path

import typer

from xinfang.settings import PROVINCE_DUTY_LIST


def register(app: typer.Typer) -> None:
    dept_app = typer.Typer(help="Department routing knowledge: handling history, duty lists.", no_args_is_help=True)

    @dept_app.command("from-replies")
    def from_replies(
        input: Path = typer.Option(..., help="Closed cases (.jsonl/.csv/.xlsx) with their official reply."),
        output: Path = typer.Option(..., help="Output JSONL: one line per input row, in input order."),
        duty_list: Path = typer.Option(PROVINCE_DUTY_LIST, help="Duty list whose `units` map unit names to "
                                       "departments (default: the shipped 24-department list)."),
        reply_column: str = typer.Option("reply", help="File column holding the official reply."),
    ) -> None:
        """Extract the handling unit of each reply: department, confidence, evidence span, or the reason it is
        undecided (no unit named, a generic body only, two units)."""
        from tqdm import tqdm

        from xinfang.errors import DataError
        from xinfang.models.duty_list import DutyList
        from xinfang.records import load_records, write_jsonl
        from xinfang.training.reply_units import extract_unit

        duty = DutyList.load(duty_list)
        records = load_records(input)
        if records and not any(reply_column in r for r in records):
            raise DataError(f"{input}: no '{reply_column}' column (use --reply-column)")
        rows, counts = [], collections.Counter()
        for r in tqdm(records, desc="replies", unit="reply"):
            ans = extract_unit(r.get(reply_column), duty)
            counts[ans.confidence or "undecided"] += 1
            rows.append({"id": r["id"], **ans.to_dict()})
        write_jsonl(output, rows)
        summary = ", ".join(f"{k} {counts[k]}" for k in ("high", "medium", "low", "undecided"))
        typer.echo(f"wrote {len(rows)} rows to {output}: {summary}", err=True)

    app.add_typer(dept_app, name="departments")
