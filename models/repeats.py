"""Repeat-petition finder: embed a petition, search the index, score each candidate with reasons.

Public API (used by the service, keep stable):

    RepeatFinder(embedder, index, scorer)
    finder.candidates(petition: dict, k: int, lookup: Callable[[list[str]], dict[str, dict]]) -> list[dict]
        # [{"id", "similarity", "probability", "is_repeat", "reasons"}], probability desc, never the petition
    finder.candidates_many(petitions, k, lookup) -> list[list[dict]]
    finder.candidates_for_vectors(petitions, vectors, k, lookup) -> list[list[dict]]   # embeddings known
    finder.neighbours_for_vectors(petitions, vectors, k, lookup) -> ([[(id, cosine)]], found)  # unscored
    finder.score_pair(a: dict, b: dict) -> {"probability", "is_repeat", "reasons", "similarity"}
    build_index(records, embedder, factory="Flat") -> VectorIndex
    index_records(index, records, embedder, replace=False) -> int
    PetitionStore: the petitions behind an index directory (`petitions.jsonl`), `.lookup(ids)`
    open_index(directory, embedder, create=True) -> (VectorIndex, PetitionStore)
    save_index(directory, index, store)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from xinfang.errors import DataError, IndexError_
from xinfang.models.normalize import petition_text
from xinfang.models.repeat_ranking import fetch_size, rerank, score_candidates
from xinfang.models.vector_index import MANIFEST, VectorIndex
from xinfang.records import read_jsonl

log = logging.getLogger(__name__)

STORE_FILE = "petitions.jsonl"
STORED_FIELDS = ("id", "title", "text", "petitioner", "time")

Lookup = Callable[[list[str]], dict[str, dict]]


def _encode(embedder, texts: list[str], progress: Callable[[int], None] | None) -> np.ndarray:
    if progress is None:
        return embedder.encode(texts)
    parts = []
    for start in range(0, len(texts), 256):
        parts.append(embedder.encode(texts[start:start + 256]))
        progress(len(parts[-1]))
    return np.concatenate(parts) if parts else embedder.encode([])


def embed_cached(embedder, texts: list[str], cache_dir: str | Path | None,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """`embedder.encode(texts)`, cached as .npy keyed by the encoder fingerprint and the exact texts;
    `progress(n)` is called as texts are embedded."""
    if cache_dir is None:
        return _encode(embedder, texts, progress)
    h = hashlib.sha256(embedder.fingerprint.encode())
    for t in texts:
        h.update(b"\x00" + t.encode("utf-8"))
    path = Path(cache_dir) / f"emb-{h.hexdigest()[:24]}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape == (len(texts), embedder.dim):
            if progress:
                progress(len(texts))
            return arr
    arr = _encode(embedder, texts, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def petition_embedding_text(petition: dict) -> str:
    """The normalised text embedded for a petition; DataError naming it when title and text are empty."""
    text = petition_text(petition.get("title"), petition.get("text"))
    if not text.strip():
        where = f" (row {petition['_row']})" if petition.get("_row") else ""
        raise DataError(f"petition {petition.get('id')!r}{where}: empty title and text, nothing to compare")
    return text


def stored_petition(record: dict) -> dict:
    """The fields kept for a petition in the store (petitioner taken from `petitioner` or `user`)."""
    out = {k: record.get(k) for k in STORED_FIELDS}
    out["id"] = str(record["id"])
    if out["petitioner"] in (None, "") and record.get("user") not in (None, ""):
        out["petitioner"] = record.get("user")
    for k in ("petitioner", "time"):
        if out[k] is not None:
            out[k] = str(out[k])
    return out


class PetitionStore:
    """Petitions behind an index (id -> stored fields), persisted as `petitions.jsonl` in the index dir."""

    def __init__(self, petitions: Iterable[dict] = ()) -> None:
        self._by_id: dict[str, dict] = {}
        for p in petitions:
            self._by_id[str(p["id"])] = stored_petition(p)

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, records: Iterable[dict]) -> None:
        for r in records:
            self._by_id[str(r["id"])] = stored_petition(r)

    def delete(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._by_id.pop(str(i), None)

    def lookup(self, ids: list[str]) -> dict[str, dict]:
        return {i: self._by_id[i] for i in ids if i in self._by_id}

    def all(self) -> list[dict]:
        return list(self._by_id.values())

    def save(self, directory: str | Path) -> None:
        from xinfang.records import write_jsonl

        try:
            write_jsonl(Path(directory) / STORE_FILE, self._by_id.values())
        except OSError as exc:
            raise IndexError_(f"cannot write {Path(directory) / STORE_FILE}: {exc.strerror or exc}; "
                              "the previously saved index is unchanged") from exc

    @classmethod
    def load(cls, directory: str | Path) -> PetitionStore:
        path = Path(directory) / STORE_FILE
        if not path.exists():
            return cls()
        try:
            return cls(read_jsonl(path))
        except DataError as exc:
            raise IndexError_(f"corrupt petition store: {exc}") from exc


def open_index(directory: str | Path, embedder, create: bool = True,
               factory: str = "Flat") -> tuple[VectorIndex, PetitionStore]:
    """Load the index and petition store at `directory` (refusing another encoder's index); a new, empty
    pair when none exists and `create`."""
    directory = Path(directory)
    if not (directory / MANIFEST).exists():
        if not create:
            raise IndexError_(f"no index at {directory}; build one with `xinfang repeats index`")
        return VectorIndex(embedder.dim, factory, embedder.fingerprint), PetitionStore()
    index = VectorIndex.load(directory, expected_fingerprint=embedder.fingerprint, expected_dim=embedder.dim)
    store = PetitionStore.load(directory)
    missing = [i for i in index.ids() if not store.lookup([i])]
    if missing:
        raise IndexError_(f"{directory}: {len(missing)} indexed ids have no stored petition "
                          f"(first {missing[0]!r}); rebuild the index")
    return index, store


def save_index(directory: str | Path, index: VectorIndex, store: PetitionStore) -> None:
    """Save the petition store, then the index (its manifest replace is the commit point)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexError_(f"cannot create index directory {directory}: {exc.strerror or exc}") from exc
    store.save(directory)
    index.save(directory)


def index_records(index: VectorIndex, records: list[dict], embedder, replace: bool = False,
                  cache_dir: str | Path | None = None) -> int:
    """Embed and add records to `index` (replace=True overwrites known ids). Nothing is added on error."""
    ids = [str(r["id"]) for r in records]
    if not replace:
        known = [i for i in ids if index.contains(i)]
        if known:
            raise IndexError_(f"id already indexed: {known[0]!r} ({len(known)} duplicate(s)); "
                              "pass --replace to overwrite")
    texts = [petition_embedding_text(r) for r in records]
    t0 = time.perf_counter()
    vecs = embed_cached(embedder, texts, cache_dir)
    (index.replace if replace else index.add)(ids, vecs)
    log.info("indexed %d petitions in %.1fs", len(ids), time.perf_counter() - t0)
    return len(ids)


def build_index(records: list[dict], embedder, factory: str = "Flat",
                cache_dir: str | Path | None = None) -> VectorIndex:
    """A new index over `records` (rebuild from stored petitions: `build_index(store.all(), embedder)`)."""
    texts = [petition_embedding_text(r) for r in records]
    vecs = embed_cached(embedder, texts, cache_dir)
    return VectorIndex.rebuild([str(r["id"]) for r in records], vecs, embedder.dim, factory,
                               embedder.fingerprint)


class RepeatFinder:
    """Candidates for 'same matter' among indexed petitions, each with probability and reasons."""

    def __init__(self, embedder, index: VectorIndex, scorer) -> None:
        if index.dim != embedder.dim:
            raise IndexError_(f"index dimension {index.dim} != embedder dimension {embedder.dim}")
        if index.fingerprint and index.fingerprint != embedder.fingerprint:
            raise IndexError_("the index was built with another encoder or embedding settings; rebuild it")
        if scorer.encoder_fingerprint and scorer.encoder_fingerprint != embedder.fingerprint:
            log.warning("repeat scorer was fitted with another encoder (fingerprint %s…); its probabilities "
                        "may be off", scorer.encoder_fingerprint[:12])
        self.embedder, self.index, self.scorer = embedder, index, scorer

    def candidates(self, petition: dict, k: int, lookup: Lookup) -> list[dict]:
        """Top-k indexed petitions for `petition` (embedding search re-ranked with lexical similarity, see
        repeat_ranking.py), scored, probability desc; never the petition itself."""
        return self.candidates_many([petition], k, lookup)[0]

    def candidates_many(self, petitions: list[dict], k: int, lookup: Lookup) -> list[list[dict]]:
        """`candidates` for many petitions, embedded in batches."""
        if k <= 0:
            raise DataError(f"k must be positive, got {k}")
        texts = [petition_embedding_text(p) for p in petitions]
        return self.candidates_for_vectors(petitions, self.embedder.encode(texts), k, lookup)

    def candidates_for_vectors(self, petitions: list[dict], vecs: np.ndarray, k: int,
                               lookup: Lookup) -> list[list[dict]]:
        """`candidates_many` for petitions whose embeddings are already known (stored or cached vectors)."""
        if k <= 0:
            raise DataError(f"k must be positive, got {k}")
        own = [{str(p["id"])} if p.get("id") not in (None, "") else set() for p in petitions]
        hits = self.index.search(vecs, fetch_size(k), own)
        found = lookup(sorted({pid for row in hits for pid, _ in row}))
        missing = {pid for row in hits for pid, _ in row} - set(found)
        if missing:
            log.warning("%d indexed ids have no stored petition; skipped", len(missing))
        return [score_candidates(petition, row, found, k, self.scorer)
                for petition, row in zip(petitions, hits, strict=True)]

    def neighbours_for_vectors(self, petitions: list[dict], vecs: np.ndarray, k: int,
                               lookup: Lookup) -> tuple[list[list[tuple[str, float]]], dict[str, dict]]:
        """The candidate *set* of `candidates_for_vectors` without scoring: per petition its top-k (id, cosine)
        by the hybrid re-rank, and the stored petitions they name (for scoring each pair once elsewhere)."""
        if k <= 0:
            raise DataError(f"k must be positive, got {k}")
        own = [{str(p["id"])} if p.get("id") not in (None, "") else set() for p in petitions]
        hits = self.index.search(vecs, fetch_size(k), own)
        found = lookup(sorted({pid for row in hits for pid, _ in row}))
        return [rerank(petition, row, found, k) for petition, row in zip(petitions, hits, strict=True)], found

    def score_pair(self, a: dict, b: dict) -> dict:
        """Score two petitions directly (no index): {"probability", "is_repeat", "reasons", "similarity"}."""
        va, vb = self.embedder.encode([petition_embedding_text(a), petition_embedding_text(b)])
        sim = float(np.dot(va, vb))
        return {**self.scorer.score(a, b, sim), "similarity": round(sim, 4)}
