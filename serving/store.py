"""The service's store (source of truth): petitions, feedback, API keys and the audit log, via SQLAlchemy 2.0.

SQLite (default, `<data dir>/xinfang.db`) runs in WAL mode with `synchronous=FULL`: a petition is acknowledged
only after its transaction is committed, and FULL fsyncs the WAL on every commit, so an acknowledged petition
survives a process kill *and* an OS crash or power loss (NORMAL would survive a kill -9 but may lose the last
commits on power loss). The cost is one fsync per write transaction (about a millisecond on SSD).
PostgreSQL is used when the URL says so (`postgresql+psycopg://user@host:port/db`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, delete, event, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from xinfang.errors import XinfangError
from xinfang.models.feedback import FEEDBACK_KINDS
from xinfang.serving.roles import ROLES
from xinfang.serving.tables import (  # noqa: F401  (re-exported: the store's tables)
    ApiKey,
    AuditEntry,
    Base,
    CannotLink,
    Change,
    Feedback,
    Matter,
    MatterMember,
    Petition,
    PetitionVector,
    UTCDateTime,
    utcnow,
)

KEY_PREFIX = "xf_"
KEY_GRACE_SECONDS = 300.0


class StoreError(XinfangError):
    """The store cannot be opened or a write violates its rules (the message says which)."""


class StoreUnavailable(StoreError):
    """The database does not answer (down, restarting, network): nothing was written; retry later."""

    def __init__(self, where: str) -> None:
        super().__init__(f"the store ({where}) is unreachable: nothing was written; retry (the service "
                         "reconnects by itself)")


class UnknownTarget(StoreError):
    """A feedback row names a target petition that is not stored."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def request_hash(body: dict) -> str:
    """sha256 of a canonical JSON form of a request body (for idempotent retries)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def record_change(s: Session, kind: str, object_id: str) -> None:
    """Number a write in the change feed, inside the writing transaction (`changes`, see tables.Change)."""
    s.add(Change(kind=kind, object_id=str(object_id)))


def petition_dict(p: Petition) -> dict:
    return {
        "id": p.id, "title": p.title, "text": p.text, "petitioner": p.petitioner, "received_at": p.received_at,
        "channel": p.channel, "text_hash": p.text_hash, "labels": p.labels, "topic": p.topic,
        "department": p.department, "needs_review": p.needs_review, "repeat_count": p.repeat_count,
        "models": p.models, "created_at": p.created_at,
    }


def feedback_dict(f: Feedback) -> dict:
    return {"id": f.id, "petition_id": f.petition_id, "kind": f.kind, "target_id": f.target_id,
            "label": f.label, "who": f.who, "created_at": f.created_at}


def vector_bytes(vector: Any) -> bytes:
    import numpy as np

    return np.ascontiguousarray(vector, dtype="<f4").reshape(-1).tobytes()


class Store:
    """Thread-safe access to the database (one short transaction per call)."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = normalize_url(url)
        # hide_parameters: an error message never carries the bound values (petition text, petitioner)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except Exception as exc:  # bad URL or missing driver
            raise StoreError(f"cannot open database {self.safe_url}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            path = self.engine.url.database
            if path and path != ":memory:":
                from pathlib import Path

                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._verified: dict[str, tuple[str, str, float]] = {}  # key sha256 -> (name, role, last verified)
        if create:
            from xinfang.serving.schema import check

            try:
                check(self.engine, self.safe_url)
            except OperationalError as exc:
                raise StoreError(f"cannot open database {self.safe_url}: {exc.orig}") from exc

    @property
    def safe_url(self) -> str:
        """The URL without its password (for logs and messages)."""
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<database>"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    def session(self) -> Session:
        return self._session()

    # ------------------------------------------------------------------ petitions
    def insert_petition(self, row: dict, also: Callable[[Session], None] | None = None,
                        vector: Any = None, fingerprint: str | None = None) -> tuple[bool, dict]:
        """Insert and commit; returns (True, row) or, when the id exists, (False, stored row incl. hashes).
        `also(session)` adds rows that belong with the petition (its matter membership) to the same
        transaction, so both are committed together or not at all; so are its `vector` (float32, made by the
        embedder of `fingerprint`) and its change-feed row."""
        with self.session() as s:
            s.add(Petition(**row))
            try:
                s.flush()  # the id's uniqueness first: a duplicate numbers no change
                if vector is not None and fingerprint:
                    s.add(PetitionVector(petition_id=row["id"], fingerprint=fingerprint,
                                         vector=vector_bytes(vector)))
                if also is not None:
                    also(s)
                record_change(s, "petition", row["id"])
                s.commit()
                return True, row
            except IntegrityError:
                s.rollback()
        existing = self.get_petition_row(row["id"])
        if existing is None:  # deleted in between: retry once
            return self.insert_petition(row, also, vector, fingerprint)
        return False, existing

    def get_petition_row(self, pid: str) -> dict | None:
        """The stored row with its request hash and stored 201 answer."""
        with self.session() as s:
            p = s.get(Petition, pid)
            if p is None:
                return None
            out = petition_dict(p)
            out["request_hash"], out["response"] = p.request_hash, p.response
            return out

    def get_petition(self, pid: str) -> dict | None:
        with self.session() as s:
            p = s.get(Petition, pid)
            return petition_dict(p) if p else None

    def get_petitions(self, ids: list[str]) -> dict[str, dict]:
        if not ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(Petition).where(Petition.id.in_(list(ids)))).all()
            return {p.id: petition_dict(p) for p in rows}

    def list_petitions(self, *, topic: str | None = None, department: str | None = None,
                       needs_review: bool | None = None, has_repeats: bool | None = None,
                       since: datetime | None = None, until: datetime | None = None,
                       limit: int = 50, offset: int = 0, legal_channel: str | None = None) -> tuple[list[dict], int]:
        """Newest first, filtered; returns (page, total matching). `legal_channel` is the classified channel
        (labels.channel.label), not the intake `channel` the petition arrived by."""
        conds = []
        if legal_channel is not None:
            conds.append(Petition.labels["channel"]["label"].as_string() == legal_channel)
        if topic is not None:
            conds.append(Petition.topic == topic)
        if department is not None:
            conds.append(Petition.department == department)
        if needs_review is not None:
            conds.append(Petition.needs_review.is_(needs_review))
        if has_repeats is not None:
            conds.append(Petition.repeat_count > 0 if has_repeats else Petition.repeat_count == 0)
        if since is not None:
            conds.append(Petition.created_at >= since)
        if until is not None:
            conds.append(Petition.created_at < until)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(Petition).where(*conds)) or 0
            rows = s.scalars(select(Petition).where(*conds)
                             .order_by(Petition.created_at.desc(), Petition.id.desc())
                             .limit(limit).offset(offset)).all()
            return [petition_dict(p) for p in rows], int(total)

    def iter_ids(self, chunk: int = 10_000) -> Iterator[str]:
        with self.session() as s:
            yield from s.scalars(select(Petition.id).execution_options(yield_per=chunk))

    def count_petitions(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Petition)) or 0)

    def texts(self, ids: list[str]) -> list[tuple[str, str | None, str]]:
        """(id, title, text) of the ids that exist, for (re)indexing."""
        with self.session() as s:
            rows = s.execute(select(Petition.id, Petition.title, Petition.text).where(Petition.id.in_(ids)))
            return [(r[0], r[1], r[2]) for r in rows]

    def delete_petition(self, pid: str, who: str) -> bool:
        """Delete a petition and the feedback that names it, with an audit row, in one transaction."""
        with self.session() as s, s.begin():
            if s.get(Petition, pid) is None:
                return False
            s.execute(delete(Feedback).where(or_(Feedback.petition_id == pid, Feedback.target_id == pid)))
            s.execute(delete(PetitionVector).where(PetitionVector.petition_id == pid))
            s.execute(delete(Petition).where(Petition.id == pid))
            s.add(AuditEntry(who=who, action="petition.delete", object_ids=[pid]))
            record_change(s, "petition", pid)
        return True

    # ------------------------------------------------------------------ change feed
    def changes_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str, datetime]]:
        """(seq, kind, object_id, created_at) of the committed changes after `seq`, oldest first (an index
        range scan: its cost does not grow with the store)."""
        with self.engine.connect() as conn:  # a plain connection: this runs on every idle tick
            rows = conn.execute(select(Change.seq, Change.kind, Change.object_id, Change.created_at)
                                .where(Change.seq > seq).order_by(Change.seq).limit(limit))
            return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def changes_in(self, seqs: list[int]) -> list[tuple[int, str, str, datetime]]:
        """The changes among `seqs` that are committed now (the gaps a reader waits for)."""
        if not seqs:
            return []
        with self.session() as s:
            rows = s.execute(select(Change.seq, Change.kind, Change.object_id, Change.created_at)
                             .where(Change.seq.in_(seqs)).order_by(Change.seq))
            return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def last_change(self) -> int:
        """The highest committed sequence number (0 for an empty feed)."""
        with self.session() as s:
            return int(s.scalar(select(func.max(Change.seq))) or 0)

    def index_state(self, ids: list[str]) -> dict[str, tuple[str | None, bytes | None]]:
        """{id: (vector fingerprint, vector bytes)} of the ids stored now; (None, None) when no vector is stored
        (an absent id is deleted)."""
        if not ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(Petition.id, PetitionVector.fingerprint, PetitionVector.vector)
                             .outerjoin(PetitionVector, PetitionVector.petition_id == Petition.id)
                             .where(Petition.id.in_(ids)))
            return {r[0]: (r[1], r[2]) for r in rows}

    # ------------------------------------------------------------------ feedback
    def add_feedback(self, petition_id: str, kind: str, who: str, target_id: str | None = None,
                     label: str | None = None) -> dict | None:
        """Store one feedback row and its audit row; None when the petition does not exist."""
        if kind not in FEEDBACK_KINDS:
            raise StoreError(f"feedback kind must be one of {', '.join(FEEDBACK_KINDS)}, got {kind!r}")
        with self.session() as s, s.begin():
            if s.get(Petition, petition_id) is None:
                return None
            if target_id is not None and s.get(Petition, target_id) is None:
                raise UnknownTarget(f"target_id {target_id!r}: no such petition")
            fb = Feedback(petition_id=petition_id, kind=kind, target_id=target_id, label=label, who=who)
            s.add(fb)
            s.flush()
            ids = [petition_id] + ([target_id] if target_id else [])
            s.add(AuditEntry(who=who, action=f"feedback.{kind}", object_ids=ids + [f"feedback:{fb.id}"]))
            record_change(s, "feedback", petition_id)
            return feedback_dict(fb)

    def list_feedback(self, petition_id: str | None = None, since: datetime | None = None) -> list[dict]:
        conds = []
        if petition_id is not None:
            conds.append(or_(Feedback.petition_id == petition_id, Feedback.target_id == petition_id))
        if since is not None:
            conds.append(Feedback.created_at >= since)
        with self.session() as s:
            rows = s.scalars(select(Feedback).where(*conds).order_by(Feedback.id)).all()
            return [feedback_dict(f) for f in rows]

    # ------------------------------------------------------------------ keys
    def create_key(self, name: str, role: str, who: str = "cli") -> str:
        """Create a key; returns the plaintext key (shown once; only its sha256 is stored)."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        name = name.strip()
        if not name or len(name) > 100:
            raise StoreError("key name must be 1..100 characters")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.session() as s:
            s.add(ApiKey(name=name, role=role, key_hash=hash_key(key)))
            s.add(AuditEntry(who=who, action="key.create", object_ids=[name]))
            try:
                s.commit()
            except IntegrityError as exc:
                raise StoreError(f"a key named {name!r} already exists (names stay reserved after revoke)") from exc
        return key

    def list_keys(self) -> list[dict]:
        with self.session() as s:
            return [{"name": k.name, "role": k.role, "created_at": k.created_at, "revoked_at": k.revoked_at}
                    for k in s.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke_key(self, name: str, who: str = "cli") -> bool:
        with self.session() as s, s.begin():
            res = s.execute(update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
                            .values(revoked_at=utcnow()))
            if not res.rowcount:
                return False
            s.add(AuditEntry(who=who, action="key.revoke", object_ids=[name]))
        return True

    def authenticate(self, key: str) -> tuple[str, str] | None:
        """(name, role) of an active key, else None. While the database is unreachable a key this process
        verified within `KEY_GRACE_SECONDS` still passes (classification keeps working through an outage; a
        revocation takes effect as soon as the database answers again); others raise StoreUnavailable."""
        digest = hash_key(key)
        try:
            with self.session() as s:
                row = s.execute(select(ApiKey.name, ApiKey.role).where(
                    ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))).first()
        except (OperationalError, InterfaceError) as exc:
            seen = self._verified.get(digest)
            if seen is not None and time.monotonic() - seen[2] <= KEY_GRACE_SECONDS:
                return seen[0], seen[1]
            raise StoreUnavailable(self.safe_url) from exc
        if row is None:
            self._verified.pop(digest, None)
            return None
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[digest] = (row[0], row[1], time.monotonic())
        return row[0], row[1]

    # ------------------------------------------------------------------ audit
    def audit(self, who: str, action: str, object_ids: list[str]) -> None:
        with self.session() as s, s.begin():
            s.add(AuditEntry(who=who, action=action, object_ids=[str(i) for i in object_ids]))

    def list_audit(self, action: str | None = None, limit: int = 100) -> list[dict]:
        with self.session() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if action:
                q = q.where(AuditEntry.action == action)
            return [{"id": a.id, "who": a.who, "action": a.action, "object_ids": a.object_ids,
                     "created_at": a.created_at} for a in s.scalars(q)]
