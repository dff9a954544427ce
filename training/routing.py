"""Fitting the department routing model (models/routing.py) on a bundle's validation split."""

from __future__ import annotations

import logging

import numpy as np

from xinfang.models.duty_list import DutyList
from xinfang.models.routing import EVIDENCE, RoutingModel, evidence

__all__ = ["fit_routing"]

log = logging.getLogger(__name__)


def fit_routing(texts: list[str], probs: np.ndarray, y: list[int], labels: list[str], duty: DutyList,
                target_precision: float, seed: int = 13,
                use: tuple[str, ...] | None = None, knn: np.ndarray | None = None) -> tuple[RoutingModel, dict]:
    """Fit the routing model on validation evidence; its review threshold and figures come from 2-fold
    cross-fitted probabilities on the same rows (each half scored by a model fitted on the other).
    `use`: the evidence terms to fit (default all of models/routing.EVIDENCE); `knn`: the neighbours' label
    shares of the rows (models/neighbours.py), if the bundle keeps neighbours."""
    from sklearn.model_selection import StratifiedKFold

    from xinfang.models import calibration as cal

    f = evidence(texts, probs, labels, duty, knn)
    yy = np.asarray(y)
    oof = np.zeros_like(probs, dtype=np.float64)
    counts = np.bincount(yy, minlength=len(labels))
    n_splits = 2 if counts[counts > 0].min() >= 2 else 0
    if n_splits:
        for tr, te in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(texts, yy):
            oof[te] = RoutingModel.fit(f[tr], yy[tr], labels, use=use).proba(f[te])
    else:  # too few rows per class to cross-fit: figures and threshold from the in-sample fit (said in the report)
        oof = RoutingModel.fit(f, yy, labels, use=use).proba(f)
    model = RoutingModel.fit(f, yy, labels, use=use)
    review = cal.choose_threshold(oof, yy, target_precision)
    model.threshold = float(review["threshold"])
    model.target_precision = target_precision

    def acc(p: np.ndarray) -> tuple[float, float]:
        top = np.argsort(-p, 1)
        return float((top[:, 0] == yy).mean()), float((top[:, :3] == yy[:, None]).any(1).mean())

    report = {"evidence": list(EVIDENCE), "weights": model.weights, "fitted_on": "validation split (hand labels)",
              "cross_fitted": bool(n_splits), "review": review,
              "validation_accuracy": {"model": acc(probs)[0], "routed": acc(oof)[0]},
              "validation_top3": {"model": acc(probs)[1], "routed": acc(oof)[1]}}
    log.info("routing model: weights %s; validation accuracy %.3f -> %.3f (cross-fitted)",
             {k: round(v, 3) for k, v in model.weights.items()}, report["validation_accuracy"]["model"],
             report["validation_accuracy"]["routed"])
    return model, report
