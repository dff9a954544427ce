"""Evaluation gate: a candidate version is promoted only if it is not worse than the promoted one.

Both versions are evaluated on the task's fixed evaluation set (``Registry.set_eval_set``). Rules:

- classifiers: refuse when macro-F1 drops by more than ``tolerance`` (default 0.01), or when any class
  with at least ``min_support`` examples loses more than ``max_recall_drop`` (default 0.15) of recall
  without gaining F1 (recall that the promoted model bought with false positives, e.g. a model that
  predicts one class for everything, may be traded for precision), or collapses (recall under
  ``collapse_recall``, default 0.05, where the promoted model had at least 0.30: always refused);
- repeat scorer: refuse when pair F1 at each model's own operating threshold drops by more than
  ``tolerance`` (pairs labelled 0.5 are left out).

With no promoted version the gate passes (there is nothing to protect) and says so. ``force`` lets a
refused candidate through; the report then carries ``forced: true`` and the promotion is audited as
forced.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xinfang.errors import DataError
from xinfang.models.registry import REPEAT_TASK, Registry, RegistryError

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.01
DEFAULT_MAX_RECALL_DROP = 0.15
DEFAULT_COLLAPSE_RECALL = 0.05
COLLAPSE_FROM = 0.30
DEFAULT_MIN_SUPPORT = 3


@dataclass
class GateReport:
    task: str
    version: str
    baseline_version: str | None
    metric: str
    new: float
    baseline: float | None
    delta: float | None
    tolerance: float
    passed: bool
    reasons: list[str]
    eval_rows: int
    eval_sha256: str | None = None
    max_recall_drop: float | None = None
    per_class: list[dict[str, Any]] = field(default_factory=list)
    new_metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    forced: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """Human-readable summary with per-class deltas."""
        base = "none" if self.baseline is None else f"{self.baseline:.4f}"
        delta = "" if self.delta is None else f" (delta {self.delta:+.4f}, tolerance {self.tolerance})"
        verdict = "PASS" if self.passed else ("FORCED" if self.forced else "REFUSED")
        lines = [
            f"gate {verdict}: {self.task} {self.version} vs {self.baseline_version or '(no promoted version)'} "
            f"on {self.eval_rows} fixed evaluation rows",
            f"  {self.metric}: new {self.new:.4f}, promoted {base}{delta}",
        ]
        for key in sorted(set(self.new_metrics) - {self.metric}):
            old = self.baseline_metrics.get(key)
            old_s = "-" if old is None else f"{old:.4f}"
            lines.append(f"  {key}: new {self.new_metrics[key]:.4f}, promoted {old_s}")
        if self.per_class:
            lines.append(f"  {'class':<24} {'support':>7} {'recall new':>10} {'promoted':>9} {'delta':>7}")
            for row in self.per_class:
                old = "-" if row["recall_baseline"] is None else f"{row['recall_baseline']:.3f}"
                d = "-" if row["recall_delta"] is None else f"{row['recall_delta']:+.3f}"
                flag = "  <-- " + row["flag"] if row.get("flag") else ""
                lines.append(f"  {_pad(row['label'], 24)} {row['support']:>7} {row['recall_new']:>10.3f} {old:>9} "
                             f"{d:>7}{flag}")
        lines.extend(f"  reason: {r}" for r in self.reasons)
        return "\n".join(lines)


def _pad(text: str, width: int) -> str:
    """Left-justify to a terminal width, counting CJK characters as two columns."""
    shown = sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)
    return text + " " * max(0, width - shown)


# --------------------------------------------------------------------------------------------- metrics


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over ``labels`` (the gold classes) and per-class precision/recall/F1/support."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f.mean()) if len(f) else 0.0,
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, lab in enumerate(labels)},
    }


def pair_metrics(y_true: Sequence[int], y_pred: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of the positive class (same matter) at an operating threshold."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(
        [int(y) for y in y_true], [int(bool(y)) for y in y_pred], labels=[1], zero_division=0)
    return {"pair_f1": float(f[0]), "pair_precision": float(p[0]), "pair_recall": float(r[0])}


def compare_classification(
    y_true: Sequence[str],
    new_pred: Sequence[str],
    old_pred: Sequence[str] | None,
    *,
    task: str = "topic",
    version: str = "new",
    baseline_version: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    collapse_recall: float = DEFAULT_COLLAPSE_RECALL,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> GateReport:
    """Apply the classifier gate rules to predictions of both models on the same gold labels."""
    if not y_true:
        raise DataError("the evaluation set is empty")
    labels = sorted(set(y_true))
    new = classification_metrics(y_true, new_pred, labels)
    old = classification_metrics(y_true, old_pred, labels) if old_pred is not None else None
    reasons: list[str] = []
    per_class = []
    for lab in labels:
        n = new["per_class"][lab]
        o = old["per_class"][lab] if old else None
        row: dict[str, Any] = {"label": lab, "support": n["support"], "recall_new": round(n["recall"], 4),
                               "recall_baseline": round(o["recall"], 4) if o else None,
                               "recall_delta": round(n["recall"] - o["recall"], 4) if o else None,
                               "f1_new": round(n["f1"], 4), "f1_baseline": round(o["f1"], 4) if o else None}
        if o and n["support"] >= min_support:
            drop = o["recall"] - n["recall"]
            if n["recall"] < collapse_recall and o["recall"] >= COLLAPSE_FROM:
                row["flag"] = "collapsed"
                reasons.append(f"class {lab!r} recall collapsed: {o['recall']:.3f} -> {n['recall']:.3f}")
            elif drop > max_recall_drop and n["f1"] <= o["f1"]:
                row["flag"] = "recall drop"
                reasons.append(f"class {lab!r} recall dropped by {drop:.3f} (> {max_recall_drop}): "
                               f"{o['recall']:.3f} -> {n['recall']:.3f}")
        per_class.append(row)
    delta = None
    if old:
        delta = new["macro_f1"] - old["macro_f1"]
        if delta < -tolerance:
            reasons.insert(0, f"macro-F1 dropped by {-delta:.4f} (> tolerance {tolerance}): "
                              f"{old['macro_f1']:.4f} -> {new['macro_f1']:.4f}")
    return GateReport(
        task=task, version=version, baseline_version=baseline_version, metric="macro_f1",
        new=round(new["macro_f1"], 4), baseline=round(old["macro_f1"], 4) if old else None,
        delta=round(delta, 4) if delta is not None else None, tolerance=tolerance, passed=not reasons,
        reasons=reasons or ([] if old else ["no promoted version: nothing to compare against"]),
        eval_rows=len(y_true), max_recall_drop=max_recall_drop, per_class=per_class,
        new_metrics={"macro_f1": round(new["macro_f1"], 4), "accuracy": round(new["accuracy"], 4)},
        baseline_metrics={"macro_f1": round(old["macro_f1"], 4), "accuracy": round(old["accuracy"], 4)}
        if old else {},
    )


def compare_pairs(
    y_true: Sequence[int],
    new_pred: Sequence[bool],
    old_pred: Sequence[bool] | None,
    *,
    version: str = "new",
    baseline_version: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateReport:
    """Apply the repeat-scorer gate: pair F1 at each model's operating threshold."""
    if not y_true:
        raise DataError("the evaluation pairs are empty (after leaving out 0.5 labels)")
    new = pair_metrics(y_true, new_pred)
    old = pair_metrics(y_true, old_pred) if old_pred is not None else None
    reasons = []
    delta = None
    if old:
        delta = new["pair_f1"] - old["pair_f1"]
        if delta < -tolerance:
            reasons.append(f"pair F1 dropped by {-delta:.4f} (> tolerance {tolerance}): "
                           f"{old['pair_f1']:.4f} -> {new['pair_f1']:.4f}")
    return GateReport(
        task=REPEAT_TASK, version=version, baseline_version=baseline_version, metric="pair_f1",
        new=round(new["pair_f1"], 4), baseline=round(old["pair_f1"], 4) if old else None,
        delta=round(delta, 4) if delta is not None else None, tolerance=tolerance, passed=not reasons,
        reasons=reasons or ([] if old else ["no promoted version: nothing to compare against"]),
        eval_rows=len(y_true),
        new_metrics={k: round(v, 4) for k, v in new.items()},
        baseline_metrics={k: round(v, 4) for k, v in old.items()} if old else {},
    )


