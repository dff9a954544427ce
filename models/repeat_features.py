"""Explainable features of a petition pair, for the repeat scorer and for the reasons caseworkers read.

`pair_features(a, b, similarity)` returns (`features`: dict name -> float in FEATURES order,
`facts`: what the reasons are written from). Petitions are `models.petition.Petition` values (normalised
once) or record dicts (`title`, `text`, optionally `petitioner` or `user`, `time` in the data's mixed formats),
which are read through `Petition.from_record`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from xinfang.models.char_grams import gram_set, overlap
from xinfang.models.petition import Petition, as_petition, days_between

FEATURES = [
    "cosine",               # semantic cosine similarity of the embeddings
    "bigram_jaccard",       # char-bigram Jaccard of title + text
    "trigram_containment",  # share of the shorter petition's char trigrams found in the other
    "title_jaccard",        # char-bigram Jaccard of the titles
    "shared_names",         # specific names (estate, road, company, school, hospital, village, case no.) in both
    "name_conflict",        # both name specific places/entities of one kind, none shared
    "same_petitioner",      # both petitioner ids known and equal
    "diff_petitioner",      # both known and different
    "log_gap_days",         # log(1 + |days between the two|) when both times parse, else 0
    "time_known",           # both times parse
    "followup",             # 再次/又/二问/三问… in either petition
    "identical_text",       # normalised texts identical
]

# The scorer's default inputs: chosen by grouped-CV ablation on the real dev pairs (eval/reports/repeats.md).
# Same petitioner, shared names and follow-up words still appear among the reasons; as model inputs they
# did not add to the embedding similarity there (one person often raises several distinct matters).
DEFAULT_FEATURES = ["cosine", "title_jaccard", "bigram_jaccard", "name_conflict", "log_gap_days", "identical_text"]

# kind -> (reason label, suffix regex, max body length)
_NAME_KINDS: dict[str, tuple[str, str, int]] = {
    "estate": ("同一地点", r"(?:小区|花园|家园|公寓|大厦|广场|山庄|新村|新城|苑|(?<!政)府|城(?![市管区乡镇建中际])|公馆|华庭)", 8),
    "road": ("同一道路", r"(?:大道|大街|路(?![面灯况线费政])|街(?![道办头巷]))", 6),
    "village": ("同一村组", r"(?:村(?![民委级干务里口庄])(?:[一二三四五六七八九十\d]{1,3}组)?|社区(?![医卫居工服]))", 6),
    "company": ("同一单位", r"(?:有限责任公司|股份有限公司|有限公司|公司|集团|银行|酒店|商场|超市)", 14),
    "school": ("同一学校", r"(?:实验学校|学校|小学|中学|大学|学院|幼儿园|职校)", 10),
    "hospital": ("同一医院", r"(?:医院|卫生院|卫生室|诊所)", 10),
}
_BODY_CHARS = r"[\u4e00-\u9fffA-Za-z0-9·]"
# A name's body ends at the last of these (place prefixes like "A3区", verbs, pronouns, prepositions).
_BOUNDARY = re.compile(r".*(?:[在于的是了和与及到住从向对为我你他她该本这那个位近旁边里内外区市县镇乡省州号栋楼期\d]"
                       r"|[由去给把被让还而或但请就要靠些很往离过]"
                       r"|反映|投诉|举报|关于|请问|咨询|建议|位于|附近|周边|旁边|业主|居民|改变|调整|安装|发挥|依靠|占用|进入"
                       r"|经过|距离|欺骗|恳请|希望|要求|解决|没有|已经|还有|设置|增建|相关|部分|所有|很多|许多|多名|每次|上班|知道"
                       r"|配套|借口|成立|大量)")
_GENERIC = {
    "小区", "物业", "业主", "周边", "附近", "整个", "所在", "相关", "有关", "部分", "老旧", "新建", "安置", "拆迁",
    "回迁", "公租", "廉租", "保障", "商品", "住宅", "开发", "私立", "公立", "民办", "公办", "乡镇", "社区", "城市",
    "医疗", "人民", "人民政", "政", "农", "新农", "市政", "高速公", "公", "马", "道", "线", "铁", "全", "各", "其他",
    "多", "中小", "培训", "教育", "物流", "房地产", "开发商", "中", "小", "大", "一", "该", "此", "某", "商业", "农村",
    "乡村", "城乡", "水泥", "十字", "公交线", "自来水", "供水", "供电", "燃气", "物业服务", "壳", "存管", "油沙", "柏油", "人行", "人行马", "主干", "老", "家", "进", "出", "县", "回", "上", "下", "不", "有", "无", "总", "分", "子", "母", "村", "外",
}
_ROAD_PREFIX = re.compile(r".*(?:大道|大街|路|街)")
_NAME_RES = {
    kind: re.compile(f"({_BODY_CHARS}{{1,{n}}}?)({suffix})")
    for kind, (_label, suffix, n) in _NAME_KINDS.items()
}
_CASE_NO = re.compile(r"[（(]\d{4}[）)][\u4e00-\u9fff\d]{1,12}?\d{1,6}号")
_FOLLOWUP = re.compile(r"再次|又一次|再一次|第[二三四五六七八九十\d]+次|[二三四五六七八九十]问|多次反映|多次投诉|仍未|至今未|还未|依然没有|还是没有|追问")
_NON_TEXT = re.compile(r"[\s\W_]+")


@dataclass
class Facts:
    """What the reasons are written from."""

    shared: list[tuple[str, str]] = field(default_factory=list)      # (kind, name)
    conflict: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, name in a, name in b)
    same_petitioner: bool = False
    gap_days: float | None = None
    followup: bool = False
    identical: bool = False
    char_overlap: float = 0.0


def _clean_name_body(body: str) -> str:
    m = _BOUNDARY.match(body)
    if m:
        body = body[m.end():]
    return body


@lru_cache(maxsize=32768)
def extract_names(text: str) -> frozenset[tuple[str, str]]:
    """Specific names in a normalised text: {(kind, name)} for estates, roads, villages, companies, schools,
    hospitals and case numbers. Generic mentions (本小区, 该公司, 市政府) are dropped."""
    found: set[tuple[str, str]] = set()
    for kind, rx in _NAME_RES.items():
        for m in rx.finditer(text):
            body = _clean_name_body(m.group(1))
            if kind == "estate":  # "劳动东路魅力之城" is 魅力之城 on 劳动东路: the estate's own name follows the road
                road = _ROAD_PREFIX.match(body)
                if road and len(body) - road.end() >= 2:
                    body = body[road.end():]
            if len(body) < 2 or body in _GENERIC or body[-1] in "的了是在和与" or body.isdigit():
                continue
            if not re.search(r"[\u4e00-\u9fff]", body) or re.fullmatch(r"[A-Z]\d*", body):
                continue
            found.add((kind, body + m.group(2)))
    for m in _CASE_NO.finditer(text):
        found.add(("case", m.group(0)))
    return frozenset(found)


def _edit_distance_le1(x: str, y: str) -> bool:
    """True when x and y differ by at most one substitution, insertion, deletion or adjacent swap."""
    if abs(len(x) - len(y)) > 1:
        return False
    if len(x) == len(y):
        diff = [i for i in range(len(x)) if x[i] != y[i]]
        return len(diff) <= 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and x[diff[0]] == y[diff[1]] and x[diff[1]] == y[diff[0]])
    if len(x) > len(y):
        x, y = y, x
    return any(y[:i] + y[i + 1:] == x for i in range(len(y)))


def names_match(x: str, y: str) -> bool:
    """Same name allowing typos and nesting: 中茂城/中贸城, 千山/山千制药, 伊景园滨河苑/滨河苑."""
    if x == y:
        return True
    short, long_ = sorted((x, y), key=len)
    if len(short) >= 3 and short in long_:
        return True
    return len(short) >= 3 and (_edit_distance_le1(x, y) or (len(x) == len(y) and sorted(x) == sorted(y)))


def _shared_names(names_a: frozenset, names_b: frozenset) -> list[tuple[str, str]]:
    """(kind, name) found in both petitions, the most specific first; typo variants shown as "a/b"."""
    out: dict[tuple[str, str], None] = {}
    for ka, na in sorted(names_a, key=lambda kn: (-len(kn[1]), kn)):
        for kb, nb in sorted(names_b, key=lambda kn: (-len(kn[1]), kn)):
            if ka == kb and names_match(na, nb):
                label = na if na == nb or nb in na else (nb if na in nb else f"{na}/{nb}")
                out[(ka, label)] = None
    shared = list(out)
    # Keep the most specific of nested names ("伊景园滨河苑" over "滨河苑").
    return [kn for kn in shared if not any(kn[1] != o[1] and kn[1] in o[1] for o in shared)]


@lru_cache(maxsize=32768)  # a query's grams are reused over its candidates; ~3 kB each
def _grams(text: str, n: int) -> np.ndarray:
    """Sorted unique char n-gram keys of the text without spaces and punctuation (char_grams.py)."""
    return gram_set(_NON_TEXT.sub("", text), n)


def _jaccard(x: np.ndarray, y: np.ndarray) -> float:
    if not len(x) or not len(y):
        return 0.0
    shared = overlap(x, y)
    return shared / (len(x) + len(y) - shared)


def pair_features(a: Petition | Mapping, b: Petition | Mapping, similarity: float) -> tuple[dict[str, float], Facts]:
    """Features (FEATURES order) and the facts behind them for petitions `a`, `b` (Petition, or a record dict)
    with embedding cosine `similarity`."""
    a, b = as_petition(a), as_petition(b)
    ta, tb, xa, xb = a.norm_title, b.norm_title, a.norm_text, b.norm_text
    full_a, full_b = f"{ta}\n{xa}", f"{tb}\n{xb}"
    bg_a, bg_b = _grams(full_a, 2), _grams(full_b, 2)
    tg_a, tg_b = _grams(full_a, 3), _grams(full_b, 3)
    containment = overlap(tg_a, tg_b) / min(len(tg_a), len(tg_b)) if len(tg_a) and len(tg_b) else 0.0
    names_a, names_b = extract_names(full_a), extract_names(full_b)
    shared = _shared_names(names_a, names_b)
    conflict: list[tuple[str, str, str]] = []
    if not shared:
        for kind in ("estate", "road", "village", "company", "school", "hospital", "case"):
            ka = sorted(n for k, n in names_a if k == kind)
            kb = sorted(n for k, n in names_b if k == kind)
            if ka and kb:
                conflict.append((kind, ka[0], kb[0]))
    pa, pb = a.petitioner, b.petitioner
    gap = days_between(a.received_at, b.received_at)
    followup = bool(_FOLLOWUP.search(full_a) or _FOLLOWUP.search(full_b))
    identical = bool(xa or ta) and (ta, xa) == (tb, xb) or (len(xa) > 20 and xa == xb)
    feats = {
        "cosine": float(similarity),
        "bigram_jaccard": _jaccard(bg_a, bg_b),
        "trigram_containment": containment,
        "title_jaccard": _jaccard(_grams(ta, 2), _grams(tb, 2)),
        "shared_names": float(min(len(shared), 3)),
        "name_conflict": float(bool(conflict)),
        "same_petitioner": float(bool(pa and pb and pa == pb)),
        "diff_petitioner": float(bool(pa and pb and pa != pb)),
        "log_gap_days": math.log1p(gap) if gap is not None else 0.0,
        "time_known": float(gap is not None),
        "followup": float(followup),
        "identical_text": float(identical),
    }
    facts = Facts(shared=shared, conflict=conflict, same_petitioner=bool(pa and pb and pa == pb),
                  gap_days=gap, followup=followup, identical=identical, char_overlap=feats["bigram_jaccard"])
    return feats, facts


_KIND_LABEL = {k: v[0] for k, v in _NAME_KINDS.items()} | {"case": "同一案号"}
_CONFLICT_LABEL = {"estate": "地点不同", "road": "道路不同", "village": "村组不同", "company": "单位不同",
                   "school": "学校不同", "hospital": "医院不同", "case": "案号不同"}


def same_writer_only(features: dict[str, float]) -> bool:
    """One petitioner's two petitions with nothing concrete in common (no shared specific name, not the same
    text): their wording and embeddings share the writer's style, which is no evidence of one matter."""
    return bool(features["same_petitioner"]) and not features["shared_names"] and not features["identical_text"]


