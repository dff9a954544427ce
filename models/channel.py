"""Legal channel of a petition (诉访分离): the channel table and the decision beside the channel model.

The channel table (YAML, `datasets/channels.yaml` by default) says, for each channel, the procedure it starts,
the body it points to, and the message keywords that are evidence for it (from the channel definitions):

    channels:
      诉讼仲裁复议:
        procedure: 依法通过诉讼、仲裁或行政复议解决
        body: 人民法院
        keywords: [仲裁, 起诉, 判决, 合同纠纷]
        routes:                                   # first matching pattern picks procedure and body
          - {pattern: "劳动合同|辞退|工资", procedure: 申请劳动人事争议仲裁, body: 劳动人事争议仲裁委员会}
      依法履职:
        procedure: 转有权机关依法履职
        body_from: department                    # the department answer names the body
        body: 有管辖权的行政执法机关             # used without a department answer

Channels are the five of `CHANNELS`; a key outside them is an error naming it, and so is a table without an
entry for a label the channel model can answer.

Decision (`ChannelDecider.decide`): the model's calibrated probabilities are used as they are when the bundle read
the keywords itself (the default, text-only bundle: config `keyword_fusion: false`, models/channel_head.py); an
encoder bundle's (recipe `channel`) are multiplied, for each non-信访 channel, by `1 + keyword_boost * min(hits, 2)` (hits: distinct table keywords in the message) and renormalised,
then mixed with the keyword rule's vote: `(1 - keyword_weight) * p + keyword_weight * onehot(rule)`, where the
rule names the non-信访 channel with the most hits (else 信访). The model alone never names the rare channels
(a few dev examples each); the vote lets a clear keyword case reach them, at a score that usually sends it to
review. The top channel is the answer, and its score decides review with the bundle's threshold, raised per
channel by the entry's `review_threshold` (1 sends every answer of that channel to review: in grouped CV no
threshold let the non-信访 channels reach the precision 0.90 that an automatic "go to court" needs;
eval/reports/channels.md). A non-信访 answer always names its procedure and body and says why (`reason`: the
model's score and the keywords seen). `definition` (what the channel is for) is read by `channel_evidence`, the
evidence columns eval/explore_channels.py measures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xinfang.errors import DataError, ModelError
from xinfang.fsutil import parse_yaml, read_text

__all__ = ["CHANNELS", "PETITION", "ChannelEntry", "ChannelTable", "ChannelDecider", "channel_evidence",
           "check_channel_labels"]

CHANNELS = ("信访", "依法履职", "诉讼仲裁复议", "纪检监察", "其他")
PETITION = "信访"
ENTRY_KEYS = {"procedure", "body", "body_from", "keywords", "routes", "definition", "review_threshold"}
BODY_FROM = ("department",)
DEFAULT_BOOST = 0.5
DEFAULT_WEIGHT = 0.0


@dataclass
class ChannelRoute:
    pattern: re.Pattern
    procedure: str
    body: str


@dataclass
class ChannelEntry:
    channel: str
    procedure: str
    body: str
    body_from: str | None = None
    keywords: list[str] = field(default_factory=list)
    routes: list[ChannelRoute] = field(default_factory=list)
    definition: str = ""
    review_threshold: float | None = None  # an answer of this channel under it goes to review

    def keyword_hits(self, text: str) -> list[str]:
        return [k for k in self.keywords if k and k in text]


def check_channel_labels(records: list[dict], column: str, source: str = "data") -> None:
    """DataError naming the first row whose channel label is missing, empty or not one of `CHANNELS`."""
    for i, rec in enumerate(records):
        row = rec.get("_row", i + 1)
        if column not in rec:
            raise DataError(f"{source}: row {row}: no label column '{column}'")
        value = rec[column]
        label = str(value).strip() if value is not None else ""
        if not label:
            raise DataError(f"{source}: row {row}: empty label in column '{column}'")
        if label not in CHANNELS:
            raise DataError(f"{source}: row {row}: channel label {label!r} is not one of {', '.join(CHANNELS)}")


def _str(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected a non-empty string")
    return value.strip()


@dataclass
class ChannelTable:
    entries: dict[str, ChannelEntry]
    keyword_boost: float = DEFAULT_BOOST
    path: Path | None = None
    keyword_weight: float = DEFAULT_WEIGHT

    @classmethod
    def load(cls, path: str | Path) -> ChannelTable:
        return cls.parse(read_text(path, "channel table"), Path(path))

    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> ChannelTable:

        where = str(path or "channel table")
        root = parse_yaml(text, where)
        if not isinstance(root, dict) or not isinstance(root.get("channels"), dict) or not root["channels"]:
            raise DataError(f"{where}: a channel table is a mapping with a non-empty `channels:` mapping "
                            f"(channel -> procedure, body, keywords, routes)")
        extra = set(root) - {"channels", "keyword_boost", "keyword_weight"}
        if extra:
            raise DataError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
        boost = root.get("keyword_boost", DEFAULT_BOOST)
        if isinstance(boost, bool) or not isinstance(boost, int | float) or boost < 0:
            raise DataError(f"{where}: keyword_boost must be a number >= 0, got {boost!r}")
        weight = root.get("keyword_weight", DEFAULT_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < 1:
            raise DataError(f"{where}: keyword_weight must be a number in [0, 1), got {weight!r}")
        entries = {}
        for name, item in root["channels"].items():
            key = f"{where}: channels.{name}"
            if name not in CHANNELS:
                raise DataError(f"{key}: unknown channel (expected one of {', '.join(CHANNELS)})")
            if not isinstance(item, dict):
                raise DataError(f"{key}: expected a mapping with procedure, body, keywords, routes")
            bad = set(item) - ENTRY_KEYS
            if bad:
                raise DataError(f"{key}: unknown key(s) {', '.join(sorted(map(str, bad)))}")
            body_from = item.get("body_from")
            if body_from is not None and body_from not in BODY_FROM:
                raise DataError(f"{key}.body_from: expected {' or '.join(BODY_FROM)}, got {body_from!r}")
            keywords = item.get("keywords") or []
            if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
                raise DataError(f"{key}.keywords: expected a list of non-empty strings")
            routes = []
            for j, r in enumerate(item.get("routes") or []):
                rk = f"{key}.routes[{j}]"
                if not isinstance(r, dict) or set(r) != {"pattern", "procedure", "body"}:
                    raise DataError(f"{rk}: expected {{pattern, procedure, body}}")
                try:
                    pattern = re.compile(_str(r["pattern"], f"{rk}.pattern"))
                except re.error as exc:
                    raise DataError(f"{rk}.pattern: invalid regex ({exc})") from exc
                routes.append(ChannelRoute(pattern, _str(r["procedure"], f"{rk}.procedure"),
                                           _str(r["body"], f"{rk}.body")))
            definition = item.get("definition") or ""
            if not isinstance(definition, str):
                raise DataError(f"{key}.definition: expected a string")
            review = item.get("review_threshold")
            if review is not None and (isinstance(review, bool) or not isinstance(review, int | float)
                                       or not 0 <= review <= 1):
                raise DataError(f"{key}.review_threshold: expected a number in [0, 1], got {review!r}")
            entries[name] = ChannelEntry(name, _str(item.get("procedure"), f"{key}.procedure"),
                                         _str(item.get("body"), f"{key}.body"), body_from, list(keywords), routes,
                                         definition.strip(), None if review is None else float(review))
        if PETITION not in entries:
            raise DataError(f"{where}: channels.{PETITION} is required")
        return cls(entries, float(boost), path, float(weight))

    def check_labels(self, labels: list[str], where: str) -> None:
        """ModelError naming the first model label the table has no entry for."""
        for lab in labels:
            if lab not in self.entries:
                raise ModelError(f"{where}: the channel model answers '{lab}' but the channel table "
                                 f"{self.path or ''} has no entry channels.{lab}")

    def rule(self, text: str) -> str:
        """The keyword rule: the non-信访 channel with the most keyword hits (ties: CHANNELS order), else 信访."""
        hits = {c: len(e.keyword_hits(text)) for c, e in self.entries.items() if c != PETITION}
        best = max(hits.values(), default=0)
        return PETITION if best == 0 else next(c for c in CHANNELS if hits.get(c) == best)

    def resolve(self, channel: str, text: str, department: dict | None = None) -> tuple[str, str]:
        """(procedure, body) of `channel` for this petition text and department answer."""
        entry = self.entries[channel]
        for r in entry.routes:
            if r.pattern.search(text):
                return r.procedure, r.body
        if entry.body_from == "department" and department:
            return entry.procedure, str(department.get("display") or department.get("label"))
        return entry.procedure, entry.body


MAX_KEYWORD_HITS = 2
ALWAYS_REVIEW = 1.0  # a review_threshold this high sends every answer of the channel to review


def channel_evidence(table: ChannelTable, texts: list[str], emb: np.ndarray | None = None,
                     definition_emb: dict[str, np.ndarray] | None = None,
                     channels: tuple[str, ...] = CHANNELS[1:4]) -> dict[str, np.ndarray]:
    """Evidence columns per text: `keywords` (n, len(channels)) table keyword hits capped at MAX_KEYWORD_HITS;
    with embeddings, `definition` (n, len(definition_emb)) cosine of each text to each channel's definition,
    centred per text (the channel it is closest to stands out)."""
    kw = np.array([[min(len(table.entries[c].keyword_hits(t)) if c in table.entries else 0, MAX_KEYWORD_HITS)
                    for c in channels] for t in texts], dtype=np.float64).reshape(len(texts), len(channels))
    out = {"keywords": kw}
    if emb is not None and definition_emb:
        D = np.stack(list(definition_emb.values()))
        D = D / np.linalg.norm(D, axis=1, keepdims=True)
        E = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9, None)
        sim = E @ D.T
        out["definition"] = sim - sim.mean(1, keepdims=True)
    return out


class ChannelDecider:
    """Model probabilities + table keywords -> the channel answer (see the module docstring)."""

    def __init__(self, table: ChannelTable, labels: list[str], threshold: float, fuse: bool = True) -> None:
        """`fuse` False: the probabilities are used as they are (a model that read the keywords itself, as the
        text-only channel bundle does: its config has `keyword_fusion: false`); the keyword hits still give
        the reason."""
        table.check_labels(labels, "channel model")
        self.table, self.labels, self.threshold, self.fuse_keywords = table, list(labels), float(threshold), fuse

    def threshold_of(self, label: str) -> float:
        """The review threshold of an answer `label`: the bundle's, raised by the table's entry when it is higher."""
        own = self.table.entries[label].review_threshold
        return self.threshold if own is None else max(self.threshold, own)

    def fuse(self, probs: np.ndarray, text: str) -> tuple[np.ndarray, dict[str, list[str]]]:
        """Probabilities re-weighted by keyword hits, renormalised; and the hits per channel."""
        hits = {lab: self.table.entries[lab].keyword_hits(text) for lab in self.labels if lab != PETITION}
        if not self.fuse_keywords:
            return np.asarray(probs, dtype=np.float64), {k: v for k, v in hits.items() if v}
        factor = np.array([1.0 + self.table.keyword_boost * min(len(hits.get(lab, [])), 2) for lab in self.labels])
        p = np.asarray(probs, dtype=np.float64) * factor
        p = p / p.sum()
        w = self.table.keyword_weight
        vote = self.table.rule(text)
        if w > 0 and vote in self.labels:
            p = (1 - w) * p
            p[self.labels.index(vote)] += w
        return p, {k: v for k, v in hits.items() if v}

    def decide(self, probs: np.ndarray, text: str, department: dict | None = None, top_k: int = 3) -> dict:
        """{label, score, top, reason, procedure, body, needs_review} for one petition."""
        p, hits = self.fuse(probs, text)
        order = np.argsort(-p, kind="stable")[:max(1, min(top_k, len(self.labels)))]
        label = self.labels[order[0]]
        score = float(p[order[0]])
        model_score = float(probs[order[0]])
        reason = f"模型 {model_score:.2f}"
        if hits.get(label):
            reason += "；关键词：" + "、".join(hits[label][:4])
        need = self.threshold_of(label)
        unsure = score < need or need >= ALWAYS_REVIEW
        if score < (self.threshold if need >= ALWAYS_REVIEW else need):
            reason += "；把握不足，需人工甄别"
        elif unsure:
            reason += "；该渠道须人工甄别确认"
        procedure, body = self.table.resolve(label, text, department)
        return {"label": label, "score": round(score, 6),
                "top": [{"label": self.labels[j], "score": round(float(p[j]), 6)} for j in order],
                "reason": reason, "procedure": procedure, "body": body, "needs_review": unsure}
