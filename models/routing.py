"""One calibrated department decision from several kinds of evidence (the department model and the duty list).

For a petition and each department d of the model's labels, the evidence is

| evidence | value |
|---|---|
| `model` | log p(d) of the department bundle (encoder + TF-IDF ensemble, calibrated) |
| `keywords` | duty-list keyword hits of d in the petition, capped at 2 |
| `patterns` | 1 when one of d's duty-list regexes matches, else 0 |
| `remit` | similarity of the petition to d's remit text (职责) in the duty list (models/duty_list.py) |
| `level` | 1 when d's duty-list `level` (街道乡镇: township) is named in the petition (a 街道/乡镇, village, community) |
| `knn` | share of d among the petition's nearest labelled examples kept in the bundle (models/neighbours.py) |

and the answer is p(d) = softmax_d(Σ_j w_j · evidence_j(d) + b_d): a conditional logit whose weights w_j are
shared by all departments, so editing the duty list (a keyword, a remit, a pattern) changes routing at once,
without retraining; b_d is a per-department bias. Both are fitted on the bundle's validation split (hand labels)
by maximum likelihood with an L2 penalty, so the scores are calibrated probabilities that sum to 1. The answer
names the evidence that decided it: the term with the largest share of the winner's margin over the runner-up.
`RoutingModel` saves itself as JSON (`routing.json` in a department bundle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xinfang.errors import ModelError
from xinfang.models.duty_list import DutyList

__all__ = ["EVIDENCE", "ROUTING_FILE", "RoutingModel", "evidence"]

EVIDENCE = ("model", "keywords", "patterns", "remit", "level", "knn")
ROUTING_FILE = "routing.json"
MAX_KEYWORD_HITS = 2


def evidence(texts: list[str], model_probs: np.ndarray, labels: list[str], duty: DutyList | None,
             knn: np.ndarray | None = None) -> np.ndarray:
    """(n, len(labels), len(EVIDENCE)) evidence array; duty-list terms are 0 without a duty list, `knn` (the
    neighbours' label shares, (n, len(labels))) 0 without one."""
    f = np.zeros((len(texts), len(labels), len(EVIDENCE)), dtype=np.float64)
    f[:, :, 0] = np.log(np.clip(model_probs, 1e-9, None))
    if knn is not None:
        f[:, :, 5] = knn
    if duty is None:
        return f
    col = {lab: j for j, lab in enumerate(labels)}
    for i, text in enumerate(texts):
        for d, n in duty.keyword_hits(text).items():
            if d in col:
                f[i, col[d], 1] = min(n, MAX_KEYWORD_HITS)
        for d in duty.pattern_departments(text):
            if d in col:
                f[i, col[d], 2] = 1.0
        for d, s in duty.remit_similarity(text).items():
            if d in col:
                f[i, col[d], 3] = s
        for d, s in duty.level_hits(text).items():
            if d in col:
                f[i, col[d], 4] = s
    return f


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class RoutingModel:
    labels: list[str]
    weights: dict[str, float]
    bias: dict[str, float]
    l2: float = 0.01
    threshold: float = 0.0  # needs_review below this routed score (chosen for target_precision)
    target_precision: float | None = None

    @classmethod
    def fit(cls, f: np.ndarray, y: np.ndarray, labels: list[str], l2: float = 0.01,
            use: tuple[str, ...] | None = None) -> RoutingModel:
        """Maximum likelihood on evidence `f` (n, L, E) and class indices `y`, L2 on the biases and on the
        evidence weights' distance from (1, 0, 0, ...): with little data the decision stays the model's.
        `use`: the evidence terms to fit (the others get weight 0; default all)."""
        from scipy.optimize import minimize

        if use is not None:
            f = f * np.array([e in use for e in EVIDENCE], dtype=np.float64)
        n, n_lab, n_ev = f.shape
        prior = np.array([1.0] + [0.0] * (n_ev - 1))
        yy = np.asarray(y)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:n_ev], theta[n_ev:]
            p = _softmax(f @ w + b)
            nll = -np.log(np.clip(p[np.arange(n), yy], 1e-12, None)).mean()
            onehot = np.zeros_like(p)
            onehot[np.arange(n), yy] = 1.0
            g = (p - onehot) / n  # d nll / d score
            grad_w = np.einsum("nl,nle->e", g, f) + 2 * l2 * (w - prior)
            grad_b = g.sum(0) + 2 * l2 * b
            return nll + l2 * (((w - prior) ** 2).sum() + (b ** 2).sum()), np.concatenate([grad_w, grad_b])

        theta0 = np.concatenate([prior, np.zeros(n_lab)])
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B")
        w, b = res.x[:n_ev], res.x[n_ev:]
        if use is not None:
            w = np.where([e in use for e in EVIDENCE], w, 0.0)
        return cls(list(labels), {e: float(v) for e, v in zip(EVIDENCE, w, strict=True)},
                   {lab: float(v) for lab, v in zip(labels, b, strict=True)}, l2)

    def _wb(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([self.weights.get(e, 0.0) for e in EVIDENCE]),
                np.array([self.bias.get(lab, 0.0) for lab in self.labels]))

    def proba(self, f: np.ndarray) -> np.ndarray:
        w, b = self._wb()
        return _softmax(f @ w + b)

    def decided_by(self, f_row: np.ndarray, winner: int, runner_up: int) -> dict[str, float]:
        """Each evidence term's part of the winner's margin over the runner-up (positive: for the winner)."""
        w, _ = self._wb()
        return {e: round(float(w[j] * (f_row[winner, j] - f_row[runner_up, j])), 4) for j, e in enumerate(EVIDENCE)}

    def to_json(self) -> dict:
        return {"format": "xinfang-routing/1", "evidence": list(EVIDENCE), "labels": self.labels,
                "weights": self.weights, "bias": self.bias, "l2": self.l2, "threshold": self.threshold,
                "target_precision": self.target_precision,
                "rule": "p(d) = softmax_d(sum_j weights[j] * evidence_j(d) + bias[d])"}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RoutingModel:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(list(d["labels"]), {k: float(v) for k, v in d["weights"].items()},
                       {k: float(v) for k, v in d["bias"].items()}, float(d.get("l2", 0.01)),
                       float(d.get("threshold", 0.0)), d.get("target_precision"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: unreadable routing model ({exc})") from exc
