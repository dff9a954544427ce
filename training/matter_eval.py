"""Scoring a matter clustering against complete hand-labelled matters (matters_dev.jsonl's definition).

    bcubed(pred, gold) -> {"precision", "recall", "f1", "n"}     # over the labelled messages only
    matter_pr(pred, members) -> {"precision", "recall", "cluster_size", "overlap"}   # best-overlapping cluster
    hard_negative_merges(pred, matters) -> {"pairs", "merged", "rate", "examples"}
    pair_decisions(pred, pairs) -> P/R/F1 of "same matter" on labelled pairs

`pred` maps every message id to its predicted cluster (unlabelled messages included: they count against
precision when they share a labelled message's cluster); `gold` maps labelled message ids to their matter.
"""

from __future__ import annotations

from collections import Counter, defaultdict


def _clusters(pred: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for pid, c in pred.items():
        out[c].add(pid)
    return out


def bcubed(pred: dict[str, str], gold: dict[str, str]) -> dict[str, float]:
    """B-cubed precision/recall/F1 averaged over the labelled messages: precision(m) = |C(m) ∩ G(m)| / |C(m)|,
    recall(m) = |C(m) ∩ G(m)| / |G(m)|; a labelled message missing from `pred` is its own cluster."""
    clusters = _clusters(pred)
    matters: dict[str, set[str]] = defaultdict(set)
    for pid, g in gold.items():
        matters[g].add(pid)
    ps, rs = [], []
    for pid, g in gold.items():
        c = clusters[pred[pid]] if pid in pred else {pid}
        inter = len(c & matters[g])
        ps.append(inter / len(c))
        rs.append(inter / len(matters[g]))
    p = sum(ps) / len(ps) if ps else 0.0
    r = sum(rs) / len(rs) if rs else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "n": len(ps)}


def matter_pr(pred: dict[str, str], members: list[str]) -> dict:
    """Precision and recall of a matter by the predicted cluster holding most of its members (ties: the
    smaller cluster)."""
    clusters = _clusters(pred)
    counts = Counter(pred[m] for m in members if m in pred)
    if not counts:
        return {"precision": 0.0, "recall": 0.0, "cluster_size": 0, "overlap": 0}
    best = min(counts, key=lambda c: (-counts[c], len(clusters[c]), c))
    size = len(clusters[best])
    return {"precision": counts[best] / size, "recall": counts[best] / len(members), "cluster_size": size,
            "overlap": counts[best]}


def hard_negative_merges(pred: dict[str, str], matters: list[dict]) -> dict:
    """(member, hard negative) pairs put into one cluster, over all such pairs of the matters."""
    pairs = merged = 0
    examples: list[list[str]] = []
    for m in matters:
        for neg in m.get("hard_negatives", []):
            for mem in m["members"]:
                pairs += 1
                if neg in pred and mem in pred and pred[neg] == pred[mem]:
                    merged += 1
                    if len(examples) < 10:
                        examples.append([m["matter"], mem, neg])
    return {"pairs": pairs, "merged": merged, "rate": merged / pairs if pairs else 0.0, "examples": examples}


def hard_negatives_merged_any(pred: dict[str, str], matters: list[dict]) -> dict:
    """Hard negatives that share a cluster with at least one member of their matter."""
    total = hit = 0
    for m in matters:
        cl = {pred[x] for x in m["members"] if x in pred}
        for neg in m.get("hard_negatives", []):
            total += 1
            hit += pred.get(neg) in cl
    return {"hard_negatives": total, "merged": hit, "rate": hit / total if total else 0.0}


def pair_decisions(same: list[bool], labels: list[int]) -> dict:
    """Precision, recall and F1 of boolean "same matter" decisions against 1/0 labels."""
    tp = sum(s and y == 1 for s, y in zip(same, labels, strict=True))
    npred, npos = sum(same), sum(y == 1 for y in labels)
    p = tp / npred if npred else 0.0
    r = tp / npos if npos else 0.0
    return {"n": len(labels), "positives": npos, "predicted": npred, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}


def matter_pairs(matters: list[dict]) -> list[tuple[str, str, int]]:
    """The pairs the matters define: every two members (1), each member with each hard negative (0)."""
    out = []
    for m in matters:
        mem = sorted(m["members"])
        out += [(a, b, 1) for i, a in enumerate(mem) for b in mem[i + 1:]]
        out += [(a, n, 0) for a in mem for n in sorted(m.get("hard_negatives", []))]
    return out
