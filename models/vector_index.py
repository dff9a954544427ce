"""FAISS vector index keyed by string petition ids, persisted atomically, safe for concurrent use.

Public API (used by the service, keep stable):

    VectorIndex(dim, factory="Flat", fingerprint="", ivf_min_train=None)
    .add(ids, vectors)                    # duplicate id -> IndexError_, nothing changed
    .remove(ids, missing_ok=False)        # unknown id -> IndexError_ unless missing_ok
    .replace(ids, vectors)                # add-or-overwrite
    .search(vectors, k, exclude_ids=None) -> list[list[(id, score)]]   # inner product, best first
    len(index), .ids(), .contains(id), .vector(id)
    .save(directory)                      # atomic: new files, fsync, os.replace of manifest.json
    VectorIndex.load(directory, expected_fingerprint=None)   # refuses other encoders / corrupt files
    VectorIndex.rebuild(ids, vectors, dim=None, factory="Flat", fingerprint="")

Index kinds. "Flat" (default) is `IndexIDMap2(IndexFlatIP)`: exact, real removal. Any other FAISS factory
string ("HNSW32", "IVF1024,Flat", "HNSW32,SQ8", ...) builds an approximate index with inner-product metric:
- HNSW cannot delete vectors, so `remove`/`replace` leave a *tombstone*: the vector stays in the graph but is
  filtered out of results; when tombstones exceed a quarter of the index it is compacted (rebuilt from the
  live vectors, reconstructed from the index's own storage).
- IVF needs training: while the index holds fewer than `ivf_min_train` vectors (default 39 x nlist) the
  vectors are kept in an exact Flat index; once enough have arrived, the IVF is trained on all of them and
  takes over. The manifest records both the requested and the active factory.

Vectors should be L2-normalised (scores are then cosine similarities). Writers take an exclusive lock,
searches share a lock, so one index object can serve many threads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from xinfang.errors import IndexError_
from xinfang.fsutil import fsync_dir, write_durable
from xinfang.hashing import sha256_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLAT = "Flat"
COMPACT_FRACTION = 0.25


class RWLock:
    """Readers-writer lock: many concurrent readers or one writer; waiting writers block new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _ivf_nlist(factory: str) -> int | None:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def _train_sample(vectors: np.ndarray, factory: str, per_list: int = 64) -> np.ndarray:
    """At most `per_list` x nlist vectors (a fixed random subset) for IVF k-means: enough for good
    centroids, and training time stays bounded at millions of vectors."""
    nlist = _ivf_nlist(factory)
    cap = per_list * nlist if nlist else len(vectors)
    if len(vectors) <= cap:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), cap, replace=False))
    return np.ascontiguousarray(vectors[rows])


