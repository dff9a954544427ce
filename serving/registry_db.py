"""The model registry's database access (`models.registry.RegistryStore`) on the service store's engine, and
`open_registry`, the one way the CLI, the service and the benchmarks get a Registry.

Every change first updates the single `registry_state` row: a row lock on PostgreSQL, the write lock on SQLite,
so concurrent writers (any process, any machine) serialise; its `revision` counts the changes. Blobs are
written in chunks of `CHUNK_BYTES` and their `registry_blobs` row last, so a blob with a row is complete.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from xinfang.models.registry import AuditSink, Registry, RegistryError, RegistryStore
from xinfang.serving.store import Store
from xinfang.serving.tables import (
    AuditEntry,
    RegistryBlob,
    RegistryBlobChunk,
    RegistryEvent,
    RegistryState,
    RegistryTask,
    RegistryVersion,
    utcnow,
)

CHUNK_BYTES = 4 * 1024 * 1024


class DbRegistryStore(RegistryStore, AuditSink):
    """The registry tables of `store` (SQLite or PostgreSQL), and its audit sink: an audit row written during a
    registry change goes into that change's transaction (a promotion that cannot be audited does not happen).
    Audit rows carry ids only: the version, ``task:<task>`` and ``previous:<version>``."""

    def __init__(self, store: Store):
        self.engine = store.engine
        self.description = f"store:{store.safe_url}"
        self._local = threading.local()

    def record(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        ids = [target, f"task:{details.get('task')}"]
        if details.get("previous"):
            ids.append(f"previous:{details['previous']}")
        row = {"who": actor, "action": action, "object_ids": ids, "created_at": utcnow()}
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.execute(insert(AuditEntry).values(**row))
            return
        with self.engine.begin() as own:
            own.execute(insert(AuditEntry).values(**row))

    # -- the document
    @staticmethod
    def _read(conn: Connection) -> dict[str, Any]:
        versions = {v: dict(r) for v, r in conn.execute(select(RegistryVersion.version, RegistryVersion.record))}
        tasks = {t: {**dict(s), "promoted": p}
                 for t, p, s in conn.execute(select(RegistryTask.task, RegistryTask.promoted, RegistryTask.state))}
        events = [dict(e) for (e,) in conn.execute(select(RegistryEvent.event).order_by(RegistryEvent.id))]
        return {"versions": versions, "tasks": tasks, "events": events}

    def read(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._read(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        with self.engine.begin() as conn:
            bumped = conn.execute(update(RegistryState).where(RegistryState.id == 1).values(
                revision=RegistryState.revision + 1, updated_at=utcnow()))
            if bumped.rowcount == 0:  # a registry never written: the first writer creates the row (and holds it)
                conn.execute(insert(RegistryState).values(id=1, revision=1, updated_at=utcnow()))
            data = self._read(conn)
            before = copy.deepcopy(data)
            self._local.conn = conn
            try:
                yield data
            finally:
                self._local.conn = None
            self._write(conn, before, data)

    @staticmethod
    def _write(conn: Connection, before: dict[str, Any], data: dict[str, Any]) -> None:
        for version, record in data["versions"].items():
            if version not in before["versions"]:
                conn.execute(insert(RegistryVersion).values(version=version, task=record["task"], record=record))
            elif record != before["versions"][version]:
                conn.execute(update(RegistryVersion).where(RegistryVersion.version == version).values(record=record))
        for task, state in data["tasks"].items():
            promoted = state.get("promoted")
            rest = {k: v for k, v in state.items() if k != "promoted"}
            if task not in before["tasks"]:
                conn.execute(insert(RegistryTask).values(task=task, promoted=promoted, state=rest))
            elif state != before["tasks"][task]:
                conn.execute(update(RegistryTask).where(RegistryTask.task == task).values(promoted=promoted,
                                                                                          state=rest))
        new_events = data["events"][len(before["events"]):]
        if new_events:
            conn.execute(insert(RegistryEvent), [{"event": e} for e in new_events])

    def promoted(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(RegistryTask.task, RegistryTask.promoted)
                                .where(RegistryTask.promoted.is_not(None)))
            return {t: p for t, p in rows}

    def revision(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(RegistryState.revision), 0))).scalar_one())

    # -- blobs
    def has_blob(self, sha256: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(RegistryBlob.sha256).where(RegistryBlob.sha256 == sha256)).first() is not None

    def put_blob(self, sha256: str, path: Path) -> None:
        if self.has_blob(sha256):
            return
        size, seq = 0, 0
        try:
            with self.engine.begin() as conn, open(path, "rb") as fh:
                conn.execute(delete(RegistryBlobChunk).where(RegistryBlobChunk.sha256 == sha256))  # a torn try
                while chunk := fh.read(CHUNK_BYTES):
                    conn.execute(insert(RegistryBlobChunk).values(sha256=sha256, seq=seq, data=chunk))
                    size, seq = size + len(chunk), seq + 1
                conn.execute(insert(RegistryBlob).values(sha256=sha256, size=size, chunks=seq, created_at=utcnow()))
        except IntegrityError:  # stored by a concurrent writer meanwhile
            if not self.has_blob(sha256):
                raise

    def read_blob(self, sha256: str, out: IO[bytes]) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(select(RegistryBlob.chunks).where(RegistryBlob.sha256 == sha256)).first()
            if row is None:
                raise RegistryError(f"no stored blob {sha256[:12]} in {self.description}")
            for seq in range(row.chunks):  # one chunk in memory at a time
                data = conn.execute(select(RegistryBlobChunk.data).where(
                    RegistryBlobChunk.sha256 == sha256, RegistryBlobChunk.seq == seq)).scalar_one_or_none()
                if data is None:
                    raise RegistryError(f"stored blob {sha256[:12]} lacks chunk {seq} (corrupt)")
                out.write(bytes(data))


def open_registry(cache_dir: Path | None = None, database_url: str | None = None, store: Store | None = None,
                  actor: str | None = None) -> Registry:
    """The registry in `store` (or the store at `database_url`; default XINFANG_DATABASE_URL, else
    ``<cache_dir>/../xinfang.db``: the service's store in the same data dir), audited in its audit log,
    extracting bundles into `cache_dir` (default ``<data dir>/registry``)."""
    from xinfang.settings import get_settings, load_settings

    root = Path(cache_dir) if cache_dir else get_settings().data_dir / "registry"
    if store is None:
        url = database_url or load_settings().store.database_url or f"sqlite:///{root.parent / 'xinfang.db'}"
        store = Store(url)
    db = DbRegistryStore(store)
    return Registry(db, root, audit=db, actor=actor)