# --------------------------------------------------------------------------------------------- running


Predictor = Callable[[Path, list[dict[str, Any]]], list[Any]]


def run_gate(
    registry: Registry,
    version: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    min_support: int = DEFAULT_MIN_SUPPORT,
    predictor: Predictor | None = None,
) -> GateReport:
    """Evaluate ``version`` and the promoted version of its task on the task's fixed evaluation set."""
    from xinfang.training import adapters

    start = time.perf_counter()
    record = registry.get(version)
    task = record["task"]
    eval_path = registry.verify_eval_set(task)
    cfg = registry.eval_set(task) or {}
    baseline = registry.promoted(task)
    if baseline == version:
        raise RegistryError(f"{version} is already the promoted {task} model")
    new_dir = registry.bundle_path(version)
    old_dir = registry.bundle_path(baseline) if baseline else None
    if task == REPEAT_TASK:
        pairs, y = adapters.load_eval_pairs(eval_path)
        predict = predictor or adapters.predict_pairs
        new_pred = predict(new_dir, pairs)
        old_pred = predict(old_dir, pairs) if old_dir else None
        report = compare_pairs(y, new_pred, old_pred, version=version, baseline_version=baseline,
                               tolerance=tolerance)
    else:
        records, y = adapters.load_eval_records(eval_path, cfg.get("label_column") or task)
        predict = predictor or adapters.predict_labels
        new_pred = predict(new_dir, records)
        old_pred = predict(old_dir, records) if old_dir else None
        report = compare_classification(y, new_pred, old_pred, task=task, version=version,
                                        baseline_version=baseline, tolerance=tolerance,
                                        max_recall_drop=max_recall_drop, min_support=min_support)
    report.eval_sha256 = cfg.get("sha256")
    report.seconds = round(time.perf_counter() - start, 2)
    log.info("gate %s vs %s: %s=%.4f baseline=%s passed=%s (%.1fs)", version, baseline, report.metric,
             report.new, report.baseline, report.passed, report.seconds)
    return report


def gate_and_promote(
    registry: Registry,
    version: str,
    *,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    min_support: int = DEFAULT_MIN_SUPPORT,
    predictor: Predictor | None = None,
) -> tuple[GateReport, bool]:
    """Run the gate, record its report on the version, promote when it passes (or when forced)."""
    report = run_gate(registry, version, tolerance=tolerance, max_recall_drop=max_recall_drop,
                      min_support=min_support, predictor=predictor)
    report.forced = force and not report.passed
    registry.set_gate_result(version, report.to_dict())
    if report.passed or force:
        registry.promote(version, forced=report.forced, gate=report.to_dict())
        return report, True
    registry.audit.record("model.promote.refused", registry.actor, version,
                          {"task": report.task, "baseline": report.baseline_version,
                           "reasons": report.reasons})
    return report, False
