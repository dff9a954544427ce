"""Handling history: the unit that handled a petition, read from its official reply (答复意见).

Every closed 12345 / 信访 case carries a reply; the unit that signed it, investigated or was forwarded the case
names the responsible department far more often than the petition's own words do. `extract_unit(reply, duty)`
finds the units the duty list knows (its entries' `units`, plus the generic bodies under `通用`) and the role each
plays in the reply:

| role | what it looks like | weight |
|---|---|---|
| signature | a unit at the end of the reply or just before its date (`… J7县教育局 2013年9月11日`) | 4 |
| self | a unit the reply speaks as (`我局执法人员…` with `A5区城管局` named) | 3 |
| handled | a unit that investigated (`经A5区教育局核实`, `县交警大队高度重视`) | 2 |
| forwarded | a unit the case was sent to (`已转市人社局调查处理`) | 2 |
| mention | any other mention | 0.5 |

Scores are summed per department. The answer is undecided, with the reason, when no unit is named, when only
generic bodies (信访办, 区政府) are, or when two departments score alike; otherwise its confidence is the tier of
its strongest role (`high` for signature/self, `medium` for handled/forwarded, `low` for a bare mention).
Precision per tier against hand labels is in eval/reports/departments.md; training keeps `high` and `medium`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from xinfang.models.duty_list import GENERIC, DutyList
from xinfang.models.normalize import normalize_text

__all__ = ["TIERS", "UnitAnswer", "extract_unit", "history_labels"]

WEIGHTS = {"signature": 4.0, "self": 3.0, "handled": 2.0, "forwarded": 2.0, "mention": 0.5}
TIER_OF_ROLE = {"signature": "high", "self": "high", "handled": "medium", "forwarded": "medium", "mention": "low"}
TIERS = ("high", "medium", "low")
LOCAL = "街道乡镇"  # street offices, townships, communities: they pass most cases on to a functional department
TIE_RATIO = 0.75  # a runner-up scoring at least this share of the winner makes the reply ambiguous

_DATE = re.compile(r"\d{4}\s*[年\-/.]\s*\d{1,2}")
_TAIL_END = re.compile(r"[。！!？?；;\s]*$")
_SELF = re.compile(r"(?:我|本)(局|委|中心|大队|支队|中队|所|站|办|院|镇|街道|单位|公司|厅|处|科|股)")
_FORWARD = re.compile(r"(?:转|交由|移交|转交|转至|转给|转到|转由)\s*$")
_HANDLED_AFTER = re.compile(r"^\s*(?:高度重视|立即|迅速|随即|及时|组织|派|进行|调查|核实|核查|经调查|回复如下|答复如下|"
                            r"现场|工作人员|执法人员|已|对此|接到|收到|认真|会同|联合)")
_HANDLED_BEFORE = re.compile(r"(?:经|由|据|通过)\s*$")
# Institutions rather than administrations: they count when they sign the reply or speak as 我院/我校 only.
_INSTITUTIONS = ("学校", "中学", "小学", "幼儿园", "学院", "医院", "卫生院", "保健院", "银行", "法院", "检察院", "社区",
                 "图书馆", "博物馆")
_PLACE = re.compile(r"(?:[A-Z][0-9]{0,2}(?:省|市|区|县)|[省市区县])[\u4e00-\u9fff]{0,4}$")


@dataclass
class UnitAnswer:
    department: str | None
    confidence: str | None  # high / medium / low; None when undecided
    role: str | None
    unit: str | None  # the unit as written, with its place prefix (`A5区教育局`)
    evidence: str | None  # the reply span around it
    reason: str  # why this answer (or why none)
    scores: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def _units(duty: DutyList) -> list[tuple[str, str]]:
    pairs = [(u, e.department) for e in duty.entries for u in e.units]
    pairs += [(u, GENERIC) for u in duty.generic_units]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _mentions(reply: str, units: list[tuple[str, str]]) -> list[tuple[int, int, str, str]]:
    """(start, end, term, department) of every unit term, longest first, none inside a longer one."""
    taken = [False] * len(reply)
    found = []
    for term, dept in units:
        for m in re.finditer(re.escape(term), reply):
            if any(taken[m.start():m.end()]):
                continue
            for i in range(m.start(), m.end()):
                taken[i] = True
            found.append((m.start(), m.end(), term, dept))
    return sorted(found)


def _self_heads(text: str, found: list[tuple[int, int, str, str]]) -> set[str]:
    """Heads the reply speaks as (我局 -> 局) that point at one department only: 我局 beside both 教育局 and
    财政局 names neither."""
    heads = set()
    for h in set(_SELF.findall(text)):
        depts = {d for _, _, term, d in found if term.endswith(h) and d != GENERIC}
        if len(depts) == 1:
            heads.add(h)
    return heads


def _role(reply: str, start: int, end: int, term: str, self_heads: set[str]) -> str:
    after = reply[end:end + 12]
    if _TAIL_END.fullmatch(reply[end:]) or (_DATE.match(after.lstrip()) and len(reply) - end < 40):
        return "signature"
    if any(term.endswith(h) for h in self_heads):
        return "self"
    if term.endswith(_INSTITUTIONS):  # a school or hospital named in passing ("须到指定医院") handled nothing
        return "mention"
    before = _PLACE.sub("", reply[max(0, start - 14):start])  # "已转市人社局": the place is part of the unit
    if _FORWARD.search(before.rstrip("了已将")) or re.search(r"转(?:至|给|到|交|由)?$", before):
        return "forwarded"
    if _HANDLED_BEFORE.search(before) or _HANDLED_AFTER.match(after):
        return "handled"
    return "mention"


def extract_unit(reply: str | None, duty: DutyList, local_department: bool = True) -> UnitAnswer:
    """The department that handled a case, from its reply (see the module docstring)."""
    text = normalize_text(reply)
    if not text:
        return UnitAnswer(None, None, None, None, None, "no reply text", {})
    found = _mentions(text, _units(duty))
    if not found:
        return UnitAnswer(None, None, None, None, None, "the reply names no known unit", {})
    self_heads = _self_heads(text, found)
    scores: dict[str, float] = {}
    best_role: dict[str, tuple[float, int]] = {}  # department -> (weight of strongest role, mention index)
    roles = []
    for k, (s, e, term, dept) in enumerate(found):
        role = _role(text, s, e, term, self_heads)
        roles.append(role)
        w = WEIGHTS[role]
        scores[dept] = scores.get(dept, 0.0) + w
        if w > best_role.get(dept, (-1.0, -1))[0]:
            best_role[dept] = (w, k)
    rounded = {d: round(v, 2) for d, v in scores.items()}
    functional = {d: v for d, v in scores.items() if d not in (GENERIC, LOCAL)}
    if not functional and LOCAL in scores and local_department:
        functional = {LOCAL: scores[LOCAL]}  # a street office or township handled it itself
        local_only = True
    else:
        local_only = False
    if not functional:
        names = "、".join(dict.fromkeys(t for _, _, t, _ in found))
        return UnitAnswer(None, None, None, None, None, f"generic body only ({names})", rounded)
    ranked = sorted(functional.items(), key=lambda kv: (-kv[1], kv[0]))
    top, top_score = ranked[0]
    if len(ranked) > 1 and ranked[1][1] >= TIE_RATIO * top_score:
        return UnitAnswer(None, None, None, None, None,
                          f"two units named ({top} {top_score:g}, {ranked[1][0]} {ranked[1][1]:g})", rounded)
    _, k = best_role[top]
    s, e, term, _ = found[k]
    prefix = _PLACE.search(text[max(0, s - 8):s])
    unit = (prefix.group(0) if prefix else "") + text[s:e]
    evidence = text[max(0, s - 12):min(len(text), e + 12)]
    role = roles[k]
    tier = "low" if local_only else TIER_OF_ROLE[role]
    return UnitAnswer(top, tier, role, unit, evidence, f"{role}: {unit}" + (" (local body only)" if local_only else ""),
                      rounded)


def history_labels(records: list[dict], duty: DutyList, reply_column: str = "reply",
                   tiers: tuple[str, ...] = ("high", "medium")) -> tuple[list[dict], dict]:
    """Weakly labelled petitions from closed cases: each record with a decided unit in `tiers` comes back with
    `department`, `label_confidence` and `label_evidence`; plus counts per outcome (for the bundle's card)."""
    out: list[dict] = []
    counts: dict[str, int] = {"rows": len(records), **{t: 0 for t in TIERS}, "undecided": 0}
    for r in records:
        ans = extract_unit(r.get(reply_column), duty)
        counts[ans.confidence or "undecided"] += 1
        if ans.confidence in tiers:
            out.append({**{k: v for k, v in r.items() if k != reply_column}, "department": ans.department,
                        "label_confidence": ans.confidence, "label_evidence": ans.reason})
    counts["used"] = len(out)
    return out, counts
