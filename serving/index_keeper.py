"""Keeps the vector index consistent with the store (the source of truth) and persisted.

- open(): load the saved index (refused when it was built with another embedder: start empty), then reconcile:
  embed and add stored petitions the index lacks, remove index entries the store lacks, save.
- writes after each petition commit / delete; a background thread saves after `save_every` writes or
  `save_seconds` after the first unsaved write; close() saves a last time.
A crash between a commit and the next save loses nothing: the next start-up's reconcile re-indexes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xinfang.errors import IndexError_
from xinfang.models.normalize import petition_text
from xinfang.models.vector_index import VectorIndex

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]


def index_text(title: str | None, text: str | None) -> str:
    """The text embedded for repeat search (same normalisation as everywhere else)."""
    return petition_text(title, text)


class IndexKeeper:
    def __init__(self, path: Path, dim: int, fingerprint: str, store, save_every: int = 500,
                 save_seconds: float = 30.0, on_change: Callable[[int], None] | None = None,
                 on_save: Callable[[], None] | None = None, factory: str = "Flat",
                 search_params: dict[str, int] | None = None) -> None:
        self.path = Path(path)
        self.factory, self.search_params = factory, dict(search_params or {})
        self.dim, self.fingerprint = dim, fingerprint
        self.store = store
        self.save_every, self.save_seconds = save_every, save_seconds
        self.on_change, self.on_save = on_change, on_save
        self.index = self._empty()
        self._dirty = 0
        self._dirty_since: float | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._save_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    # ------------------------------------------------------------------ start-up
    def open(self, embed: EmbedFn, batch: int = 64) -> dict:
        """Load the persisted index and reconcile it with the store; returns counts for the log."""
        loaded = 0
        if (self.path / "manifest.json").exists():
            try:
                self.index = VectorIndex.load(self.path, expected_fingerprint=self.fingerprint,
                                              expected_dim=self.dim)
                loaded = len(self.index)
            except IndexError_ as exc:
                log.warning("persisted index not used (%s); rebuilding from the store", exc)
                self.index = self._empty()
            if self.index.factory != self.factory:
                log.info("index factory changed; rebuilding from the persisted vectors",
                         extra={"from": self.index.factory, "to": self.factory})
                self.index = self.index.with_factory(self.factory)
            self._apply_search_params()
        stats = self.reconcile(embed, batch)
        stats["loaded"] = loaded
        self.save()
        self._thread = threading.Thread(target=self._persist_loop, name="xinfang-index-saver", daemon=True)
        self._thread.start()
        return stats

    def _empty(self) -> VectorIndex:
        index = VectorIndex(self.dim, self.factory, fingerprint=self.fingerprint)
        if self.search_params:
            index.set_search_params(**self.search_params)
        return index

    def _apply_search_params(self) -> None:
        if self.search_params:
            self.index.set_search_params(**self.search_params)

    def reconcile(self, embed: EmbedFn, batch: int = 64) -> dict:
        """Index stored petitions missing from the index; drop index ids missing from the store."""
        with self._sync_lock:
            t0 = time.perf_counter()
            stored = set(self.store.iter_ids())
            indexed = set(self.index.ids())
            extra = sorted(indexed - stored)
            if extra:
                self.index.remove(extra, missing_ok=True)
            missing = sorted(stored - indexed)
            added = 0
            for start in range(0, len(missing), batch):
                rows = self.store.texts(missing[start:start + batch])
                if not rows:
                    continue
                vecs = embed([index_text(t, x) for _, t, x in rows])
                self.index.replace([r[0] for r in rows], vecs)
                added += len(rows)
            if extra or added:
                self._mark(len(extra) + added)
            stats = {"stored": len(stored), "added": added, "removed": len(extra),
                     "seconds": round(time.perf_counter() - t0, 2)}
            if extra or added:
                log.info("index reconciled", extra=stats)
            return stats

    # ------------------------------------------------------------------ writes
    def add(self, pid: str, vector: np.ndarray) -> None:
        self.index.replace([pid], np.asarray(vector, dtype=np.float32).reshape(1, -1))
        self._mark(1)

    def remove(self, pid: str) -> None:
        if self.index.remove([pid], missing_ok=True):
            self._mark(1)

    def _mark(self, n: int) -> None:
        with self._cond:
            self._dirty += n
            first = self._dirty_since is None
            if first:
                self._dirty_since = time.monotonic()
            if first or self._dirty >= self.save_every:  # the first unsaved write starts the saver's timer
                self._cond.notify_all()
        if self.on_change:
            self.on_change(len(self.index))

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        with self._save_lock:
            with self._cond:
                dirty_before = self._dirty
            self.index.save(self.path)
            with self._cond:
                self._dirty -= dirty_before
                self._dirty_since = time.monotonic() if self._dirty else None
        if self.on_save:
            self.on_save()

    def _persist_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    if self._dirty >= self.save_every:
                        break
                    if self._dirty_since is not None:
                        left = self._dirty_since + self.save_seconds - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                if self._stop:
                    return
            try:
                self.save()
            except IndexError_ as exc:  # keep serving; the store still has everything
                log.error("index save failed: %s", exc)
                time.sleep(min(self.save_seconds, 5.0))

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(10)
        with self._cond:
            dirty = self._dirty
        if dirty:
            self.save()

    def __len__(self) -> int:
        return len(self.index)
