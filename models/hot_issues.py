"""Hot issues (热点问题): a heat index (热度指数) per matter over a time window, and the contest's two tables.

Heat is 100 × Σ weight · term, each term in [0, 1] against a fixed reference (so a matter's heat depends only on
its own petitions, never on the other matters or on the order of the input):

| term | weight | value | why |
|---|---|---|---|
| petitioners | 0.40 | log(1+u) / log(1+50), u = distinct petitioners (unknown ones count one each) | a hot issue is one many people raise, not one person writing often |
| volume | 0.15 | log(1+v) / log(1+50), v = petitions, at most 3 counted per petitioner | repeated petitions show the matter is unresolved, but one writer's flood adds little |
| support | 0.20 | log(1+likes+dislikes) / log(1+500) | readers' votes either way show attention beyond the writers (when the data has them) |
| recency | 0.15 | 0.5 ** (days from the last petition to the window end / 30) | what is raised now matters more than what was raised once |
| growth | 0.10 | max(0, log2((1+n) / (1+n_prev))) / log2(1+50), n = petitions in the window, n_prev = in the previous window of equal length | rising matters need attention before they peak |

Each term is capped at 1. In a ranking the window end is `until` or, without a window, the last petition of the
whole input (not each matter's own last petition), so recency puts every matter on one clock. Petitions without a time count
toward volume, petitioners and support only when no window is given; a matter none of whose petitions has a time
gets no recency or growth (said in its reasons). The weights were compared on the dev matters
(eval/reports/matters.md, hot issues).

Public API:

    HEAT_TERMS, heat(members, since, until) -> {"heat", "terms": {name: {"value", "weight", "points", "reason"}}}
    hot_issues(petitions, matter_of, since=None, until=None, top=None) -> list[dict]  # ranked, with the rows
    select_window(petitions, since, until) -> (inside, start, end, previous window)
    place_and_people(members) -> str ; describe(members) -> str
    ISSUE_COLUMNS, DETAIL_COLUMNS, issue_rows(issues), detail_rows(issues)
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

from xinfang.errors import DataError
from xinfang.models.normalize import normalize_text
from xinfang.models.repeat_features import extract_names
from xinfang.models.router import extract_jurisdiction
from xinfang.records import parse_time

HEAT_TERMS = {"petitioners": 0.40, "volume": 0.15, "support": 0.20, "recency": 0.15, "growth": 0.10}
PER_PETITIONER = 3  # petitions of one petitioner counted toward volume
REF_PETITIONS = 50
REF_VOTES = 500
HALF_LIFE_DAYS = 30.0
MAX_COMPARE = 200
ISSUE_COLUMNS = ["热度排名", "问题ID", "热度指数", "时间范围", "地点/人群", "问题描述"]
DETAIL_COLUMNS = ["问题ID", "留言编号", "留言用户", "留言主题", "留言时间", "留言详情", "点赞数", "反对数"]
_PEOPLE = ("业主", "居民", "村民", "学生家长", "家长", "学生", "教师", "老师", "职工", "员工", "商户", "司机", "患者",
           "老人", "农民工", "考生", "租户", "购房者", "乘客")
_PLACE_KINDS = ("estate", "village", "school", "company", "hospital", "road")  # preferred first


def petition_time(p: dict) -> datetime | None:
    """The petition's time, None when it has none; DataError naming the row when it does not parse."""
    raw = p.get("time", p.get("received_at"))
    if raw in (None, ""):
        return None
    t = parse_time(raw)
    if t is None:
        where = f"row {p['_row']}" if p.get("_row") else f"petition {p.get('id')!r}"
        raise DataError(f"{where}: cannot parse time {raw!r} (expected e.g. 2019/2/28 11:25:05 or 2019-02-28 11:25)")
    return t.replace(tzinfo=None) if t.tzinfo else t


def _count(p: dict, *keys: str) -> int:
    for k in keys:
        v = p.get(k)
        if v not in (None, ""):
            try:
                return max(int(float(v)), 0)
            except (TypeError, ValueError):
                raise DataError(f"petition {p.get('id')!r}: {k} must be a number, got {v!r}") from None
    return 0


def likes(p: dict) -> int:
    return _count(p, "likes", "点赞数")


def dislikes(p: dict) -> int:
    return _count(p, "dislikes", "反对数")


def _petitioner(p: dict) -> str | None:
    v = p.get("petitioner") or p.get("user")
    return str(v) if v not in (None, "") else None


