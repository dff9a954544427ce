"""Weak legal-channel labels (诉访分离) from official replies: how a closed case was actually channelled.

A reply often says where the matter belongs: "建议通过法律途径解决", "可申请劳动仲裁", "可依法提起行政复议",
"已立案侦查", "已转纪委调查", "依法责令停止违法行为". `extract_channel(reply)` looks for these phrases
(`RULES`, each with a channel and a tier) and returns the channel, its confidence tier and the evidence span, or
undecided with the reason:

| tier | what it takes |
|---|---|
| high | an explicit redirect or outcome: 法律途径 / 向法院起诉 / 申请仲裁 / 行政复议 (诉讼仲裁复议); 转纪委 / 纪委已调查 / 违纪 / 政务处分 (纪检监察); 立案查处 / 立案侦查 / 行政处罚 / 责令 (依法履职) |
| low | weaker signs: 合同纠纷 / 判决 / 起诉 (诉讼仲裁复议), 执法人员查处 / 整改到位 / 依法处理 (依法履职); 信访 for a reply that answers a policy question or promises help with none of the other signs. Measured too often wrong (or, for 信访, hardly better than the base rate) to train on |

Two channels of the same best tier make the reply undecided ("conflicting signs"), as does a reply without any
sign. Non-信访 signs are searched first: a reply that names one is never read as 信访. Precision and
coverage per tier against the hand labels of channels_dev.jsonl are in eval/reports/channels.md; training
(`xinfang train --history`, training/history.py) keeps `high` only (`USED_TIERS`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

from xinfang.models.normalize import normalize_text

__all__ = ["CHANNELS", "TIERS", "USED_TIERS", "ChannelAnswer", "RULES", "extract_channel", "history_labels"]

CHANNELS = ("信访", "依法履职", "诉讼仲裁复议", "纪检监察", "其他")
TIERS = ("high", "low")
USED_TIERS = ("high",)

LITIGATION, DUTY, DISCIPLINE, PETITION = "诉讼仲裁复议", "依法履职", "纪检监察", "信访"

# (channel, tier, pattern) in order of strength; the first match of each (channel, tier) is the evidence.
RULES: list[tuple[str, str, re.Pattern[str]]] = [
    (LITIGATION, "high", re.compile(r"(?:法律|司法|诉讼)(?:途径|渠道)|(?:向|到)[^。，]{0,12}(?:人民)?法院"
                                    r"[^。，]{0,6}(?:起诉|诉讼|申请)|提起(?:民事|行政)?诉讼|(?:申请|提起|提请)"
                                    r"[^。，]{0,8}仲裁|劳动(?:人事)?争议仲裁|行政复议")),
    (DISCIPLINE, "high", re.compile(r"(?:转|移交|移送|交由|交|向)[^。，]{0,10}(?:纪委|纪检|(?<!认)监委)|"
                                    r"(?:纪委|纪检监察|(?<!认)监委)[^。，]{0,8}(?:已|正在|立案|调查|核查|审查|处理)|"
                                    r"违纪|党纪|政务处分|党内(?:警告|严重警告)|诫勉|立案审查")),
    (DUTY, "high", re.compile(r"立案(?:查处|侦查|调查)|行政处罚|责令[^。，]{0,10}(?:停止|整改|拆除|改正|停产|停业|"
                              r"关闭|限期)|(?:予以|依法)(?:取缔|查处|拆除|处罚|罚款)|处以[^。，]{0,8}罚款|"
                              r"行政拘留|刑事拘留|移送公安")),
    (LITIGATION, "low", re.compile(r"(?:民事|合同|经济|劳动)(?:纠纷|争议)|判决|裁定|强制执行|起诉|仲裁")),
    (DUTY, "low", re.compile(r"(?:执法人员|执法队员|执法大队|监察大队|稽查)[^。]{0,30}(?:查处|检查|调查|制止|"
                                r"处理)|查处|整改到位|已整改|限期整改|依法处理|劳动监察")),
    (PETITION, "low", re.compile(r"(?:政策|规定|文件)[^。]{0,20}(?:规定|明确|要求)|(?:您|你)(?:所)?(?:咨询|询问)"
                                    r"|答复如下|解释|感谢您的(?:建议|关注|支持)|将(?:加快|尽快|积极|继续)"
                                    r"|已列入|纳入[^。]{0,10}计划")),
]
_NON_PETITION_TIERS = {(c, t) for c, t, _ in RULES if c != PETITION}


@dataclass
class ChannelAnswer:
    channel: str | None
    confidence: str | None  # high / low; None when undecided
    evidence: str | None  # the reply span that decided it
    reason: str  # why this answer (or why none)

    def to_dict(self) -> dict:
        return asdict(self)


def _span(text: str, m: re.Match[str], width: int = 10) -> str:
    return text[max(0, m.start() - width):min(len(text), m.end() + width)]


def extract_channel(reply: str | None) -> ChannelAnswer:
    """The channel a closed case went to, from its official reply (see the module docstring)."""
    text = normalize_text(reply)
    if not text:
        return ChannelAnswer(None, None, None, "no reply text")
    hits: dict[tuple[str, str], re.Match[str]] = {}
    for channel, tier, pattern in RULES:
        m = pattern.search(text)
        if m and (channel, tier) not in hits:
            hits[(channel, tier)] = m
    for tier in TIERS:
        found = {c: m for (c, t), m in hits.items() if t == tier and (c, t) in _NON_PETITION_TIERS}
        if len(found) > 1:
            signs = "、".join(f"{c}: {m.group(0)}" for c, m in found.items())
            return ChannelAnswer(None, None, None, f"conflicting signs ({signs})")
        if found:
            (channel, m), = found.items()
            return ChannelAnswer(channel, tier, _span(text, m), f"{tier}: {m.group(0)}")
    m = hits.get((PETITION, "low"))
    if m:
        return ChannelAnswer(PETITION, "low", _span(text, m), f"low: {m.group(0)}")
    return ChannelAnswer(None, None, None, "the reply shows no channel")


def history_labels(records: list[dict], reply_column: str = "reply", label_column: str = "channel",
                   tiers: tuple[str, ...] = USED_TIERS) -> tuple[list[dict], dict]:
    """Weakly labelled petitions from closed cases: each record whose reply decides a channel in `tiers` comes
    back with `label_column`, `label_confidence` and `label_evidence`; plus counts per outcome."""
    out: list[dict] = []
    counts: Counter[str] = Counter({"high": 0, "medium": 0, "low": 0, "undecided": 0})
    for r in records:
        ans = extract_channel(r.get(reply_column))
        counts[ans.confidence or "undecided"] += 1
        if ans.confidence in tiers:
            counts[f"{ans.channel}/{ans.confidence}"] += 1
            out.append({**{k: v for k, v in r.items() if k != reply_column}, label_column: ans.channel,
                        "label_confidence": ans.confidence, "label_evidence": ans.reason})
    return out, {"rows": len(records), **dict(sorted(counts.items())), "used": len(out)}
