"""Weak labels from handling history (`xinfang train --history FILE`): closed cases with their official replies.

Each task that can learn from replies registers a labeller here: `department` reads the handling unit
(training/reply_units.py), `channel` the legal channel (training/channel_replies.py). A labeller takes the history records and the duty list and returns
`(weakly labelled records, counts)`; each returned record carries the task's label column, `label_confidence`
(high / medium) and `label_evidence`. Training adds them to the training part only, weighted by
`HISTORY_WEIGHTS` (validation, calibration and review thresholds stay on hand labels), and drops rows whose text
is also a hand-labelled row (the hand label wins) or whose label the hand labels lack (warned, recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xinfang.errors import DataError
from xinfang.models.duty_list import DutyList

__all__ = ["HISTORY_LABELLERS", "HISTORY_WEIGHTS", "history_records"]

HISTORY_WEIGHTS = {"high": 1.0, "medium": 0.7}


def _department(records: list[dict], duty: DutyList | None) -> tuple[list[dict], dict]:
    from xinfang.training.reply_units import history_labels

    if duty is None or not any(e.units for e in duty.entries):
        raise DataError("--history for department needs a duty list whose entries list their `units` "
                        "(the shipped datasets/duty_lists/province_24.yaml does)")
    return history_labels(records, duty)


def _channel(records: list[dict], duty: DutyList | None) -> tuple[list[dict], dict]:
    from xinfang.training.channel_replies import history_labels as channel_labels

    return channel_labels(records)


HISTORY_LABELLERS: dict[str, Callable[[list[dict], DutyList | None], tuple[list[dict], dict]]] = {
    "department": _department,
    "channel": _channel,
}


def history_records(task: str, path: Path, duty: DutyList | None) -> tuple[list[dict], dict]:
    """Weakly labelled records for `task` from the closed cases in `path` (.jsonl/.csv/.xlsx with a reply)."""
    from xinfang.records import load_records

    if task not in HISTORY_LABELLERS:
        raise DataError(f"--history is not supported for task '{task}' (supported: {', '.join(HISTORY_LABELLERS)})")
    records = load_records(path)
    if records and not any("reply" in r for r in records):
        raise DataError(f"{path}: --history needs a 'reply' column (the official reply of each closed case)")
    out, counts = HISTORY_LABELLERS[task](records, duty)
    for r in out:
        r["label_weight"] = HISTORY_WEIGHTS[r["label_confidence"]]
    return out, {"file": path.name, **counts}
