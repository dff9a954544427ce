"""Calibration on plain numpy arrays: softmax with temperature, temperature fitting, ECE, the abstain
threshold, and the encoder + TF-IDF ensemble. Used when a bundle predicts and when training calibrates it."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["softmax", "expected_calibration_error", "fit_temperature", "choose_threshold", "ensemble_proba"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (weighted mean |accuracy - confidence|)."""
    probs = np.asarray(probs)
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (grid + golden-section refinement)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    grid = np.linspace(math.log(0.05), math.log(20.0), 61)
    vals = [nll(g) for g in grid]
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def choose_threshold(probs: np.ndarray, y: np.ndarray, target_precision: float, min_count: int = 10) -> dict:
    """Lowest score threshold whose accepted part (top score >= t) reaches `target_precision`.

    The accepted set is grown from the most confident prediction down; the threshold is the score of the
    last prediction in the largest prefix that still has precision >= target (and at least `min_count`
    predictions, so a handful of lucky ones do not set it). When no prefix qualifies, the threshold is
    1.0 + eps: every prediction needs review (`attainable` False).
    """
    probs = np.asarray(probs)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    order = np.argsort(-conf, kind="stable")
    cum = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = [k for k in range(len(order)) if cum[k] >= target_precision and k + 1 >= min(min_count, len(order))]
    if not ok:
        return {"threshold": 1.000001, "target_precision": target_precision, "attainable": False,
                "validation_precision": None, "validation_coverage": 0.0}
    k = max(ok)
    t = float(conf[order[k]])
    accepted = conf >= t
    return {"threshold": t, "target_precision": target_precision, "attainable": True,
            "validation_precision": float(correct[accepted].mean()),
            "validation_coverage": float(accepted.mean())}


def ensemble_proba(p_encoder: np.ndarray, p_tfidf: np.ndarray | None, weight: float,
                   temperature: float = 1.0) -> np.ndarray:
    """Final probabilities: softmax(log(w * p_encoder + (1 - w) * p_tfidf) / temperature).

    `p_tfidf` may be None when `weight` is 1 (the TF-IDF part then does not count).
    """
    p = np.asarray(p_encoder, dtype=np.float64)
    if weight < 1.0:
        if p_tfidf is None:
            raise ValueError("ensemble weight < 1 needs TF-IDF probabilities")
        p = weight * p + (1.0 - weight) * np.asarray(p_tfidf, dtype=np.float64)
    if len(p) == 0:
        return p
    return softmax(np.log(np.clip(p, 1e-12, None)), temperature)