# Kinds whose names single out one matter's place or case; roads are left out (a petition names the roads around
# its place, and two petitions about one place often name different ones).
DISTINCT_NAME_KINDS = ("estate", "village", "company", "school", "hospital", "case")


def names_differ(features: dict[str, float], facts: Facts) -> bool:
    """Two petitions that name different specific places or cases of one kind (none shared) and are not the same
    text: by the matter definition, one problem at two places is two matters."""
    return not features["identical_text"] and any(kind in DISTINCT_NAME_KINDS for kind, _, _ in facts.conflict)


def names_differ_reasons(reasons_: list[str]) -> bool:
    """`names_differ` read from a candidate's reasons (as `reasons` writes them)."""
    labels = tuple(f"{_CONFLICT_LABEL[kind]}: " for kind in DISTINCT_NAME_KINDS)
    return "内容完全相同" not in reasons_ and any(r.startswith(labels) for r in reasons_)


def same_writer_only_reasons(reasons_: list[str]) -> bool:
    """`same_writer_only` read from a candidate's reasons (as `reasons` writes them)."""
    shared = tuple(f"{label}: " for label in _KIND_LABEL.values())
    return "同一信访人" in reasons_ and "内容完全相同" not in reasons_ and \
        not any(r.startswith(shared) for r in reasons_)


def reasons(features: dict[str, float], facts: Facts) -> list[str]:
    """Chinese reasons a caseworker reads, e.g. ["同一信访人", "同一地点: 伊景园滨河苑", "文本相似度 0.93",
    "间隔 12 天"]."""
    out: list[str] = []
    if facts.identical:
        out.append("内容完全相同")
    if facts.same_petitioner:
        out.append("同一信访人")
    for kind, name in facts.shared[:3]:
        out.append(f"{_KIND_LABEL[kind]}: {name}")
    for kind, na, nb in facts.conflict[:2]:
        out.append(f"{_CONFLICT_LABEL[kind]}: {na} / {nb}")
    out.append(f"文本相似度 {features['cosine']:.2f}")
    if facts.char_overlap >= 0.3 and not facts.identical:
        out.append(f"字面重合度 {facts.char_overlap:.2f}")
    if facts.followup:
        out.append("含再次反映/追问字样")
    if facts.gap_days is not None:
        days = int(round(facts.gap_days))
        out.append("同一天" if days == 0 else f"间隔 {days} 天")
    return out
