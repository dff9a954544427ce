"""Character n-grams as int64 keys (code points packed 21 bits each), so gram sets and counts are numpy arrays:
the repeat search's lexical similarity and the pair features' overlaps computed without per-gram Python objects."""

from __future__ import annotations

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


def codepoints(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def gram_keys(c: np.ndarray, n: int) -> np.ndarray:
    """The n-gram keys of code points `c`, in text order (empty when shorter than n). Keys of different n never
    collide, nor with a single code point's key."""
    m = len(c) - n + 1
    if m <= 0:
        return _EMPTY
    k = c[:m].copy()
    for j in range(1, n):
        k = (k << 21) | c[j:j + m]
    return k


def gram_set(s: str, n: int) -> np.ndarray:
    """Sorted unique n-gram keys of `s`; a non-empty `s` shorter than n is its own single gram."""
    c = codepoints(s)
    if len(c) >= n:
        return np.unique(gram_keys(c, n))
    if not len(c):
        return _EMPTY
    return gram_keys(c, len(c))


def overlap(x: np.ndarray, y: np.ndarray) -> int:
    """Size of the intersection of two sorted unique key arrays."""
    return len(np.intersect1d(x, y, assume_unique=True)) if len(x) and len(y) else 0
