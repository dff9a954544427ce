"""Duty list (权责清单): which department handles what, as a YAML list of entries.

    - department: 交通运输
      remit: 道路、公交、出租车、网约车、驾校、轨道交通、治超等运输管理      # 职责: free text, the department's remit
      keywords: [公交, 出租车, 道路]                                     # plain substrings of a petition
      patterns: ["(公交|客运).{0,6}(停运|改线)"]                          # Python regexes (outright routing)
      topics: [交通运输]                                                 # topic labels it usually handles
      units: [交通运输局, 交通局, 运管, 公路局]                           # names of its handling units in replies

`level` marks a department that is itself a level of government (街道乡镇: `township`); a petition naming a body
of that level (models/jurisdiction.names_level) is evidence for it. `remit`, `keywords`, `patterns`, `topics` and
`level` are evidence for routing a petition (models/router.py);
`units` maps the handling unit named in an official reply (`我局`, `经A5区教育局核实`, a signature) to the
department (training/reply_units.py). A special entry `department: 通用` may list `units` only: generic bodies
(信访办, 区政府) that name no functional department. Errors name the file, the line and the key.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xinfang.errors import DataError
from xinfang.fsutil import parse_yaml, read_text

__all__ = ["GENERIC", "DutyEntry", "DutyList", "shipped_duty_list"]

GENERIC = "通用"  # the entry listing generic bodies (units that name no functional department)
KEYS = {"department", "remit", "keywords", "patterns", "topics", "units", "level"}
LEVELS = ("city", "county", "township")


@dataclass
class DutyEntry:
    department: str
    keywords: list[str] = field(default_factory=list)
    patterns: list[re.Pattern] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    remit: str = ""
    level: str = ""

    def keyword_hits(self, text: str) -> int:
        return sum(1 for k in self.keywords if k and k in text)

    def pattern_hit(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)


@dataclass
class DutyList:
    entries: list[DutyEntry]
    path: Path | None = None
    generic_units: list[str] = field(default_factory=list)
    text: str = ""  # the YAML it was parsed from (a bundle keeps it as written, comments included)
    _index: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def source_text(self) -> str:
        return self.text

    @classmethod
    def load(cls, path: str | Path) -> DutyList:
        return cls.parse(read_text(path, "duty list"), Path(path))

    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> DutyList:
        import yaml

        where = str(path or "duty list")
        root = parse_yaml(text, where, nodes=True)
        if isinstance(root, yaml.MappingNode):  # allow {departments: [...]} too
            root = next((v for k, v in root.value if k.value in ("departments", "entries")), None)
        if not isinstance(root, yaml.SequenceNode) or not root.value:
            raise DataError(f"{where}: a duty list must be a non-empty YAML list of {{department, remit, keywords, "
                            "patterns, topics, units}} entries")
        entries: list[DutyEntry] = []
        generic: list[str] = []
        seen: dict[str, int] = {}
        for node in root.value:
            line = node.start_mark.line + 1
            item = yaml.safe_load(yaml.serialize(node))
            if not isinstance(item, dict) or not str(item.get("department") or "").strip():
                raise DataError(f"{where}: line {line}: an entry needs a non-empty 'department'")
            dept = str(item["department"]).strip()
            unknown = sorted(set(item) - KEYS)
            if unknown:
                raise DataError(f"{where}: line {line} ({dept}): unknown key(s) {unknown}; expected {sorted(KEYS)}")
            if dept in seen:
                raise DataError(f"{where}: line {line}: department {dept!r} is listed twice (first at line "
                                f"{seen[dept]}); merge the two entries")
            seen[dept] = line
            lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) \
                else {}
            if dept == GENERIC:
                generic = _str_list(where, lines.get("units", line), dept, item, "units")
                continue
            pats = []
            for p in _str_list(where, lines.get("patterns", line), dept, item, "patterns"):
                try:
                    pats.append(re.compile(p))
                except re.error as exc:
                    raise DataError(f"{where}: line {lines.get('patterns', line)} ({dept}): key 'patterns': "
                                    f"bad regex {p!r}: {exc}") from exc
            remit = item.get("remit") or ""
            if not isinstance(remit, str):
                raise DataError(f"{where}: line {lines.get('remit', line)} ({dept}): key 'remit' must be text")
            level = str(item.get("level") or "").strip()
            if level and level not in LEVELS:
                raise DataError(f"{where}: line {lines.get('level', line)} ({dept}): key 'level' must be one of "
                                f"{', '.join(LEVELS)}, got {level!r}")
            entries.append(DutyEntry(dept, _str_list(where, lines.get("keywords", line), dept, item, "keywords"),
                                     pats, _str_list(where, lines.get("topics", line), dept, item, "topics"),
                                     _str_list(where, lines.get("units", line), dept, item, "units"),
                                     " ".join(remit.split()), level))
        if not entries:
            raise DataError(f"{where}: no department entries (only '{GENERIC}')")
        return cls(entries, path, generic, text)

    @property
    def departments(self) -> list[str]:
        return [e.department for e in self.entries]

    def entry(self, department: str) -> DutyEntry | None:
        return next((e for e in self.entries if e.department == department), None)

    def check_departments(self, labels: list[str]) -> None:
        """Refuse a duty list naming departments outside a model's label set (a typo would route nowhere)."""
        unknown = [d for d in self.departments if d not in set(labels)]
        if unknown:
            raise DataError(f"{self.path or 'duty list'}: department(s) {unknown} are not labels of the department "
                            f"model ({len(labels)} labels: {', '.join(labels)})")

    def remit_similarity(self, text: str) -> dict[str, float]:
        """Cosine of the petition's char bigrams with each department's remit + keywords (tf-idf, the idf taken
        over the duty list's own entries, so bigrams that every remit shares weigh little)."""
        vecs, idf, unseen = self._remit_index()
        grams = _bigrams(text)
        if not grams:
            return {}
        p = {g: (1 + math.log(c)) * idf.get(g, unseen) for g, c in grams.items()}
        norm = math.sqrt(sum(v * v for v in p.values()))
        return {d: sum(p[g] * w for g, w in v.items() if g in p) / norm for d, v in vecs.items() if v}

    def _remit_index(self):
        if self._index is None:
            docs = {e.department: _bigrams(e.remit + " " + " ".join(e.keywords)) for e in self.entries}
            df: Counter = Counter(g for grams in docs.values() for g in grams)
            n = len(docs)
            idf = {g: math.log(1 + n / c) for g, c in df.items()}
            vecs = {}
            for d, grams in docs.items():
                v = {g: (1 + math.log(c)) * idf[g] for g, c in grams.items()}
                norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
                vecs[d] = {g: x / norm for g, x in v.items()}
            self._index = (vecs, idf, math.log(1 + n))
        return self._index

    def level_hits(self, text: str) -> dict[str, float]:
        """1.0 for each department whose `level` the petition names (a 街道/乡镇, village or community: township)."""
        if not any(e.level for e in self.entries):
            return {}
        from xinfang.models.jurisdiction import names_level

        named = names_level(text)
        return {e.department: 1.0 for e in self.entries if e.level and e.level in named}

    def pattern_departments(self, text: str) -> list[str]:
        return [e.department for e in self.entries if e.pattern_hit(text)]

    def keyword_hits(self, text: str) -> dict[str, int]:
        return {e.department: n for e in self.entries if (n := e.keyword_hits(text))}

    def topic_prior(self, topic_probs: dict[str, float]) -> dict[str, float]:
        owners: dict[str, list[str]] = {}
        for e in self.entries:
            for t in e.topics:
                owners.setdefault(t, []).append(e.department)
        prior: dict[str, float] = {}
        for t, p in topic_probs.items():
            for d in owners.get(t, []):
                prior[d] = prior.get(d, 0.0) + p / len(owners[t])
        return prior


