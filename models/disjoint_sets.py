"""Union-find: the one implementation of "items linked by pairs, transitively" (training splits, repeat-pair
groups for cross-validation, matters).

    DisjointSets(n).union(a, b); .find(x); .labels()
    pair_groups(pairs) -> one group number per pair (pairs sharing an item, transitively, share a group)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class DisjointSets:
    """Disjoint sets over 0..n-1 with path halving. A union keeps the smaller root, so the sets (and `labels`)
    do not depend on the order of the unions."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        """Merge the sets of a and b; returns the root kept."""
        ra, rb = self.find(a), self.find(b)
        keep, gone = min(ra, rb), max(ra, rb)
        self.parent[gone] = keep
        return keep

    def labels(self) -> list[int]:
        """A set number per item: 0 for the set of item 0, then numbered in order of first appearance."""
        roots: dict[int, int] = {}
        return [roots.setdefault(self.find(i), len(roots)) for i in range(len(self.parent))]


def pair_groups(pairs: Iterable[tuple[Hashable, Hashable]]) -> list[int]:
    """Group number per pair: pairs sharing an item (transitively) share a group; numbered by first appearance."""
    pairs = list(pairs)
    index: dict[Hashable, int] = {}
    for a, b in pairs:
        index.setdefault(a, len(index))
        index.setdefault(b, len(index))
    sets = DisjointSets(len(index))
    for a, b in pairs:
        sets.union(index[a], index[b])
    roots: dict[int, int] = {}
    return [roots.setdefault(sets.find(index[a]), len(roots)) for a, _ in pairs]
