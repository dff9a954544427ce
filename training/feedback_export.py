"""Caseworker feedback from the service store -> training data.

- ``topic_correction`` / ``department_correction`` rows become labelled petitions in the format
  ``xinfang train --task T --data FILE`` reads: ``{"id", "title", "text", "<task>": label, ...}``.
  The latest correction of a petition wins.
- ``repeat_confirm`` / ``repeat_reject`` rows become labelled pairs in the format the repeat scorer's
  training reads (``xinfang.training.repeats.fit_repeat_scorer``): ``{"a": id, "b": id, "label": 1|0}``,
  plus a petitions file next to it (``<pairs stem>.petitions.jsonl``: ``{"id", "title", "text",
  "petitioner", "time"}``). A pair is unordered; its latest decision wins.

Rows whose petition (or repeat target) has since been deleted are skipped and counted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xinfang.errors import DataError

LABEL_KINDS = {"topic_correction": "topic", "department_correction": "department"}
PAIR_KINDS = {"repeat_confirm": 1, "repeat_reject": 0}
EXPORT_TASKS = ("topic", "department", "repeats")


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
                     "predicted": (p.get(task) if isinstance(p.get(task), str) else None),
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


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export_feedback(store: Any, output: Path, task: str, since: datetime | None = None) -> ExportResult:
    """Export one task's feedback from a ``xinfang.serving.store.Store`` to ``output`` (JSONL)."""
    if task not in EXPORT_TASKS:
        raise DataError(f"--task {task!r}: choose one of {', '.join(EXPORT_TASKS)}")
    feedback = store.list_feedback(since=since)
    ids = {fb["petition_id"] for fb in feedback} | {fb["target_id"] for fb in feedback if fb.get("target_id")}
    petitions = store.get_petitions(sorted(ids))
    extra: Path | None = None
    if task == "repeats":
        rows, skipped = pair_rows(feedback, petitions)
        counts = {"same": sum(r["label"] for r in rows), "different": sum(1 - r["label"] for r in rows)}
        extra = petitions_path(output)
        used = sorted({r[s] for r in rows for s in ("a", "b")})
        write_jsonl_atomic(extra, [_petition(petitions[i]) for i in used])
    else:
        rows, skipped = labelled_rows(feedback, petitions, task)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r[task]] = counts.get(r[task], 0) + 1
    write_jsonl_atomic(output, rows)
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
