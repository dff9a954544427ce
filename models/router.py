"""Department routing: duty list (权责清单) + department model + jurisdiction (属地) extraction.

Duty list: a YAML list of entries
    - department: 交通运输
      keywords: [公交, 出租车, 道路]      # plain substrings
      patterns: ["(公交|客运).{0,6}(停运|改线)"]   # Python regexes
      topics: [交通运输]                  # topic labels whose petitions this department usually handles

With a department bundle that carries a fitted routing model (`routing.json`, models/routing.py), the answer is
one calibrated decision over the model's probabilities and the duty list's keyword, pattern and remit evidence:
scores are probabilities summing to 1, nothing overrides them, and the answer says which evidence decided it
(`"evidence": {"decided_by": "keywords", "margin": {...}, "keywords": [...]}`). A duty-list edit changes the
answers without retraining.

Otherwise (a bundle without one, or no department model) the rules below apply, first that applies decides:
1. **Pattern** — if a duty-list regex matches the normalised petition text, that entry's department wins
   outright (score 1.0), overriding the model. If several entries match, the first in file order wins;
   the others follow it in `top`.
2. **Department model + keywords** — with a department model, its calibrated probabilities are re-ranked by
   keyword hits: p'(d) = p(d) * (1 + 0.5 * min(hits(d), 2)), renormalised. So a keyword can promote a
   close runner-up but cannot overturn a confident model (a 2:1 margin survives one keyword, 3:1 survives two).
3. **Topic prior** — without a department model, the topic model's probabilities are spread over the
   departments that list that topic (a topic listed by k departments gives each 1/k of its mass), then
   re-ranked by keyword hits as in 2. Departments named by no topic and no keyword get nothing.
4. No department model and no duty list: no department is predicted.

Jurisdiction: `extract_jurisdiction` finds the 市/区/县 (masked like A市, A3区, K8县, or real like 临江区) and
the 乡镇/街道 (东湖街道, 桃源镇) named in the petition; the answer uses the most specific county-level unit
(区/县, else 市, else 乡镇/街道): `{"jurisdiction": "A7县", "display": "A7县 · 交通运输"}`.
"""

from __future__ import annotations

import numpy as np

from xinfang.errors import ModelError
from xinfang.models.duty_list import DutyList
from xinfang.models.jurisdiction import extract_jurisdiction, jurisdiction_levels
from xinfang.models.routing import RoutingModel, evidence

__all__ = ["Router", "extract_jurisdiction", "jurisdiction_levels"]

KEYWORD_BOOST = 0.5
MAX_KEYWORD_HITS = 2


# ------------------------------------------------------------------------------------------ router
class Router:
    """Combine a duty list and/or department-model probabilities into the department answer."""

    def __init__(self, duty_list: DutyList | None = None, labels: list[str] | None = None,
                 routing: RoutingModel | None = None, neighbours=None) -> None:
        self.duty = duty_list
        self.model_labels = list(labels or [])
        if routing is not None and routing.labels != self.model_labels:
            raise ModelError("routing model labels differ from the department model's")
        self.routing = routing
        self.neighbours = neighbours  # texts -> (n, len(labels)) label shares of their nearest examples, or None

    def route(self, text: str, dept_probs: np.ndarray | None = None, topic_probs: dict[str, float] | None = None,
              top_k: int = 3) -> dict | None:
        """One department answer: {"label", "score", "top", "jurisdiction", "display"} (None if no source)."""
        if self.routing is not None and dept_probs is not None:
            return self._decide(text, dept_probs, top_k)
        scores: dict[str, float] = {}
        if dept_probs is not None:
            scores = {lab: float(p) for lab, p in zip(self.model_labels, dept_probs, strict=True)}
        elif self.duty is not None and topic_probs:
            scores = self.duty.topic_prior(topic_probs)
        if self.duty is not None:
            hits = self.duty.keyword_hits(text)
            if hits and not scores:  # keywords alone (no model, no topic owner)
                scores = {d: 0.0 for d in hits}
            for d, n in hits.items():
                base = scores.get(d, 0.0)
                if base == 0.0 and dept_probs is None and topic_probs:
                    base = 0.01  # a keyword-only department still appears as a candidate
                scores[d] = base * (1 + KEYWORD_BOOST * min(n, MAX_KEYWORD_HITS))
            total = sum(scores.values())
            if total > 0:
                scores = {d: s / total for d, s in scores.items()}
            elif hits:
                scores = {d: n / sum(hits.values()) for d, n in hits.items()}
            forced = self.duty.pattern_departments(text)
            if forced:
                rest = sorted((d for d in scores if d not in forced), key=lambda d: -scores[d])
                ranked = [(d, 1.0) for d in forced[:1]] + [(d, scores.get(d, 0.0)) for d in forced[1:]] + \
                         [(d, scores[d]) for d in rest]
                return self._answer(text, ranked, top_k)
        if not scores:
            return None
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return self._answer(text, ranked, top_k)

    def routed_probs(self, texts: list[str], dept_probs: np.ndarray) -> np.ndarray:
        """(n, len(labels)) routed scores over the model's labels, rows summing to 1: the ranking `route` gives
        (pattern winners first), for scoring routed answers with the usual classification metrics. Departments
        outside the model's labels are dropped."""
        if self.routing is not None:
            return self.routing.proba(self._evidence(texts, dept_probs))
        col = {lab: j for j, lab in enumerate(self.model_labels)}
        out = np.zeros((len(texts), len(self.model_labels)))
        for i, (text, p) in enumerate(zip(texts, dept_probs, strict=True)):
            ranked = self.route(text, p, top_k=len(col) + len(self.duty.departments if self.duty else []))
            kept = [(d["label"], d["score"]) for d in (ranked or {}).get("top", []) if d["label"] in col]
            prev = np.inf
            for lab, score in kept:  # kept monotone, so forced answers keep their place in the ranking
                prev = min(float(score), prev - 1e-9)
                out[i, col[lab]] = max(prev, 0.0)
            out[i] /= out[i].sum() or 1.0
        return out

    def _decide(self, text: str, dept_probs: np.ndarray, top_k: int) -> dict:
        f = self._evidence([text], dept_probs[None, :])
        p = self.routing.proba(f)[0]
        order = np.argsort(-p, kind="stable")
        ranked = [(self.model_labels[j], float(p[j])) for j in order]
        ans = self._answer(text, ranked, top_k)
        margin = self.routing.decided_by(f[0], int(order[0]), int(order[1])) if len(order) > 1 else {}
        top = ranked[0][0]
        entry = self.duty.entry(top) if self.duty is not None else None
        ans["evidence"] = {"decided_by": max(margin, key=margin.get) if margin else "model", "margin": margin,
                           "keywords": [k for k in entry.keywords if k in text] if entry else []}
        return ans

    def _evidence(self, texts: list[str], dept_probs: np.ndarray) -> np.ndarray:
        knn = self.neighbours(texts) if self.neighbours is not None else None
        return evidence(texts, dept_probs, self.model_labels, self.duty, knn)

    @staticmethod
    def _answer(text: str, ranked: list[tuple[str, float]], top_k: int) -> dict:
        label, score = ranked[0]
        where = extract_jurisdiction(text)
        return {"label": label, "score": round(float(score), 6),
                "top": [{"label": d, "score": round(float(s), 6)} for d, s in ranked[:max(1, top_k)]],
                "jurisdiction": where, "display": f"{where} · {label}" if where else label}
