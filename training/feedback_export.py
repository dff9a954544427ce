"""Caseworker feedback from the service store -> training data.

- ``topic_correction`` / ``department_correction`` / ``channel_correction`` rows become labelled petitions in the format
  ``xinfang train --task T --data FILE`` reads: ``{"id", "title", "text", "<task>": label, ...}``.
  The latest correction of a petition wins.
- ``repeat_confirm`` / ``repeat_reject`` rows become labelled pairs in the format the repeat scorer's
  training reads (``xinfang.training.repeats.fit_repeat_scorer``): ``{"a": id, "b": id, "label": 1|0}``,
  plus a petitions file next to it (``<pairs stem>.petitions.jsonl``: ``{"id", "title", "text",
  "petitioner", "time"}``). A pair is unordered; its latest decision wins.

Rows whose petition (or repeat target) has since been deleted are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xinfang.errors import DataError
from xinfang.models.feedback import LABEL_KINDS, PAIR_KINDS
from xinfang.records import load_records, write_jsonl

EXPORT_TASKS = ("topic", "department", "channel", "repeats")


@dataclass
class ExportResult:
    task: str
    path: Path
    rows: int
    skipped_deleted: int = 0
    feedback_rows: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    petitions_path: Path | None = None


def parse_since(value: str | None) -> datetime | None:
    """ISO date or datetime (naive = UTC)."""
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise DataError(f"--since {value!r}: not an ISO date/time (e.g. 2024-05-01 or 2024-05-01T08:00:00)") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _petition(p: dict[str, Any]) -> dict[str, Any]:
    return {"id": p["id"], "title": p.get("title"), "text": p.get("text"), "petitioner": p.get("petitioner"),
            "time": _iso(p.get("received_at") or p.get("created_at"))}


def _predicted(p: dict[str, Any], task: str) -> str | None:
    """The label the service gave (the stored `channel` column is the intake channel, not the legal one)."""
    if task == "channel":
        answer = (p.get("labels") or {}).get("channel")
        return answer.get("label") if isinstance(answer, dict) else None
    return p.get(task) if isinstance(p.get(task), str) else None


def labelled_rows(feedback: Iterable[dict[str, Any]], petitions: dict[str, dict[str, Any]], task: str
                  ) -> tuple[list[dict[str, Any]], int]:
    """Latest correction per petition for ``task`` -> training rows; returns (rows, skipped for deletion)."""
    latest: dict[str, dict[str, Any]] = {}
    for fb in sorted(feedback, key=lambda f: (f["created_at"], f["id"])):
        if LABEL_KINDS.get(fb["kind"]) == task and fb.get("label"):
            latest[fb["petition_id"]] = fb
    rows, skipped = [], 0
    for pid, fb in latest.items():
        p = petitions.get(pid)
        if p is None:
            skipped += 1
            continue
        rows.append({"id": pid, "title": p.get("title"), "text": p.get("text"), task: fb["label"],
                     "predicted": _predicted(p, task),
                     "feedback_id": fb["id"], "feedback_at": _iso(fb["created_at"])})
    return rows, skipped


def pair_rows(feedback: Iterable[dict[str, Any]], petitions: dict[str, dict[str, Any]]
              ) -> tuple[list[dict[str, Any]], int]:
    """Latest confirm/reject per unordered pair -> labelled pairs; returns (rows, skipped for deletion)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for fb in sorted(feedback, key=lambda f: (f["created_at"], f["id"])):
        if fb["kind"] in PAIR_KINDS and fb.get("target_id"):
            a, b = fb["petition_id"], fb["target_id"]
            latest[(a, b) if a <= b else (b, a)] = fb
    rows, skipped = [], 0
    for (_, _), fb in latest.items():
        a, b = petitions.get(fb["petition_id"]), petitions.get(fb["target_id"])
        if a is None or b is None:
            skipped += 1
            continue
        rows.append({"a": a["id"], "b": b["id"], "label": PAIR_KINDS[fb["kind"]],
                     "source": "feedback", "feedback_id": fb["id"], "feedback_at": _iso(fb["created_at"])})
    return rows, skipped


