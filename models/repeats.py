"""Repeat-petition finder: embed a petition, search the index, score each candidate with reasons.

Public API (used by the service, keep stable):

    search_candidates(index, petitions, vectors, k, lookup, scorer) -> list[list[dict]]
        # the one repeat search (CLI, matters, service): [{"id", "similarity", "probability", "is_repeat",
        # "reasons"}] per petition, probability desc, never the petition itself
    RepeatFinder(embedder, index, scorer)
    finder.candidates(petition, k: int, lookup: Callable[[list[str]], dict[str, Petition]]) -> list[dict]
    finder.candidates_many(petitions, k, lookup) -> list[list[dict]]    # embedded in batches
    finder.candidates_for_vectors(petitions, vectors, k, lookup) -> list[list[dict]]   # embeddings known
    finder.neighbours_for_vectors(petitions, vectors, k, lookup) -> ([[(id, cosine)]], found)  # unscored
    finder.score_pair(a, b) -> {"probability", "is_repeat", "reasons", "similarity"}
    build_index(records, embedder, factory="Flat") -> VectorIndex
    index_records(index, records, embedder, replace=False) -> int
    PetitionStore: the petitions behind an index directory (`petitions.jsonl`), `.lookup(ids)`

Petitions are `models.petition.Petition` values or record dicts (read through `Petition.from_record`).
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
from xinfang.fsutil import atomic_file
from xinfang.models.petition import Petition, as_petition
from xinfang.models.repeat_ranking import GramMatrix, fetch_size, lexical_similarity, rerank, score_candidates
from xinfang.models.vector_index import MANIFEST, VectorIndex
from xinfang.records import read_jsonl

log = logging.getLogger(__name__)

STORE_FILE = "petitions.jsonl"

Lookup = Callable[[list[str]], dict[str, Petition]]


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
    with atomic_file(path, "wb") as fh:
        np.save(fh, arr)
    return arr


def petition_embedding_text(petition: Petition | dict) -> str:
    """The normalised text embedded for a petition; DataError naming it when title and text are empty."""
    return as_petition(petition).require_text()


class PetitionStore:
    """Petitions behind an index (id -> stored fields), persisted as `petitions.jsonl` in the index dir."""

    def __init__(self, petitions: Iterable[Petition | dict] = ()) -> None:
        self._by_id: dict[str, Petition] = {}
        self.put(petitions)

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, records: Iterable[Petition | dict]) -> None:
        for r in records:
            p = as_petition(r)
            if p.id is None:
                raise DataError(f"petition{f' in row {p.row}' if p.row else ''} has no id")
            self._by_id[p.id] = p

    def delete(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._by_id.pop(str(i), None)

    def lookup(self, ids: list[str]) -> dict[str, Petition]:
        return {i: self._by_id[i] for i in ids if i in self._by_id}

    def all(self) -> list[Petition]:
        return list(self._by_id.values())

    def save(self, directory: str | Path) -> None:
        from xinfang.records import write_jsonl

        try:
            write_jsonl(Path(directory) / STORE_FILE, (p.stored() for p in self._by_id.values()))
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


def index_records(index: VectorIndex, records: list, embedder, replace: bool = False,
                  cache_dir: str | Path | None = None) -> int:
    """Embed and add records to `index` (replace=True overwrites known ids). Nothing is added on error."""
    petitions = [as_petition(r) for r in records]
    ids = [str(p.id) for p in petitions]
    if not replace:
        known = [i for i in ids if index.contains(i)]
        if known:
            raise IndexError_(f"id already indexed: {known[0]!r} ({len(known)} duplicate(s)); "
                              "pass --replace to overwrite")
    texts = [p.require_text() for p in petitions]
    t0 = time.perf_counter()
    vecs = embed_cached(embedder, texts, cache_dir)
    (index.replace if replace else index.add)(ids, vecs)
    log.info("indexed %d petitions in %.1fs", len(ids), time.perf_counter() - t0)
    return len(ids)


def build_index(records: list, embedder, factory: str = "Flat",
                cache_dir: str | Path | None = None) -> VectorIndex:
    """A new index over `records` (rebuild from stored petitions: `build_index(store.all(), embedder)`)."""
    petitions = [as_petition(r) for r in records]
    vecs = embed_cached(embedder, [p.require_text() for p in petitions], cache_dir)
    return VectorIndex.rebuild([str(p.id) for p in petitions], vecs, embedder.dim, factory,
                               embedder.fingerprint)


def search_candidates(index: VectorIndex, petitions: list, vecs: np.ndarray, k: int, lookup: Lookup,
                      scorer) -> list[list[dict]]:
    """The repeat search: the index's `fetch_size(k)` nearest by cosine for each vector (never the petition
    itself), re-ranked with the lexical similarity and scored (repeat_ranking.py); top k per petition,
    probability desc. `lookup(ids)` gives the stored petitions; ids it lacks (deleted since) are dropped."""
    if k <= 0:
        raise DataError(f"k must be positive, got {k}")
    petitions = [as_petition(p) for p in petitions]
    own = [{p.id} if p.id is not None else set() for p in petitions]
    hits = index.search(np.asarray(vecs, dtype=np.float32), fetch_size(k), own)
    wanted = sorted({pid for row in hits for pid, _ in row})
    found = lookup(wanted)
    if len(found) < len(wanted):
        log.warning("%d indexed ids have no stored petition; skipped", len(wanted) - len(found))
    return [score_candidates(p, row, found, k, scorer) for p, row in zip(petitions, hits, strict=True)]


def _lexical(grams: GramMatrix, query: Petition, row: list[tuple[str, float]],
             found: dict[str, Petition]) -> list[float]:
    """Lexical similarity of the query to each hit: from the gram matrix where both are rows, else directly."""
    if query.id not in grams.row or any(pid not in grams.row for pid, _ in row):
        return [lexical_similarity(query.normalized, as_petition(found[pid]).normalized) if pid in found else 0.0
                for pid, _ in row]
    return grams.query_similarities(query.id, [pid for pid, _ in row]).tolist()


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

    def candidates(self, petition: Petition | dict, k: int, lookup: Lookup) -> list[dict]:
        """Top-k indexed petitions for `petition` (embedding search re-ranked with lexical similarity, see
        repeat_ranking.py), scored, probability desc; never the petition itself."""
        return self.candidates_many([petition], k, lookup)[0]

    def candidates_many(self, petitions: list, k: int, lookup: Lookup) -> list[list[dict]]:
        """`candidates` for many petitions, embedded in batches."""
        if k <= 0:
            raise DataError(f"k must be positive, got {k}")
        petitions = [as_petition(p) for p in petitions]
        vecs = self.embedder.encode([p.require_text() for p in petitions])
        return search_candidates(self.index, petitions, vecs, k, lookup, self.scorer)

    def candidates_for_vectors(self, petitions: list, vecs: np.ndarray, k: int, lookup: Lookup) -> list[list[dict]]:
        """`candidates_many` for petitions whose embeddings are already known (stored or cached vectors)."""
        return search_candidates(self.index, petitions, vecs, k, lookup, self.scorer)

    def neighbours_for_vectors(self, petitions: list, vecs: np.ndarray, k: int, lookup: Lookup,
                               grams: GramMatrix | None = None
                               ) -> tuple[list[list[tuple[str, float]]], dict[str, Petition]]:
        """The candidate *set* of `candidates_for_vectors` without scoring: per petition its top-k (id, cosine)
        by the hybrid re-rank, and the stored petitions they name (for scoring each pair once elsewhere).
        `grams`: the petitions' and their neighbours' gram vectors, for one vectorised lexical step (batch jobs)."""
        if k <= 0:
            raise DataError(f"k must be positive, got {k}")
        petitions = [as_petition(p) for p in petitions]
        own = [{p.id} if p.id else set() for p in petitions]
        hits = self.index.search(vecs, fetch_size(k), own)
        found = lookup(sorted({pid for row in hits for pid, _ in row}))
        lexical: list[list[float] | None] = [None] * len(petitions)
        if grams is not None:
            lexical = [_lexical(grams, p, row, found) for p, row in zip(petitions, hits, strict=True)]
        return [rerank(petition, row, found, k, lex)
                for petition, row, lex in zip(petitions, hits, lexical, strict=True)], found

    def score_pair(self, a: Petition | dict, b: Petition | dict) -> dict:
        """Score two petitions directly (no index): {"probability", "is_repeat", "reasons", "similarity"}."""
        a, b = as_petition(a), as_petition(b)
        va, vb = self.embedder.encode([a.require_text(), b.require_text()])
        sim = float(np.dot(va, vb))
        return {**self.scorer.score(a, b, sim), "similarity": round(sim, 4)}