_HAN = re.compile(r"[\u4e00-\u9fff]+|[A-Za-z0-9]+")


def _bigrams(text: str) -> Counter:
    """Char bigrams within runs of Chinese characters (and of letters/digits); punctuation breaks runs."""
    out: Counter = Counter()
    for run in _HAN.findall(text or ""):
        out.update(run[i:i + 2] for i in range(len(run) - 1))
    return out


def _str_list(where: str, line: int, dept: str, item: dict, key: str) -> list[str]:
    v = item.get(key) or []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str | int | float) for x in v):
        raise DataError(f"{where}: line {line} ({dept}): key '{key}' must be a list of strings")
    return [str(x).strip() for x in v if str(x).strip()]


def shipped_duty_list(labels: set[str]) -> DutyList | None:
    """The shipped duty list whose departments cover every label (fewest extra departments first), or None."""
    from xinfang.settings import DEMO_DATA_DIR, REPO_ROOT

    paths = sorted((REPO_ROOT / "datasets" / "duty_lists").glob("*.yaml")) + [DEMO_DATA_DIR / "duty_list.yaml"]
    best = None
    for p in paths:
        if not p.exists():
            continue
        duty = DutyList.load(p)
        if labels <= set(duty.departments) and (best is None or len(duty.entries) < len(best.entries)):
            best = duty
    return best
