"""Reading the store's change feed (`changes`, one sequence number per write) in order, without skipping.

On PostgreSQL a sequence number is drawn when a transaction inserts its change row, but transactions commit in
any order: a reader may see 8 committed while 7 is still in flight. `FeedCursor` remembers such holes as gaps
and asks for them again on every read until they appear or age out (`gap_seconds`: a rolled-back transaction
leaves a hole for ever). Its `floor` -- every number at or below it is applied or aged out -- is what a replica
persists as its high-water mark; reading again from the floor re-applies a few changes, which is harmless
because applying a change is idempotent (the reader looks at the petition's state in the store, not at the
change). SQLite serialises writers, so there it never sees a gap.

`ChangeWaiter` wakes the reader: LISTEN xinfang_changes on PostgreSQL (NOTIFY is sent by a trigger on
`changes` at commit), a plain timeout (polling) otherwise or while the listening connection is down.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

log = logging.getLogger("xinfang.serving")

CHANNEL = "xinfang_changes"
MAX_GAPS = 10_000  # more open holes than this at once: the oldest age out at once


@dataclass
class FeedCursor:
    """Position in the change feed: `floor` (persisted high-water mark), `top` (highest seen), open gaps."""

    floor: int = 0
    gap_seconds: float = 30.0
    top: int = field(default=-1)
    gaps: dict[int, float] = field(default_factory=dict)  # seq -> when first missed (monotonic)
    aged_out: int = 0

    def __post_init__(self) -> None:
        if self.top < self.floor:
            self.top = self.floor

    def read(self, store, limit: int = 1000) -> list[tuple[int, str, str, datetime]]:
        """The committed changes not yet returned: late-committed gaps first, then those after `top`."""
        now = time.monotonic()
        filled = store.changes_in(sorted(self.gaps)) if self.gaps else []
        for row in filled:
            self.gaps.pop(row[0], None)
        rows = store.changes_after(self.top, limit)
        for row in rows:
            seq = row[0]
            for missing in range(self.top + 1, seq):
                self.gaps[missing] = now
            self.top = max(self.top, seq)
        self._age(now)
        self.floor = (min(self.gaps) - 1) if self.gaps else self.top
        return filled + rows

    def _age(self, now: float) -> None:
        old = [s for s, t in self.gaps.items() if now - t >= self.gap_seconds]
        if len(self.gaps) - len(old) > MAX_GAPS:
            keep = sorted(set(self.gaps) - set(old))
            old += keep[:len(keep) - MAX_GAPS]
        for s in old:
            del self.gaps[s]
        if old:
            self.aged_out += len(old)
            log.info("change feed: %d sequence number(s) never committed (rolled back), skipped", len(old),
                     extra={"seqs": sorted(old)[:10]})


class FeedReader:
    """The feed queries on one held connection (an idle tick is one indexed range read, no pool round trip);
    the connection is replaced after any error. Same answers as Store.changes_after / changes_in / last_change."""

    def __init__(self, engine) -> None:
        from sqlalchemy import bindparam, func, select

        from xinfang.serving.tables import Change

        self.engine = engine
        self._conn = None
        cols = (Change.seq, Change.kind, Change.object_id, Change.created_at)
        self._after = (select(*cols).where(Change.seq > bindparam("seq")).order_by(Change.seq)
                       .limit(bindparam("limit")))
        self._among = select(*cols).where(Change.seq.in_(bindparam("seqs", expanding=True))).order_by(Change.seq)
        self._last = select(func.max(Change.seq))

    def _run(self, stmt, **params):
        if self._conn is None:  # autocommit: one round trip per read, and each read sees the latest commits
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            return self._conn.execute(stmt, params).all()
        except Exception:
            self.close()
            raise

    def changes_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str, datetime]]:
        return [(int(r[0]), r[1], r[2], r[3]) for r in self._run(self._after, seq=seq, limit=limit)]

    def changes_in(self, seqs: list[int]) -> list[tuple[int, str, str, datetime]]:
        if not seqs:
            return []
        return [(int(r[0]), r[1], r[2], r[3]) for r in self._run(self._among, seqs=list(seqs))]

    def last_change(self) -> int:
        return int(self._run(self._last)[0][0] or 0)

    def close(self) -> None:
        _close_quietly(self._conn)
        self._conn = None


def _close_quietly(conn) -> None:
    """Close a held connection that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # pragma: no cover - already broken
            pass


class ChangeWaiter:
    """`wait(timeout)` returns early when a NOTIFY arrives (PostgreSQL), else after `timeout` (polling)."""

    def __init__(self, store) -> None:
        self.store = store
        self.listening = False
        self._conn = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def _connect(self) -> None:
        if self.store.dialect != "postgresql" or time.monotonic() < self._retry_at:
            return
        try:
            import psycopg

            url = self.store.engine.url.set(drivername="postgresql")
            self._conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                         connect_timeout=5)
            self._conn.execute(f"LISTEN {CHANNEL}")
            self.listening = True
        except Exception as exc:  # the database is away: poll, retry LISTEN later
            self._drop()
            self._retry_at = time.monotonic() + 5.0
            log.warning("change feed: LISTEN unavailable, polling (%s)", type(exc).__name__)

    def _drop(self) -> None:
        self.listening = False
        _close_quietly(self._conn)
        self._conn = None

    def wait(self, timeout: float) -> bool:
        """True when woken by a notification, False on timeout (or when not listening)."""
        with self._lock:
            if self._conn is None:
                self._connect()
            conn = self._conn
        if conn is None:
            time.sleep(timeout)
            return False
        try:
            woke = False
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:  # drain what else arrived meanwhile: one read serves them all
                for _ in conn.notifies(timeout=0):
                    pass
            return woke
        except Exception as exc:
            log.warning("change feed: LISTEN connection lost (%s), polling until it is back", type(exc).__name__)
            with self._lock:
                self._drop()
                self._retry_at = time.monotonic() + 1.0
            return False

    def close(self) -> None:
        with self._lock:
            self._drop()
