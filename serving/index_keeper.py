"""Keeps the vector index (a derived read cache) in step with the store, through the store's change feed.

- open(): load the saved index and its high-water mark (in its manifest; refused when it was built with
  another embedder: start empty, from change 0), apply the changes after the mark, then check the counts: when
  the index and the store still disagree, a full reconcile repairs it (also `xinfang index reconcile`).
- start_sync(): a thread applies new changes as they commit (LISTEN/NOTIFY on PostgreSQL, polling every
  `poll_seconds` otherwise); an idle tick reads one index range of `changes`, whatever the store's size.
  A change is applied from the petition's state in the store: stored -> its stored vector (when made by this
  embedder; else the text is embedded here), gone -> removed. So applying twice or out of order is harmless.
- local writes (add/remove after this replica's own commit) make its own intake visible at once.
- a background thread saves after `save_every` writes or `save_seconds`; the mark saved is the feed position
  read *before* the index was written, so a restart re-applies at most a few changes and skips none.
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
from xinfang.serving.change_feed import ChangeWaiter, FeedCursor, FeedReader

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], np.ndarray]


def index_text(title: str | None, text: str | None) -> str:
    """The text embedded for repeat search (same normalisation as everywhere else)."""
    return petition_text(title, text)


class IndexKeeper:
    def __init__(self, path: Path, dim: int, fingerprint: str, store, save_every: int = 500,
                 save_seconds: float = 30.0, on_change: Callable[[int], None] | None = None,
                 on_save: Callable[[], None] | None = None, factory: str = "Flat",
                 search_params: dict[str, int] | None = None, poll_seconds: float = 0.5,
                 gap_seconds: float = 30.0, batch: int = 1000) -> None:
        self.path = Path(path)
        self.factory, self.search_params = factory, dict(search_params or {})
        self.dim, self.fingerprint = dim, fingerprint
        self.store = store
        self.save_every, self.save_seconds = save_every, save_seconds
        self.on_change, self.on_save = on_change, on_save
        self.poll_seconds, self.batch = poll_seconds, batch
        self.index = self._empty()
        self.cursor = FeedCursor(0, gap_seconds)
        self.reader = FeedReader(store.engine)
        self.applied = 0  # changes applied since start
        self.embedded = 0  # petitions embedded here (no vector of this embedder in the store)
        self.lag_changes = 0
        self.caught_up_at: float | None = None  # monotonic time of the last tick that found nothing pending
        self.last_tick_ms = 0.0
        self.feed_error: str | None = None
        self._opened_at = time.monotonic()
        self._dirty = 0
        self._dirty_since: float | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._stop_sync = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync_thread: threading.Thread | None = None
        self._waiter: ChangeWaiter | None = None
        self._save_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    # ------------------------------------------------------------------ start-up
    def open(self, embed: EmbedFn, batch: int = 64) -> dict:
        """Load the persisted index and mark, catch up from the feed, check counts; returns counts for the log."""
        loaded, floor = 0, 0
        if (self.path / "manifest.json").exists():
            try:
                self.index = VectorIndex.load(self.path, expected_fingerprint=self.fingerprint,
                                              expected_dim=self.dim)
                loaded = len(self.index)
                floor = self._read_mark()
            except IndexError_ as exc:
                log.warning("persisted index not used (%s); rebuilding from the store", exc)
                self.index = self._empty()
            if self.index.factory != self.factory:
                log.info("index factory changed; rebuilding from the persisted vectors",
                         extra={"from": self.index.factory, "to": self.factory})
                self.index = self.index.with_factory(self.factory)
            self._apply_search_params()
        last = self.store.last_change()
        if floor > last:  # another database, or one restored from an older backup
            log.warning("index high-water mark %d is past the store's last change %d: rebuilding", floor, last)
            self.index, floor, loaded = self._empty(), 0, 0
        self.cursor = FeedCursor(floor, self.cursor.gap_seconds)
        t0 = time.perf_counter()
        applied = self.catch_up(embed)
        stats = {"loaded": loaded, "from_change": floor, "changes_applied": applied, "to_change": self.cursor.floor,
                 "catch_up_seconds": round(time.perf_counter() - t0, 2)}
        log.info("index caught up from its high-water mark", extra=stats)
        stats.update(self.check_counts(embed, batch))
        self.save()
        self._thread = threading.Thread(target=self._persist_loop, name="xinfang-index-saver", daemon=True)
        self._thread.start()
        return stats

    def check_counts(self, embed: EmbedFn, batch: int = 64) -> dict:
        """Start-up check: the index holds as many petitions as the store (after one more catch-up when other
        replicas are writing); else a full reconcile repairs it."""
        stored = self.store.count_petitions()
        if stored != len(self.index):
            self.catch_up(embed)
            stored = self.store.count_petitions()
        if stored == len(self.index):
            return {"stored": stored, "reconciled": False}
        log.warning("index holds %d petitions, the store %d: reconciling", len(self.index), stored)
        return {**self.reconcile(embed, batch), "reconciled": True}

    def _empty(self) -> VectorIndex:
        index = VectorIndex(self.dim, self.factory, fingerprint=self.fingerprint)
        if self.search_params:
            index.set_search_params(**self.search_params)
        return index

    def _apply_search_params(self) -> None:
        if self.search_params:
            self.index.set_search_params(**self.search_params)

    def _read_mark(self) -> int:
        """The change-feed mark saved in the index's manifest (0 for an index saved without one)."""
        meta = VectorIndex.read_manifest(self.path).get("meta") or {}
        return int(meta.get("feed_floor", 0))

    def reconcile(self, embed: EmbedFn, batch: int = 64) -> dict:
        """Repair: index stored petitions missing from the index; drop index ids missing from the store
        (O(store); the change feed, not this, keeps replicas in step)."""
        with self._sync_lock:
            t0 = time.perf_counter()
            stored = set(self.store.iter_ids())
            indexed = set(self.index.ids())
            extra = sorted(indexed - stored)
            if extra:
                self.index.remove(extra, missing_ok=True)
            missing = sorted(stored - indexed)
            added = 0
            for start in range(0, len(missing), max(batch, 1000)):
                added += self._index_present(missing[start:start + max(batch, 1000)], embed)
            if extra or added:
                self._mark(len(extra) + added)
            stats = {"stored": len(stored), "added": added, "removed": len(extra),
                     "seconds": round(time.perf_counter() - t0, 2)}
            if extra or added:
                log.info("index reconciled", extra=stats)
            return stats

    # ------------------------------------------------------------------ the change feed
    def _index_present(self, ids: list[str], embed: EmbedFn) -> int:
        """Bring `ids` to their state in the store: stored vectors of this embedder as they are, others embedded
        from the text, absent ids removed. Returns the number of index entries written or removed."""
        state = self.store.index_state(ids)
        gone = [i for i in ids if i not in state]
        changed = self.index.remove(gone, missing_ok=True) if gone else 0
        ready_ids, ready_vecs, to_embed = [], [], []
        for pid, (fp, blob) in state.items():
            if fp == self.fingerprint and blob is not None:
                vec = np.frombuffer(blob, dtype="<f4")
                if vec.shape[0] != self.dim:
                    to_embed.append(pid)
                    continue
                if self.index.contains(pid) and np.array_equal(self.index.vector(pid).reshape(-1), vec):
                    continue  # this replica's own intake, already indexed
                ready_ids.append(pid)
                ready_vecs.append(vec)
            else:
                to_embed.append(pid)
        if ready_ids:
            self.index.replace(ready_ids, np.vstack(ready_vecs).astype(np.float32))
        if to_embed:
            rows = self.store.texts(to_embed)
            for start in range(0, len(rows), 64):
                part = rows[start:start + 64]
                vecs = np.asarray(embed([index_text(t, x) for _, t, x in part]), dtype=np.float32)
                self.index.replace([r[0] for r in part], vecs)
            self.embedded += len(rows)
            ready_ids += [r[0] for r in rows]
        return int(changed) + len(ready_ids)

    def sync_once(self, embed: EmbedFn) -> int:
        """Apply the changes committed since the last read (one batch); returns how many were read."""
        with self._sync_lock:
            t0 = time.perf_counter()
            rows = self.cursor.read(self.reader, self.batch)
            ids = list(dict.fromkeys(r[2] for r in rows if r[1] == "petition"))
            written = self._index_present(ids, embed) if ids else 0
            if written:
                self._mark(written)
            self.applied += len(rows)
            # fewer rows than asked: nothing committed after them (one query per idle tick); a full batch: ask
            pending = 0 if len(rows) < self.batch else max(0, self.reader.last_change() - self.cursor.top)
            self.lag_changes = pending
            if pending == 0:
                self.caught_up_at = time.monotonic()
            self.last_tick_ms = (time.perf_counter() - t0) * 1000
            self.feed_error = None
            return len(rows)

    def catch_up(self, embed: EmbedFn) -> int:
        """Apply changes until none are pending; returns how many were applied."""
        total = 0
        while True:
            n = self.sync_once(embed)
            total += n
            if n < self.batch and self.lag_changes == 0:
                return total

    @property
    def version(self) -> int:
        """The index version: every change numbered at or below it is applied (the persisted mark)."""
        return self.cursor.floor

    def lag_seconds(self) -> float:
        """0 when the last tick found nothing pending; else how long since the index was last caught up."""
        if self.lag_changes == 0 and self.caught_up_at is not None:
            return 0.0
        since = self.caught_up_at if self.caught_up_at is not None else self._opened_at
        return max(0.0, time.monotonic() - since)

    def start_sync(self, embed: EmbedFn) -> None:
        """Follow the feed in a thread: woken by NOTIFY (PostgreSQL) or every `poll_seconds`."""
        self._waiter = ChangeWaiter(self.store)
        self._sync_thread = threading.Thread(target=self._sync_loop, args=(embed,), name="xinfang-index-sync",
                                             daemon=True)
        self._sync_thread.start()

    def _sync_loop(self, embed: EmbedFn) -> None:
        while not self._stop_sync.is_set():
            try:
                while self.sync_once(embed) >= self.batch and not self._stop_sync.is_set():
                    pass
            except Exception as exc:  # the database away, an embed failure: logged, retried next tick
                if self.feed_error != str(exc):
                    log.error("index sync failed: %s", exc)
                self.feed_error = str(exc)
                self._stop_sync.wait(min(self.poll_seconds * 4, 2.0))
            if self._stop_sync.is_set():
                return
            self._waiter.wait(self.poll_seconds)

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
            floor = self.cursor.floor  # read before the index: everything up to it is in what is written
            self.index.save(self.path, meta={"feed_floor": floor})
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

    def stop_sync(self) -> None:
        """Stop following the feed (idempotent)."""
        self._stop_sync.set()
        if self._sync_thread:
            self._sync_thread.join(10)
            self._sync_thread = None
        if self._waiter:
            self._waiter.close()
        self.reader.close()

    def close(self) -> None:
        self.stop_sync()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(10)
        with self._cond:
            dirty = self._dirty
        if dirty or self.applied:
            self.save()

    def __len__(self) -> int:
        return len(self.index)