class VectorIndex:
    """String-id vector index over FAISS (see module docstring)."""

    def __init__(self, dim: int, factory: str = FLAT, fingerprint: str = "",
                 ivf_min_train: int | None = None) -> None:
        if dim <= 0:
            raise IndexError_(f"index dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.factory = factory.strip() or FLAT
        self.fingerprint = fingerprint
        nlist = _ivf_nlist(self.factory)
        self.ivf_min_train = ivf_min_train if ivf_min_train is not None else (39 * nlist if nlist else 0)
        self._lock = RWLock()
        self._id_to_int: dict[str, int] = {}
        self._int_to_id: dict[int, str] = {}
        self._tombstones: set[int] = set()  # int ids still inside an approximate index but deleted
        self._next_int = 0
        self.search_params: dict[str, int] = {}
        self._active_factory = FLAT if (self.factory == FLAT or nlist) else self.factory
        self._index = self._new_index(self._active_factory)

    # ---------------------------------------------------------------- construction helpers
    def _new_index(self, factory: str) -> faiss.Index:
        if factory == FLAT:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        try:
            base = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexError_(f"invalid FAISS factory string {factory!r}: {exc}") from exc
        nlist = _ivf_nlist(factory)
        if nlist:
            ivf = faiss.extract_index_ivf(base)
            ivf.make_direct_map()  # lets compaction reconstruct vectors
            ivf.nprobe = min(nlist, 16)
        elif "HNSW" in factory:
            faiss.ParameterSpace().set_index_parameter(base, "efSearch", 64)
        for name, value in self.search_params.items():  # kept across IVF training and compaction
            faiss.ParameterSpace().set_index_parameter(base, name, value)
        return faiss.IndexIDMap2(base)

    @property
    def approximate(self) -> bool:
        return self._active_factory != FLAT

    @property
    def active_factory(self) -> str:
        return self._active_factory

    def _check_vectors(self, vectors: np.ndarray, n: int | None = None) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise IndexError_(f"vectors have shape {arr.shape}, the index expects (n, {self.dim})")
        if n is not None and arr.shape[0] != n:
            raise IndexError_(f"{n} ids but {arr.shape[0]} vectors")
        if not np.isfinite(arr).all():
            raise IndexError_("vectors contain NaN or infinite values")
        return np.ascontiguousarray(arr)

    @staticmethod
    def _check_ids(ids: Iterable[str]) -> list[str]:
        out = [str(i) for i in ids]
        if any(not i for i in out):
            raise IndexError_("empty petition id")
        seen: set[str] = set()
        dups = [i for i in out if i in seen or seen.add(i)]
        if dups:
            raise IndexError_(f"duplicate id in one call: {dups[0]!r}")
        return out

    # ---------------------------------------------------------------- writes
    def add(self, ids: Iterable[str], vectors: np.ndarray) -> None:
        """Add new vectors; an id already indexed raises IndexError_ naming it and nothing is added."""
        ids = self._check_ids(ids)
        arr = self._check_vectors(vectors, len(ids))
        with self._lock.write():
            present = [i for i in ids if i in self._id_to_int]
            if present:
                raise IndexError_(f"id already indexed: {present[0]!r} ({len(present)} duplicate(s)); "
                                  "use replace() to overwrite")
            self._add_locked(ids, arr)

    def _add_locked(self, ids: list[str], arr: np.ndarray) -> None:
        if not ids:
            return
        ints = np.arange(self._next_int, self._next_int + len(ids), dtype=np.int64)
        if not self._index.is_trained:
            self._index.train(_train_sample(arr, self._active_factory))
        self._index.add_with_ids(arr, ints)
        self._next_int += len(ids)
        for s, i in zip(ids, ints.tolist(), strict=True):
            self._id_to_int[s] = i
            self._int_to_id[i] = s
        self._maybe_switch_to_ivf()

    def remove(self, ids: Iterable[str], missing_ok: bool = False) -> int:
        """Remove ids; an unknown id raises IndexError_ (nothing removed) unless `missing_ok`. Returns count."""
        ids = self._check_ids(ids)
        with self._lock.write():
            unknown = [i for i in ids if i not in self._id_to_int]
            if unknown and not missing_ok:
                raise IndexError_(f"id not in index: {unknown[0]!r} ({len(unknown)} unknown)")
            known = [i for i in ids if i in self._id_to_int]
            self._remove_locked(known)
            return len(known)

    def _remove_locked(self, ids: list[str]) -> None:
        if not ids:
            return
        ints = [self._id_to_int.pop(i) for i in ids]
        for i in ints:
            del self._int_to_id[i]
        if self.approximate:
            self._tombstones.update(ints)
            if len(self._tombstones) > COMPACT_FRACTION * max(self._index.ntotal, 1):
                self._compact_locked()
        else:
            self._index.remove_ids(np.asarray(ints, dtype=np.int64))

    def replace(self, ids: Iterable[str], vectors: np.ndarray) -> None:
        """Add or overwrite vectors by id (an unknown id is simply added)."""
        ids = self._check_ids(ids)
        arr = self._check_vectors(vectors, len(ids))
        with self._lock.write():
            self._remove_locked([i for i in ids if i in self._id_to_int])
            self._add_locked(ids, arr)

    def _live_vectors_locked(self) -> tuple[list[str], np.ndarray]:
        ids = list(self._id_to_int)
        if not ids:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        ints = np.asarray([self._id_to_int[i] for i in ids], dtype=np.int64)
        vecs = np.vstack([self._index.reconstruct(int(i)) for i in ints]).astype(np.float32)
        return ids, vecs

    def _compact_locked(self) -> None:
        """Rebuild the approximate index from its live vectors, dropping tombstones."""
        t0 = time.perf_counter()
        ids, vecs = self._live_vectors_locked()
        self._reset_locked(self._active_factory)
        self._add_locked(ids, vecs)
        log.info("compacted %s index to %d vectors in %.2fs", self._active_factory, len(ids),
                 time.perf_counter() - t0)

    def _reset_locked(self, factory: str) -> None:
        self._active_factory = factory
        self._index = self._new_index(factory)
        self._id_to_int.clear()
        self._int_to_id.clear()
        self._tombstones.clear()
        self._next_int = 0

    def _maybe_switch_to_ivf(self) -> None:
        if self._active_factory != FLAT or self.factory == FLAT or not _ivf_nlist(self.factory):
            return
        if len(self._id_to_int) < self.ivf_min_train:
            return
        t0 = time.perf_counter()
        ids, vecs = self._live_vectors_locked()
        self._reset_locked(self.factory)
        self._index.train(_train_sample(vecs, self.factory))
        self._add_locked(ids, vecs)
        log.info("trained %s on %d vectors in %.2fs", self.factory, len(ids), time.perf_counter() - t0)

    # ---------------------------------------------------------------- reads
    def __len__(self) -> int:
        with self._lock.read():
            return len(self._id_to_int)

    def ids(self) -> list[str]:
        """Indexed ids in insertion order (a replaced id moves to the end)."""
        with self._lock.read():
            return [self._int_to_id[i] for i in sorted(self._int_to_id)]

    def contains(self, pid: str) -> bool:
        with self._lock.read():
            return str(pid) in self._id_to_int

    def vector(self, pid: str) -> np.ndarray:
        """The stored vector of one id (IndexError_ when unknown)."""
        with self._lock.read():
            if str(pid) not in self._id_to_int:
                raise IndexError_(f"id not in index: {pid!r}")
            return np.asarray(self._index.reconstruct(self._id_to_int[str(pid)]), dtype=np.float32)

    def set_search_params(self, **params: int) -> None:
        """Set FAISS search parameters of an approximate index, e.g. efSearch=64 (HNSW) or nprobe=16 (IVF).

        They are remembered: an IVF index still in its exact warm-up gets them once it is trained."""
        with self._lock.write():
            ps = faiss.ParameterSpace()
            base = faiss.downcast_index(self._index.index)
            for name, value in params.items():
                try:
                    ps.set_index_parameter(base, name, value)
                except RuntimeError as exc:
                    if self.approximate:
                        raise IndexError_(f"cannot set {name}={value} on {self._active_factory}: {exc}") from exc
                if self.factory != FLAT:
                    self.search_params[name] = int(value)

    def with_factory(self, factory: str) -> VectorIndex:
        """A new index of another FAISS factory holding the same ids and vectors (same fingerprint)."""
        with self._lock.read():
            ids, vecs = self._live_vectors_locked()
        return VectorIndex.rebuild(ids, vecs, self.dim, factory, self.fingerprint)

    def search(self, vectors: np.ndarray, k: int,
               exclude_ids: list[set[str]] | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (id, inner product) per query vector, best first.

        `exclude_ids[q]` is a set of ids never returned for query q; pass the query's own id so that a
        petition never finds itself. Fewer than k results come back only when the index holds fewer
        eligible vectors.
        """
        arr = self._check_vectors(vectors)
        if k <= 0:
            raise IndexError_(f"k must be positive, got {k}")
        if exclude_ids is not None and len(exclude_ids) != arr.shape[0]:
            raise IndexError_(f"exclude_ids has {len(exclude_ids)} sets for {arr.shape[0]} queries")
        excl = [set(map(str, e or ())) for e in (exclude_ids or [set()] * arr.shape[0])]
        with self._lock.read():
            if not self._id_to_int:
                return [[] for _ in range(arr.shape[0])]
            total = self._index.ntotal
            extra = max((len(e) for e in excl), default=0) + len(self._tombstones)
            fetch = min(total, k + extra)
            while True:
                scores, ints = self._index.search(arr, fetch)
                results, short = [], False
                for q in range(arr.shape[0]):
                    row: list[tuple[str, float]] = []
                    for s, i in zip(scores[q].tolist(), ints[q].tolist(), strict=True):
                        if i < 0 or i in self._tombstones:
                            continue
                        pid = self._int_to_id.get(i)
                        if pid is None or pid in excl[q]:
                            continue
                        row.append((pid, float(s)))
                        if len(row) == k:
                            break
                    eligible = len(self._id_to_int) - len(excl[q] & self._id_to_int.keys())
                    if len(row) < min(k, eligible):
                        short = True
                    results.append(row)
                # Approximate indexes may return fewer hits than asked (HNSW/IVF): widen once or twice.
                if not short or fetch >= total:
                    return results
                fetch = min(total, fetch * 4)

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path, meta: dict | None = None) -> Path:
        """Persist atomically: new data files are written and fsynced, then manifest.json is replaced.

        A crash or a permission error leaves the previous saved index intact and loadable. `meta` (JSON) is
        kept in the manifest with the files it describes (the service's change-feed mark): `read_manifest`.
        """
        directory = Path(directory)
        with self._lock.read():
            index_bytes = faiss.serialize_index(self._index).tobytes()
            ints = sorted(self._int_to_id)
            idmap = {
                "ids": [self._int_to_id[i] for i in ints], "ints": ints,
                "tombstones": sorted(self._tombstones), "next_int": self._next_int,
            }
            count, active = len(self._id_to_int), self._active_factory
        idmap_bytes = json.dumps(idmap, ensure_ascii=False).encode("utf-8")
        gen = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        files = {"index": f"index.{gen}.faiss", "idmap": f"ids.{gen}.json"}
        manifest = {
            "format_version": FORMAT_VERSION, "dimension": self.dim, "count": count,
            "factory": self.factory, "active_factory": active, "ivf_min_train": self.ivf_min_train,
            "metric": "inner_product", "encoder_fingerprint": self.fingerprint,
            "files": files,
            "sha256": {"index": sha256_bytes(index_bytes), "idmap": sha256_bytes(idmap_bytes)},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if meta:
            manifest["meta"] = meta
        written: list[Path] = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
            old = self._manifest_files(directory)
            for key, data in (("index", index_bytes), ("idmap", idmap_bytes)):
                path = directory / files[key]
                write_durable(path, data)
                written.append(path)
            tmp = directory / f".{MANIFEST}.{gen}.tmp"
            write_durable(tmp, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
            written.append(tmp)
            os.replace(tmp, directory / MANIFEST)
            written.remove(tmp)
            fsync_dir(directory)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            reason = exc.strerror or str(exc)
            raise IndexError_(f"cannot write index to {directory}: {reason}; the previously saved index "
                              "(if any) is unchanged") from exc
        for name in old:  # the previous generation is no longer referenced
            if name not in files.values():
                (directory / name).unlink(missing_ok=True)
        log.info("saved index (%d vectors, %s) to %s", count, active, directory)
        return directory

    @staticmethod
    def _manifest_files(directory: Path) -> list[str]:
        try:
            return list(json.loads((directory / MANIFEST).read_text("utf-8")).get("files", {}).values())
        except (OSError, ValueError, AttributeError):
            return []

    @classmethod
    def read_manifest(cls, directory: str | Path) -> dict:
        """The manifest of a saved index (IndexError_ when missing or unreadable)."""
        path = Path(directory) / MANIFEST
        if not path.exists():
            raise IndexError_(f"no index at {directory} ({MANIFEST} missing)")
        try:
            manifest = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{path}: unreadable or corrupt manifest: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexError_(f"{path}: unsupported index format {manifest.get('format_version')!r}"
                              if isinstance(manifest, dict) else f"{path}: corrupt manifest")
        return manifest

    @classmethod
    def load(cls, directory: str | Path, expected_fingerprint: str | None = None,
             expected_dim: int | None = None) -> VectorIndex:
        """Load a saved index, verifying checksums, counts, dimension and the encoder fingerprint.

        An index built with another encoder (fingerprint differs) is refused with IndexError_.
        """
        directory = Path(directory)
        m = cls.read_manifest(directory)
        if expected_fingerprint is not None and m.get("encoder_fingerprint") != expected_fingerprint:
            raise IndexError_(
                f"index at {directory} was built with another encoder or embedding settings "
                f"(fingerprint {str(m.get('encoder_fingerprint'))[:12]}…, expected {expected_fingerprint[:12]}…); "
                "rebuild it with `xinfang repeats index`")
        if expected_dim is not None and m.get("dimension") != expected_dim:
            raise IndexError_(f"index at {directory} has dimension {m.get('dimension')}, expected {expected_dim}")
        blobs = {}
        for key in ("index", "idmap"):
            path = directory / m["files"][key]
            try:
                blobs[key] = path.read_bytes()
            except OSError as exc:
                raise IndexError_(f"{path}: cannot read index file: {exc.strerror or exc}") from exc
            if sha256_bytes(blobs[key]) != m["sha256"][key]:
                raise IndexError_(f"{path}: checksum mismatch, the index file is corrupt; rebuild the index")
        try:
            faiss_index = faiss.deserialize_index(np.frombuffer(blobs["index"], dtype=np.uint8))
            idmap = json.loads(blobs["idmap"].decode("utf-8"))
        except (RuntimeError, ValueError) as exc:
            raise IndexError_(f"{directory}: corrupt index files: {exc}") from exc
        if faiss_index.d != m["dimension"]:
            raise IndexError_(f"{directory}: FAISS index dimension {faiss_index.d} != manifest {m['dimension']}")
        obj = cls(m["dimension"], m["factory"], m.get("encoder_fingerprint", ""), m.get("ivf_min_train"))
        obj._index = faiss_index
        obj._active_factory = m["active_factory"]
        obj._int_to_id = {int(i): s for i, s in zip(idmap["ints"], idmap["ids"], strict=True)}
        obj._id_to_int = {s: i for i, s in obj._int_to_id.items()}
        obj._tombstones = set(idmap["tombstones"])
        obj._next_int = int(idmap["next_int"])
        live = faiss_index.ntotal - len(obj._tombstones)
        if len(obj._id_to_int) != m["count"] or live != m["count"]:
            raise IndexError_(f"{directory}: index holds {live} vectors but the manifest says {m['count']}")
        return obj

    @classmethod
    def rebuild(cls, ids: Iterable[str], vectors: np.ndarray, dim: int | None = None, factory: str = FLAT,
                fingerprint: str = "", ivf_min_train: int | None = None) -> VectorIndex:
        """A fresh index holding exactly these vectors (IVF is trained on them when there are enough)."""
        arr = np.asarray(vectors, dtype=np.float32)
        obj = cls(dim or arr.shape[1], factory, fingerprint, ivf_min_train)
        ids = list(ids)
        if _ivf_nlist(obj.factory) and len(ids) >= obj.ivf_min_train:
            with obj._lock.write():
                obj._reset_locked(obj.factory)
                obj._index.train(_train_sample(obj._check_vectors(arr, len(ids)), obj.factory))
        obj.add(ids, arr)
        return obj

    def info(self) -> dict:
        with self._lock.read():
            return {"dimension": self.dim, "count": len(self._id_to_int), "factory": self.factory,
                    "active_factory": self._active_factory, "tombstones": len(self._tombstones),
                    "encoder_fingerprint": self.fingerprint}