def _log_share(x: float, ref: float) -> float:
    return min(1.0, math.log1p(x) / math.log1p(ref))


def heat(members: list[dict], end: datetime | None = None, previous: int | None = None,
         weights: dict[str, float] | None = None, per_petitioner: int | None = PER_PETITIONER) -> dict:
    """Heat of one matter from its petitions in the window (`members` already filtered to it), the window's end
    (`end`; default its own last petition) and the number of its petitions in the previous window of equal
    length (`previous`; None when there is no window). `weights` and `per_petitioner` (None: no cap) are there
    to compare other settings against HEAT_TERMS; the service and the CLI use the defaults."""
    weights = weights or HEAT_TERMS
    cap = per_petitioner or 10**9
    times = [t for t in (petition_time(p) for p in members) if t is not None]
    n = len(members)
    per_person = Counter(_petitioner(p) or f"\0{p.get('id')}" for p in members)
    people = set(per_person)
    counted = sum(min(c, cap) for c in per_person.values())
    votes = sum(likes(p) + dislikes(p) for p in members)
    has_votes = any(p.get(k) not in (None, "") for p in members for k in ("likes", "dislikes", "点赞数", "反对数"))
    end = end or (max(times) if times else None)
    terms: dict[str, dict] = {}

    def put(name: str, value: float, reason: str) -> None:
        w = weights[name]
        terms[name] = {"value": round(value, 4), "weight": w, "points": round(100 * w * value, 2), "reason": reason}

    put("petitioners", _log_share(len(people), REF_PETITIONS), f"{len(people)} 位不同信访人")
    capped = "" if counted == n else f"，每位信访人至多计 {cap} 件，计 {counted} 件"
    put("volume", _log_share(counted, REF_PETITIONS), f"{n} 件留言{capped}（满分参照 {REF_PETITIONS} 件）")
    if has_votes:
        put("support", _log_share(votes, REF_VOTES),
            f"点赞 {sum(map(likes, members))}、反对 {sum(map(dislikes, members))}（满分参照 {REF_VOTES} 票）")
    else:
        put("support", 0.0, "数据无点赞/反对数，不计")
    if times and end is not None:
        age = max((end - max(times)).total_seconds() / 86400.0, 0.0)
        put("recency", 0.5 ** (age / HALF_LIFE_DAYS), f"最近一件距窗口末 {age:.0f} 天（半衰期 {HALF_LIFE_DAYS:.0f} 天）")
    else:
        put("recency", 0.0, "留言均无时间，不计新近度")
    if previous is not None and times:
        g = max(0.0, math.log2((1 + n) / (1 + previous))) / math.log2(1 + REF_PETITIONS)
        put("growth", min(1.0, g), f"本窗口 {n} 件，上一等长窗口 {previous} 件")
    else:
        put("growth", 0.0, "无时间窗口或无时间，不计增长" if not times else "未给时间窗口，不计增长")
    return {"heat": round(sum(t["points"] for t in terms.values()), 2), "terms": terms}


def select_window(records: list[dict], since: datetime | None, until: datetime | None):
    """(petitions in the window, its start, its end, petitions of the previous window of equal length); without
    a window every petition and (None, None, []); DataError for since > until or an unparseable time."""
    if since and until and since > until:
        raise DataError(f"since ({since:%Y-%m-%d %H:%M}) is after until ({until:%Y-%m-%d %H:%M})")
    timed = [(p, petition_time(p)) for p in records]
    if since is None and until is None:
        return [p for p, _ in timed], None, None, []
    known = [t for _, t in timed if t is not None]
    if not known:
        raise DataError("no petition has a time, so a --since/--until window selects nothing")
    lo, hi = since or min(known), until or max(known)
    inside = [p for p, t in timed if t is not None and lo <= t <= hi]
    length = hi - lo
    prev = [p for p, t in timed if t is not None and lo - length <= t < lo]
    return inside, lo, hi, prev


def place_and_people(members: list[dict]) -> str:
    """地点/人群: the jurisdiction most members name, the specific place most of them name, and the group of
    people the texts speak for most often; only what the petitions themselves say."""
    texts = [normalize_text(f"{p.get('title') or ''}\n{p.get('text') or ''}") for p in members]
    juris = Counter(j for j in map(extract_jurisdiction, texts) if j)
    places: Counter = Counter()
    kinds: dict[str, str] = {}
    for t in texts:
        names = {name: kind for kind, name in extract_names(t) if kind in _PLACE_KINDS}
        places.update(list(names))
        for name, kind in names.items():
            kinds[name] = min(kinds.get(name, kind), kind, key=_PLACE_KINDS.index)
    people = Counter(w for t in texts for w in _PEOPLE if w in t)
    parts = []
    if juris:
        parts.append(min(juris, key=lambda j: (-juris[j], j)))
    if places:
        parts.append(min(places, key=lambda p: (-places[p], _PLACE_KINDS.index(kinds[p]), -len(p), p)))
    if people:
        parts.append(min(people, key=lambda w: (-people[w], w)))
    return " ".join(parts) if parts else "（未指明）"


