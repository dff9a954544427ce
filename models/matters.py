"""Matters (信访事项): group petitions that raise one concrete problem into one matter.

A matter links petitions through the repeat search (models/repeats.py `RepeatFinder`: embedding search
re-ranked lexically, then the repeat scorer's calibrated probability), so a petition is linked to each of its
top-k candidates with that probability. Links at or above the threshold are merged by a linkage rule:

- `single`: connected components (Kruskal order, strongest link first);
- `average`: agglomerative, strongest first, two groups merge while the mean probability of the links observed
  between them is at or above the threshold (missing links are unknown, not evidence against).

A link between two petitions of one petitioner that share nothing concrete (no specific place, entity or case
name in common, not the same text) is left out (`MatterRule.same_writer_needs_name`): one person's many
messages share their writing style, so they look alike without being one matter (a prolific writer's dozens of
different proposals otherwise became one "hot issue"). A link between two petitions that name different specific
places or cases of one kind (two estates, villages, companies, schools, hospitals or case numbers, none shared) is
left out too (`MatterRule.different_names_apart`): by the matter definition, one problem at two places is two
matters (template complaints such as "XX小区临街门面油烟扰民" about different estates otherwise chained into one). Cannot-links (pairs a caseworker rejected as repeats)
are never put into one matter: a merge that would join them is skipped. Everything is deterministic and independent of the input order: links are processed by
(probability desc, ids), and a matter is named after its earliest member (time, then id).

Public API:

    MatterRule(linkage="single", threshold=None, k=10, same_writer_needs_name=True, different_names_apart=True)
    DEFAULT_RULE                                          # single linkage, threshold 0.8, k 5 (measured)
    find_links(finder, petitions, vectors, lookup, k, progress=None) -> list[Link]
    group(ids, links, threshold, linkage="single", cannot_links=(), same_writer_needs_name=True,
          different_names_apart=True) -> list[list[str]]
    name_matters(groups, petitions_by_id) -> dict[id, matter_id]
    build_matters(finder, petitions, vectors, lookup, rule=DEFAULT_RULE, cannot_links=(), progress=None)
        -> dict[id, matter_id]
    join_decision(candidates, matter_of, threshold, blocked=(), linkage="single", same_writer_needs_name=True,
                  different_names_apart=True) -> JoinDecision                                  # intake: join or open
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from xinfang.errors import DataError
from xinfang.models.disjoint_sets import DisjointSets
from xinfang.models.petition import as_petition
from xinfang.records import parse_time

LINKAGES = ("single", "average")
MATTER_PREFIX = "M-"


@dataclass(frozen=True)
class MatterRule:
    """How petitions are linked into matters; `threshold` None means the repeat scorer's own threshold."""

    linkage: str = "single"
    threshold: float | None = None
    k: int = 10
    same_writer_needs_name: bool = True
    different_names_apart: bool = True

    def __post_init__(self) -> None:
        if self.linkage not in LINKAGES:
            raise DataError(f"unknown linkage {self.linkage!r}; choose one of {', '.join(LINKAGES)}")
        if self.k < 1:
            raise DataError(f"k must be positive, got {self.k}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise DataError(f"threshold must be a probability in [0, 1], got {self.threshold}")

    def resolve(self, scorer) -> float:
        """The probability threshold this rule uses with `scorer`."""
        return float(scorer.threshold if self.threshold is None else self.threshold)


# Chosen on the 13 dev matters with matter-cross-fitted scorers (eval/reports/matters.md): best B-cubed F1 of the
# grid, and the same rule in every leave-one-matter-out selection. Scorers are Platt-calibrated, so a probability
# threshold carries over between them (0.8 is above the operating threshold of every scorer compared).
DEFAULT_RULE = MatterRule(linkage="single", threshold=0.8, k=5)


@dataclass(frozen=True)
class Link:
    """Two petitions the repeat search put together, with the scorer's probability and reasons."""

    a: str
    b: str
    probability: float
    similarity: float
    reasons: tuple[str, ...] = ()
    same_writer_only: bool = False  # same petitioner, nothing concrete in common (repeat_features.same_writer_only)
    names_differ: bool = False  # different specific places/cases of one kind named (repeat_features.names_differ)


def find_links(finder, petitions: list[dict], vectors: np.ndarray, lookup: Callable[[list[str]], dict],
               k: int = 10, batch: int = 256,
               progress: Callable[[int], None] | None = None) -> list[Link]:
    """Each petition's top-k repeat candidates among the indexed petitions (the repeat search's candidate set),
    as undirected links scored once per pair by the scorer (its features are symmetric); sorted by
    (probability desc, a, b)."""
    from xinfang.models.repeat_features import names_differ, pair_features, same_writer_only
    from xinfang.models.repeat_ranking import GramMatrix

    if len(petitions) != len(vectors):
        raise DataError(f"{len(petitions)} petitions but {len(vectors)} vectors")
    petitions = [as_petition(p) for p in petitions]  # normalised once
    grams = GramMatrix(petitions)
    scorer = finder.scorer
    best: dict[tuple[str, str], Link] = {}
    for start in range(0, len(petitions), batch):
        chunk = petitions[start:start + batch]
        rows, found = finder.neighbours_for_vectors(chunk, vectors[start:start + batch], k, lookup, grams)
        keys, sims, feats, writer, differ, seen = [], [], [], [], [], set()
        for petition, row in zip(chunk, rows, strict=True):
            pid = str(petition.id)
            for cid, sim in row:
                key = (pid, cid) if pid < cid else (cid, pid)
                if key in best or key in seen:
                    continue
                seen.add(key)
                keys.append(key)
                sims.append(sim)
                f, facts = pair_features(petition, found[cid], sim)
                feats.append(scorer.features_vector(f))
                writer.append(same_writer_only(f))
                differ.append(names_differ(f, facts))
        if keys:
            probs = scorer.probability_from_features(np.asarray(feats))
            for key, sim, prob, w, d in zip(keys, sims, probs, writer, differ, strict=True):
                best[key] = Link(key[0], key[1], round(float(prob), 4), round(float(sim), 4), same_writer_only=w,
                                 names_differ=d)
        if progress:
            progress(len(chunk))
    return sorted(best.values(), key=lambda lk: (-lk.probability, lk.a, lk.b))


class _Groups(DisjointSets):
    """Disjoint sets over petition indices with their members and the cannot-links each set carries."""

    def __init__(self, n: int, cannot: dict[int, set[int]]) -> None:
        super().__init__(n)
        self.members: dict[int, list[int]] = {i: [i] for i in range(n)}
        self.cannot = {i: set(cannot.get(i, ())) for i in range(n)}

    def blocked(self, ra: int, rb: int) -> bool:
        small, big = sorted((ra, rb), key=lambda r: len(self.members[r]))
        return any(m in self.cannot[big] for m in self.members[small])

    def union(self, ra: int, rb: int) -> int:
        """Merge two roots (the smaller root index stays, for determinism); returns the root kept."""
        keep = super().union(ra, rb)
        gone = rb if keep == ra else ra
        self.members[keep].extend(self.members.pop(gone))
        self.cannot[keep] |= self.cannot.pop(gone)
        return keep


def group(ids: Iterable[str], links: Iterable[Link], threshold: float, linkage: str = "single",
          cannot_links: Iterable[tuple[str, str]] = (), same_writer_needs_name: bool = True,
          different_names_apart: bool = True) -> list[list[str]]:
    """Partition `ids` into matters: single linkage joins through links at or above `threshold`; average linkage
    merges groups while the mean of all links observed between them is at or above it. Every id is in exactly
    one group; groups and their members are sorted by id; links naming unknown ids are ignored, and so are
    same-writer-only links when `same_writer_needs_name` and links naming different places or cases when
    `different_names_apart`."""
    if linkage not in LINKAGES:
        raise DataError(f"unknown linkage {linkage!r}; choose one of {', '.join(LINKAGES)}")
    names = sorted(set(map(str, ids)))
    pos = {pid: i for i, pid in enumerate(names)}
    cannot: dict[int, set[int]] = {}
    for a, b in cannot_links:
        if str(a) in pos and str(b) in pos and a != b:
            cannot.setdefault(pos[str(a)], set()).add(pos[str(b)])
            cannot.setdefault(pos[str(b)], set()).add(pos[str(a)])
    edges: dict[tuple[int, int], float] = {}
    for lk in links:
        if lk.a not in pos or lk.b not in pos or lk.a == lk.b or (linkage == "single" and lk.probability < threshold):
            continue
        if (same_writer_needs_name and lk.same_writer_only) or (different_names_apart and lk.names_differ):
            continue
        key = tuple(sorted((pos[lk.a], pos[lk.b])))
        edges[key] = max(edges.get(key, 0.0), lk.probability)
    g = _Groups(len(names), cannot)
    if linkage == "single":
        for (i, j), _p in sorted(edges.items(), key=lambda kv: (-kv[1], kv[0])):
            ri, rj = g.find(i), g.find(j)
            if ri != rj and not g.blocked(ri, rj):
                g.union(ri, rj)
    else:
        _average(g, edges, threshold)
    out = [sorted(names[m] for m in members) for members in g.members.values()]
    return sorted(out)


def _average(g: _Groups, edges: dict[tuple[int, int], float], threshold: float) -> None:
    """Average linkage over observed links: merge the pair of groups with the highest mean link first."""
    stats: dict[int, dict[int, list[float]]] = {}
    for (i, j), p in edges.items():
        stats.setdefault(i, {})[j] = [p, 1.0]
        stats.setdefault(j, {})[i] = [p, 1.0]
    version = dict.fromkeys(range(len(g.parent)), 0)
    heap = [(-p, i, j, 0, 0) for (i, j), p in edges.items()]
    heapq.heapify(heap)
    while heap:
        neg, i, j, vi, vj = heapq.heappop(heap)
        if -neg < threshold:
            break
        if i not in g.members or j not in g.members or version[i] != vi or version[j] != vj:
            continue
        if g.blocked(i, j):
            continue
        keep = g.union(i, j)
        gone = j if keep == i else i
        merged = stats.pop(keep, {})
        merged.pop(gone, None)
        for other, (s, c) in stats.pop(gone, {}).items():
            if other == keep:
                continue
            acc = merged.setdefault(other, [0.0, 0.0])
            acc[0] += s
            acc[1] += c
            stats[other].pop(gone, None)
        stats[keep] = merged
        version[keep] += 1
        for other, (s, c) in merged.items():
            stats[other][keep] = [s, c]
            a, b = sorted((keep, other))
            heapq.heappush(heap, (-(s / c), a, b, version[a], version[b]))


def _time_key(p: dict) -> tuple:
    t = parse_time(p.get("time") or p.get("received_at"))
    return (t is None, t.isoformat() if t else "")


def name_matters(groups: Iterable[list[str]], petitions_by_id: dict[str, dict]) -> dict[str, str]:
    """id -> matter id; a matter is named after its earliest member (by time, then id): `M-<id>`."""
    out: dict[str, str] = {}
    for members in groups:
        first = min(members, key=lambda pid: (_time_key(petitions_by_id.get(pid, {})), pid))
        for pid in members:
            out[pid] = MATTER_PREFIX + first
    return out


EXACT_SEARCH_MAX = 20_000  # petitions; above it an exact all-pairs search grows with the square of the store
LARGE_INDEX = ("HNSW32", {"efSearch": 128})


def batch_index_kind(n: int) -> tuple[str, dict[str, int]]:
    """(FAISS factory, search parameters) for grouping n petitions in one batch: exact search up to
    EXACT_SEARCH_MAX, an HNSW graph above (B-cubed F1 0.999 against the exact search's matters on a 20k
    synthetic store; 100k grouped in 398 s instead of 2,156 s: eval/reports/matters.md)."""
    return ("Flat", {}) if n <= EXACT_SEARCH_MAX else (LARGE_INDEX[0], dict(LARGE_INDEX[1]))


def build_matters(finder, petitions: list[dict], vectors: np.ndarray, lookup: Callable[[list[str]], dict],
                  rule: MatterRule = DEFAULT_RULE, cannot_links: Iterable[tuple[str, str]] = (),
                  progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """Matter id per petition id (the petitions must be indexed in `finder.index`)."""
    links = find_links(finder, petitions, vectors, lookup, k=rule.k, progress=progress)
    groups = group([str(p["id"]) for p in petitions], links, rule.resolve(finder.scorer), rule.linkage,
                   cannot_links, rule.same_writer_needs_name, rule.different_names_apart)
    return name_matters(groups, {str(p["id"]): p for p in petitions})


@dataclass
class JoinDecision:
    """Where a new petition goes: an existing matter (`matter`, through `via` with `probability`) or a new one."""

    matter: str | None
    via: str | None = None
    probability: float | None = None
    reason: str = ""
    skipped: list[str] = field(default_factory=list)


def join_decision(candidates: list[dict], matter_of: dict[str, str], threshold: float,
                  blocked: Iterable[str] = (), linkage: str = "single",
                  same_writer_needs_name: bool = True, different_names_apart: bool = True) -> JoinDecision:
    """The intake form of the batch rule. `single`: join the matter of the most probable candidate at or above
    `threshold`; `average`: join the matter whose candidates' mean probability (the links observed between the
    new petition and that matter) is highest and at or above `threshold`. Candidates of the same petitioner
    with nothing concrete in common (read from their reasons) do not count when `same_writer_needs_name`, nor
    candidates naming another specific place or case (their reasons say so) when `different_names_apart`.
    Matters in `blocked` (a cannot-link) are skipped; without a matter to join, a new one is opened."""
    from xinfang.models.repeat_features import names_differ_reasons, same_writer_only_reasons

    if linkage not in LINKAGES:
        raise DataError(f"unknown linkage {linkage!r}; choose one of {', '.join(LINKAGES)}")
    blocked = set(blocked)
    by_matter: dict[str, list[dict]] = {}
    for c in candidates:
        why = list(c.get("reasons") or ())
        if (same_writer_needs_name and same_writer_only_reasons(why)) or (different_names_apart
                                                                          and names_differ_reasons(why)):
            continue
        m = matter_of.get(str(c["id"]))
        if m is not None:
            by_matter.setdefault(m, []).append(c)
    options = []
    for m, cs in by_matter.items():
        best = min(cs, key=lambda c: (-c["probability"], str(c["id"])))
        score = best["probability"] if linkage == "single" else sum(c["probability"] for c in cs) / len(cs)
        options.append((-score, str(best["id"]), m, best, len(cs)))
    skipped: list[str] = []
    for neg, _, m, best, n in sorted(options):
        if -neg < threshold:
            break
        if m in blocked:
            skipped.append(m)
            continue
        what = f"重复概率 {best['probability']:.2f}" if linkage == "single" or n == 1 else \
            f"与该事项 {n} 件候选的平均重复概率 {-neg:.2f}"
        return JoinDecision(m, str(best["id"]), round(-neg, 4),
                            f"{what} ≥ {threshold:.2f}（最相近 {best['id']}）", skipped)
    why = "无重复概率达到阈值的候选" if not skipped else "候选所在事项与本件有不予合并记录"
    return JoinDecision(None, reason=f"新事项：{why}（阈值 {threshold:.2f}）", skipped=skipped)
