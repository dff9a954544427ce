"""Fit the repeat scorer on labelled pairs.

    fit_repeat_scorer(pairs, petitions_by_id, embedder, cache_dir=None, min_precision=0.95,
                      trained_on="", features=None) -> RepeatScorer

`pairs` are dicts `{"a": id, "b": id, "label": 1 | 0 | 0.5}` (0.5 = unsure, left out); `petitions_by_id`
maps ids to petition dicts (`title`, `text`, optional `petitioner`/`user`, `time`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from xinfang.errors import DataError
from xinfang.models.normalize import petition_text
from xinfang.models.repeat_features import DEFAULT_FEATURES, FEATURES, pair_features
from xinfang.models.repeat_scorer import MIN_PRECISION, RepeatScorer, connected_components
from xinfang.models.repeats import embed_cached

log = logging.getLogger(__name__)


def labelled_pairs(pairs: list[dict], petitions_by_id: dict[str, dict]) -> list[tuple[str, str, int]]:
    """(a, b, label) for pairs labelled 0 or 1; DataError naming the pair when an id is unknown."""
    out = []
    for n, p in enumerate(pairs, 1):
        try:
            a, b, label = str(p["a"]), str(p["b"]), float(p["label"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"pair {n}: needs fields a, b and a numeric label ({exc})") from exc
        if label not in (0.0, 1.0):
            continue
        for pid in (a, b):
            if pid not in petitions_by_id:
                raise DataError(f"pair {n}: petition id {pid!r} not found in the petitions file")
        out.append((a, b, int(label)))
    return out


def embed_petitions(ids: list[str], petitions_by_id: dict[str, dict], embedder,
                    cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    texts = [petition_text(petitions_by_id[i].get("title"), petitions_by_id[i].get("text")) for i in ids]
    vecs = embed_cached(embedder, texts, cache_dir)
    return dict(zip(ids, vecs, strict=True))


def pair_matrix(triples: list[tuple[str, str, int]], petitions_by_id: dict[str, dict],
                vectors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature matrix X (FEATURES order), labels y and connected-component groups for labelled pairs."""
    rows = []
    for a, b, _ in triples:
        sim = float(np.dot(vectors[a], vectors[b]))
        feats, _facts = pair_features(petitions_by_id[a], petitions_by_id[b], sim)
        rows.append([feats[f] for f in FEATURES])
    X = np.asarray(rows, dtype=np.float64).reshape(len(triples), len(FEATURES))
    y = np.asarray([t[2] for t in triples], dtype=int)
    groups = np.asarray(connected_components([(a, b) for a, b, _ in triples]))
    return X, y, groups


def fit_repeat_scorer(pairs: list[dict], petitions_by_id: dict[str, dict], embedder,
                      cache_dir: str | Path | None = None, min_precision: float = MIN_PRECISION,
                      trained_on: str = "", features: list[str] | None = None) -> RepeatScorer:
    """Fit a calibrated RepeatScorer on `features` (default DEFAULT_FEATURES); its threshold and metrics
    come from grouped cross-validation."""
    t0 = time.perf_counter()
    triples = labelled_pairs(pairs, petitions_by_id)
    if not triples:
        raise DataError("no pairs labelled 0 or 1")
    ids = sorted({i for a, b, _ in triples for i in (a, b)})
    vectors = embed_petitions(ids, petitions_by_id, embedder, cache_dir)
    X, y, groups = pair_matrix(triples, petitions_by_id, vectors)
    names = list(features or DEFAULT_FEATURES)
    cols = [FEATURES.index(f) for f in names]
    scorer = RepeatScorer.fit(X[:, cols], y, groups, min_precision=min_precision, feature_names=names,
                              encoder_fingerprint=embedder.fingerprint, trained_on=trained_on)
    log.info("fitted repeat scorer on %d pairs (%d groups) in %.1fs; threshold %.3f", len(y),
             len(set(groups.tolist())), time.perf_counter() - t0, scorer.threshold)
    return scorer