def merge_labelled(base: list[dict[str, Any]], corrections: list[dict[str, Any]], task: str
                   ) -> list[dict[str, Any]]:
    """Base training rows with corrections applied by id (relabelled in place), new ids appended."""
    fixes = {str(r["id"]): r for r in corrections}
    out = []
    for row in base:
        row = {k: v for k, v in row.items() if k != "_row"}
        fix = fixes.pop(str(row.get("id")), None)
        if fix is not None:
            row[task] = fix[task]
        out.append(row)
    return out + list(fixes.values())


def merge_pairs(base_pairs: list[dict[str, Any]], base_petitions: list[dict[str, Any]],
                pairs: list[dict[str, Any]], petitions: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Base labelled pairs + feedback pairs (feedback wins for the same unordered pair); petitions united."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in [*base_pairs, *pairs]:
        a, b = str(row["a"]), str(row["b"])
        merged[(a, b) if a <= b else (b, a)] = row
    by_id = {str(p["id"]): {k: v for k, v in p.items() if k != "_row"} for p in [*base_petitions, *petitions]}
    return list(merged.values()), list(by_id.values())


def export_feedback(store: Any, output: Path, task: str, since: datetime | None = None,
                    base: Path | None = None, base_petitions: Path | None = None) -> ExportResult:
    """Export one task's feedback from a ``xinfang.serving.store.Store`` to ``output`` (JSONL).

    With ``base`` (a training file: labelled petitions, or for ``repeats`` labelled pairs plus
    ``base_petitions``) the output is the base data with the feedback merged in, ready to train on.
    """
    if task not in EXPORT_TASKS:
        raise DataError(f"--task {task!r}: choose one of {', '.join(EXPORT_TASKS)}")
    feedback = store.list_feedback(since=since)
    ids = {fb["petition_id"] for fb in feedback} | {fb["target_id"] for fb in feedback if fb.get("target_id")}
    petitions = store.get_petitions(sorted(ids))
    extra: Path | None = None
    if task == "repeats":
        rows, skipped = pair_rows(feedback, petitions)
        extra = petitions_path(output)
        used = sorted({r[s] for r in rows for s in ("a", "b")})
        pets = [_petition(petitions[i]) for i in used]
        if base is not None:
            from xinfang.records import read_jsonl

            base_pets = load_records(base_petitions, require_text=False) if base_petitions else []
            rows, pets = merge_pairs(read_jsonl(base), base_pets, rows, pets)
        write_jsonl(extra, pets)
        counts = dict(Counter({1.0: "same", 0.0: "different"}.get(float(r["label"]), "unsure") for r in rows))
    else:
        rows, skipped = labelled_rows(feedback, petitions, task)
        if base is not None:
            rows = merge_labelled(load_records(base, label_column=task), rows, task)
        counts = dict(Counter(str(r[task]) for r in rows))
    write_jsonl(output, rows)
    return ExportResult(task=task, path=Path(output), rows=len(rows), skipped_deleted=skipped,
                        feedback_rows=len(feedback), labels=counts, petitions_path=extra)


def petitions_path(pairs_output: Path) -> Path:
    """The petitions file written next to an exported pairs file."""
    pairs_output = Path(pairs_output)
    stem = pairs_output.name[: -len(pairs_output.suffix)] if pairs_output.suffix else pairs_output.name
    return pairs_output.with_name(f"{stem}.petitions.jsonl")


def output_paths(output: Path, tasks: list[str]) -> dict[str, Path]:
    """One task: ``output`` itself. Several: ``<stem>.<task>.jsonl`` next to it (pairs: ``.pairs.jsonl``)."""
    output = Path(output)
    if len(tasks) == 1:
        return {tasks[0]: output}
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return {t: output.with_name(f"{stem}.{'pairs' if t == 'repeats' else t}.jsonl") for t in tasks}
