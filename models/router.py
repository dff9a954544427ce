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

import re

import numpy as np

from xinfang.errors import ModelError
from xinfang.models.duty_list import DutyList
from xinfang.models.routing import RoutingModel, evidence

__all__ = ["Router", "extract_jurisdiction", "jurisdiction_levels"]

KEYWORD_BOOST = 0.5
MAX_KEYWORD_HITS = 2


# ------------------------------------------------------------------------------------------ jurisdiction
_MASKED = re.compile(r"(?<![A-Za-z0-9])([A-Z][0-9]{0,2})(市|区|县)")
# A unit suffix followed by these is a word, not a place: 市场, 市民, 区域, 县城 stay, 乡村 …
_SUFFIX = re.compile(r"街道|市(?![场民值面容级井郊])|区(?![域别块间分])|县|镇|乡(?![村下亲土愁])")
_UNIT_CHARS = set("市区县镇乡省")
# Leading characters that are not part of a place name (verbs, prepositions, admin suffixes, etc.)
_LEAD_STOP = set("在住于是的到从了和与及我你他她省市区县镇乡道个向对给把被让位处内外里号路街村组将由请该本全原新老")
# Words ending in a unit suffix that are not place names.
_NOT_PLACE = {
    "小区", "社区", "园区", "景区", "城区", "市区", "片区", "校区", "郊区", "山区", "辖区", "军区", "街区", "库区", "厂区",
    "矿区", "营区", "灾区", "湖区", "林区", "牧区", "东区", "西区", "南区", "北区", "中区", "本区", "全区", "该区", "我区",
    "超市", "城市", "菜市", "夜市", "门市", "全市", "本市", "该市", "我市", "股市", "楼市", "都市", "上市", "闹市", "集市",
    "开市", "早市", "黑市", "花市", "车市", "市市", "省市", "各市",
    "全县", "本县", "该县", "我县", "各县", "郡县", "州县",
    "城镇", "乡镇", "集镇", "本镇", "全镇", "该镇", "我镇", "各镇", "小镇", "古镇", "重镇", "市镇",
    "城乡", "家乡", "老乡", "下乡", "回乡", "故乡", "同乡", "本乡", "全乡", "该乡", "各乡", "我乡", "异乡", "他乡", "返乡",
    "县乡", "镇乡", "水乡", "梦乡",
    "街道", "各街道", "本街道", "该街道",
}
_LEVEL = {"市": "city", "区": "county", "县": "county", "镇": "township", "乡": "township", "街道": "township"}


# Verbs and function words that end a run of characters before a unit suffix: the name starts after the last one
# ("说要问街道" names no place; "反映星沙镇" names 星沙镇).
_INNER_STOP = set("说要问找去跟让请给帮向对把被在是的了和与及我你他她们这那有没不也都就还又再已曾才会能可该映诉举报询议求")


def _clean_name(name: str, suffix: str) -> str | None:
    cut = max((i for i, ch in enumerate(name) if ch in _INNER_STOP), default=-1)
    name = name[cut + 1:]
    while name and name[0] in _LEAD_STOP:
        name = name[1:]
    if len(name) > 4:
        name = name[-4:]
    if len(name) < 2 or (name + suffix) in _NOT_PLACE or name[-1] in "小社园景城片校郊山辖超菜夜门" or \
            (suffix == "区" and name[-1] in "民属舍活宅商业厂矿发"):  # 居民区, 家属区, 宿舍区, 开发区 …
        return None
    return name + suffix


def jurisdiction_levels(text: str | None) -> dict[str, str]:
    """First 市 (city), 区/县 (county) and 乡镇/街道 (township) named in the text, masked or real."""
    found: dict[str, tuple[int, str]] = {}
    if not text:
        return {}
    for m in _MASKED.finditer(text):
        found.setdefault(_LEVEL[m.group(2)], (m.start(), m.group(0)))
    for m in _SUFFIX.finditer(text):
        suffix, start = m.group(0), m.start()
        j = start
        while j > 0 and start - j < 6 and "\u4e00" <= text[j - 1] <= "\u9fff" and text[j - 1] not in _UNIT_CHARS:
            j -= 1
        name = _clean_name(text[j:start], suffix)
        if name is None:
            continue
        level = _LEVEL[suffix]
        pos = m.end() - len(name)
        if level not in found or pos < found[level][0]:
            found[level] = (pos, name)
    return {lvl: v[1] for lvl, v in sorted(found.items(), key=lambda kv: kv[1][0])}


def extract_jurisdiction(text: str | None) -> str | None:
    """The most specific county-level unit named: 区/县, else 市, else 乡镇/街道; None when none."""
    levels = jurisdiction_levels(text)
    for lvl in ("county", "city", "township"):
        if lvl in levels:
            return levels[lvl]
    return None


# ------------------------------------------------------------------------------------------ router
class Router:
    """Combine a duty list and/or department-model probabilities into the department answer."""

    def __init__(self, duty_list: DutyList | None = None, labels: list[str] | None = None,
                 routing: RoutingModel | None = None) -> None:
        self.duty = duty_list
        self.model_labels = list(labels or [])
        if routing is not None and routing.labels != self.model_labels:
            raise ModelError("routing model labels differ from the department model's")
        self.routing = routing

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
            return self.routing.proba(evidence(texts, dept_probs, self.model_labels, self.duty))
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
        f = evidence([text], dept_probs[None, :], self.model_labels, self.duty)
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

    @staticmethod
    def _answer(text: str, ranked: list[tuple[str, float]], top_k: int) -> dict:
        label, score = ranked[0]
        where = extract_jurisdiction(text)
        return {"label": label, "score": round(float(score), 6),
                "top": [{"label": d, "score": round(float(s), 6)} for d, s in ranked[:max(1, top_k)]],
                "jurisdiction": where, "display": f"{where} · {label}" if where else label}
