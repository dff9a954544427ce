"""Training data: labelled records -> normalised examples, group-aware split, data fingerprints, weak labels.

Documented behaviour (tested in tests/test_classify.py):
- input text = `petition_text(title, text)`; a title-only row is a valid petition;
- a row whose title and text are both empty after normalisation -> DataError naming the row;
- labels are stripped strings; a class with fewer than `min_class_count` (2) examples cannot be both
  learned and validated: it is DROPPED with a warning naming the class and its rows, and recorded in the
  bundle's config.json (`dropped_classes`) and model card; fewer than 2 classes left -> DataError;
- group-aware split: petitions with the same normalised title, or the same normalised text, form one
  group (union-find) and never straddle train/validation (StratifiedGroupKFold, seeded).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from xinfang.errors import DataError
from xinfang.models.disjoint_sets import DisjointSets

__all__ = ["Examples", "prepare_examples", "group_ids", "group_split", "seeded_group_split", "data_fingerprint",
           "weak_examples", "group_keys"]

log = logging.getLogger(__name__)


@dataclass
class Examples:
    ids: list[str]
    rows: list[int]
    texts: list[str]
    titles: list[str]
    labels: list[str]
    dropped: dict[str, list[int]] = field(default_factory=dict)


def prepare_examples(records: list[dict], label_column: str, source: str = "data",
                     min_class_count: int = 2, max_chars: int = 8000, min_classes: int = 2) -> Examples:
    """Normalise records into (text, label) examples, applying the documented bad-input rules."""
    from xinfang.models.normalize import normalize_text, petition_text

    if not records:
        raise DataError(f"{source}: no rows")
    ids, rows, texts, titles, labels = [], [], [], [], []
    for i, rec in enumerate(records):
        row = rec.get("_row", i + 1)
        if label_column not in rec:
            have = ", ".join(sorted(k for k in rec if not k.startswith("_")))
            raise DataError(f"{source}: label column '{label_column}' not found (row {row} has: {have})")
        label = rec.get(label_column)
        label = str(label).strip() if label is not None else ""
        if not label:
            raise DataError(f"{source}: row {row}: empty label in column '{label_column}'")
        text = petition_text(rec.get("title"), rec.get("text"), max_chars)
        if not text:
            raise DataError(f"{source}: row {row}: title and text are both empty or whitespace")
        ids.append(str(rec.get("id", row)))
        rows.append(row)
        texts.append(text)
        titles.append(normalize_text(rec.get("title"), max_chars))
        labels.append(label)
    counts = Counter(labels)
    rare = {lab for lab, c in counts.items() if c < min_class_count}
    dropped: dict[str, list[int]] = {}
    if rare:
        keep = [i for i, lab in enumerate(labels) if lab not in rare]
        for i, lab in enumerate(labels):
            if lab in rare:
                dropped.setdefault(lab, []).append(rows[i])
        for lab, rws in dropped.items():
            log.warning("%s: class '%s' has only %d example(s) (rows %s): dropped from training; "
                        "it needs at least %d", source, lab, len(rws), rws, min_class_count)
        ids, rows, texts, titles, labels = ([xs[i] for i in keep] for xs in (ids, rows, texts, titles, labels))
    classes = sorted(set(labels))
    if len(classes) < min_classes:
        only = f"only '{classes[0]}'" if classes else "none"
        raise DataError(f"{source}: label column '{label_column}' needs at least 2 classes with "
                        f">= {min_class_count} examples each; found {only}"
                        + (f" (dropped too-rare classes: {', '.join(sorted(dropped))})" if dropped else ""))
    return Examples(ids, rows, texts, titles, labels, dropped)


_KEY_STRIP = re.compile(r"[\s\W_]+", re.UNICODE)


def group_ids(titles: list[str], texts: list[str]) -> list[int]:
    """Union-find groups: same normalised title (punctuation/space-insensitive) or same normalised text."""
    sets = DisjointSets(len(texts))
    seen: dict[str, int] = {}
    for i, (title, text) in enumerate(zip(titles, texts, strict=True)):
        for key in (("t:" + _KEY_STRIP.sub("", title)) if title else None, "x:" + _KEY_STRIP.sub("", text)):
            if not key or key in ("t:", "x:"):
                continue
            if key in seen:
                sets.union(i, seen[key])
            else:
                seen[key] = i
    return sets.labels()


def group_split(labels: list[str], groups: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded group-aware stratified split; every class keeps at least one training example."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n = len(labels)
    idx = np.arange(n)
    n_splits = max(2, round(1 / max(val_fraction, 1e-6)))
    y = np.array(labels)
    try:
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        tr, va = next(sgkf.split(idx, y, groups))
    except ValueError:
        tr, va = next(GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed).split(idx, y, groups))
    missing = set(labels) - set(y[tr])
    if missing:  # move one group per missing class back to training
        g = np.array(groups)
        for lab in missing:
            grp = g[va[y[va] == lab][0]]
            move = va[g[va] == grp]
            tr = np.concatenate([tr, move])
            va = va[g[va] != grp]
    return sorted(tr.tolist()), sorted(va.tolist())


def seeded_group_split(ex: Examples, val_fraction: float, seed: int, source: str):
    """(groups, train indices, validation indices) of a group-aware split; seeds random, numpy and torch."""
    import torch

    groups = group_ids(ex.titles, ex.texts)
    tr, va = group_split(ex.labels, groups, val_fraction, seed)
    if not va:
        raise DataError(f"{source}: too few groups for a validation split ({len(set(groups))} groups)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return groups, tr, va


def data_fingerprint(texts: list[str], labels: list[str]) -> str:
    """sha256 over the normalised texts and labels, in order."""
    h = hashlib.sha256()
    for t, lab in zip(texts, labels, strict=True):
        h.update(t.encode("utf-8") + b"\x1f" + lab.encode("utf-8") + b"\x1e")
    return h.hexdigest()


def group_keys(title: str, text: str) -> set[str]:
    keys = {"x:" + _KEY_STRIP.sub("", text)}
    if title and _KEY_STRIP.sub("", title):
        keys.add("t:" + _KEY_STRIP.sub("", title))
    return keys


def weak_examples(history: list[dict], label_column: str, labels: list[str], hand: Examples,
                  source: str = "history") -> tuple[list[str], list[int], list[float], dict]:
    """Weakly labelled training examples (records with `label_weight`, from training/history.py): texts, class
    indices and weights, without rows that share a title or text with a hand-labelled row (the hand label wins)
    or whose label the hand labels lack (warned). Returns a record of what was used and dropped, for the card."""
    ex = prepare_examples(history, label_column, source, min_class_count=1, min_classes=1) if history else None
    hand_keys = set().union(*(group_keys(t, x) for t, x in zip(hand.titles, hand.texts, strict=True)))
    texts, y, weights = [], [], []
    unknown: Counter = Counter()
    dup = 0
    by_id = {str(r.get("id", r.get("_row"))): r for r in history}
    for i in range(len(ex.texts) if ex else 0):
        if ex.labels[i] not in labels:
            unknown[ex.labels[i]] += 1
            continue
        if group_keys(ex.titles[i], ex.texts[i]) & hand_keys:
            dup += 1
            continue
        texts.append(ex.texts[i])
        y.append(labels.index(ex.labels[i]))
        weights.append(float(by_id.get(ex.ids[i], {}).get("label_weight", 1.0)))
    if unknown:
        log.warning("%s: %d weak label(s) name departments the hand labels lack (%s): not used", source,
                    sum(unknown.values()), ", ".join(f"{k} {v}" for k, v in sorted(unknown.items())))
    report = {"labelled_from_replies": len(history), "used": len(texts), "dropped_same_as_hand_labelled": dup,
              "dropped_unknown_labels": dict(sorted(unknown.items())),
              "weight_sum": round(sum(weights), 3), "class_counts": dict(sorted(Counter(labels[j] for j in y).items()))}
    return texts, y, weights, report