def _bigrams(s: str) -> set[str]:
    return {s[i:i + 2] for i in range(len(s) - 1)}


def describe(members: list[dict]) -> str:
    """问题描述: the member title closest to all the others (char-bigram Jaccard), i.e. a representative title."""
    titles = sorted({normalize_text(p.get("title") or "") or normalize_text(p.get("text") or "")[:40]
                     for p in members} - {""})
    if not titles:
        return ""
    grams = {t: _bigrams(t) for t in titles}
    # against at most MAX_COMPARE titles (evenly spaced in sorted order), so a large matter stays linear
    step = max(1, -(-len(titles) // MAX_COMPARE))
    refs = titles[::step]

    def centrality(t: str) -> float:
        return sum(len(grams[t] & grams[o]) / max(len(grams[t] | grams[o]), 1) for o in refs if o != t)

    return min(titles, key=lambda t: (-centrality(t), len(t), t))


def hot_issues(petitions: list[dict], matter_of: dict[str, str], since: datetime | None = None,
               until: datetime | None = None, top: int | None = None, **heat_settings) -> list[dict]:
    """Matters ranked by heat (ties: more petitions, then matter id): [{"rank", "matter", "heat", "terms",
    "first", "last", "place", "description", "members": [petitions, by time then id]}]."""
    if top is not None and top < 1:
        raise DataError(f"top must be positive, got {top}")
    missing = [p.get("id") for p in petitions if str(p.get("id")) not in matter_of]
    if missing:
        raise DataError(f"petition {missing[0]!r} has no matter ({len(missing)} without one)")
    inside, lo, hi, prev = select_window(petitions, since, until)
    if not inside:
        raise DataError("no petitions in the window" + (f" {lo:%Y-%m-%d} .. {hi:%Y-%m-%d}" if lo else ""))
    by_matter: dict[str, list[dict]] = {}
    for p in inside:
        by_matter.setdefault(matter_of[str(p["id"])], []).append(p)
    prev_counts = Counter(matter_of[str(p["id"])] for p in prev)
    if hi is None:  # no window: recency is measured to the last petition of the whole input
        hi = max((t for t in (petition_time(p) for p in inside) if t is not None), default=None)
    issues = []
    for m, members in by_matter.items():
        h = heat(members, hi, prev_counts.get(m, 0) if lo is not None else None, **heat_settings)
        times = sorted(t for t in (petition_time(p) for p in members) if t is not None)
        members = sorted(members, key=lambda p: (petition_time(p) or datetime.max, str(p["id"])))
        issues.append({"matter": m, **h, "size": len(members),
                       "first": times[0].isoformat(sep=" ") if times else None,
                       "last": times[-1].isoformat(sep=" ") if times else None,
                       "place": place_and_people(members), "description": describe(members), "members": members})
    issues.sort(key=lambda i: (-i["heat"], -i["size"], i["matter"]))
    for rank, issue in enumerate(issues, 1):
        issue["rank"] = rank
    return issues[:top] if top else issues


def _day(iso: str | None) -> str:
    return iso[:10].replace("-", "/") if iso else "（无时间）"


def issue_rows(issues: list[dict]) -> list[list]:
    """Rows of 热点问题表 (ISSUE_COLUMNS); 问题ID is the rank, as in the contest's tables."""
    return [[i["rank"], i["rank"], i["heat"], f"{_day(i['first'])} 至 {_day(i['last'])}", i["place"],
             i["description"]] for i in issues]


def detail_rows(issues: list[dict]) -> list[list]:
    """Rows of 热点问题留言明细表 (DETAIL_COLUMNS), one per member petition."""
    rows = []
    for i in issues:
        for p in i["members"]:
            t = petition_time(p)
            rows.append([i["rank"], p.get("msg_id") or p["id"], _petitioner(p) or "", p.get("title") or "",
                         t.isoformat(sep=" ") if t else "", p.get("text") or "", likes(p), dislikes(p)])
    return rows
