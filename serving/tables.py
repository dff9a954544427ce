"""The store's tables, all on one `Base`: petitions (and their vectors), feedback, API keys, the audit log, the
matters, the change feed and the model registry.

The schema is owned by the migrations in serving/migrations/ (`xinfang db upgrade`); a change here needs a new
revision there (tests/test_migrations.py checks that the migrated schema equals these definitions).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes stored as UTC on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Petition(Base):
    __tablename__ = "petitions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    petitioner: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    channel: Mapped[str | None] = mapped_column(String(64))
    text_hash: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the normalized text
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical request body
    labels: Mapped[dict] = mapped_column(JSON)  # topic/department/needs_review as classified
    topic: Mapped[str | None] = mapped_column(String(200), index=True)
    department: Mapped[str | None] = mapped_column(String(200), index=True)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)  # likely repeats found at intake
    models: Mapped[dict] = mapped_column(JSON)  # model name/version used
    response: Mapped[dict] = mapped_column(JSON)  # the 201 answer, replayed on an identical retry
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    petition_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(128), index=True)
    label: Mapped[str | None] = mapped_column(String(200))
    who: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    who: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50), index=True)
    object_ids: Mapped[list] = mapped_column(JSON)  # ids only: petitions, key names, model versions
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Matter(Base):
    __tablename__ = "matters"
    id: Mapped[str] = mapped_column(String(140), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class MatterMember(Base):
    __tablename__ = "matter_members"
    petition_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    matter_id: Mapped[str] = mapped_column(String(140), index=True)
    via: Mapped[str | None] = mapped_column(String(128))  # the petition it joined through
    probability: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CannotLink(Base):
    __tablename__ = "matter_cannot_links"
    a: Mapped[str] = mapped_column(String(128), primary_key=True)
    b: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    who: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PetitionVector(Base):
    """The repeat-search vector of a petition (float32 bytes), written in the petition's own transaction, with
    the fingerprint of the embedder that made it: a replica with the same fingerprint indexes it as is."""

    __tablename__ = "petition_vectors"
    petition_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


# SQLite: INTEGER PRIMARY KEY AUTOINCREMENT (a seq is never reused); PostgreSQL: a BIGINT identity/sequence.
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class Change(Base):
    """The change feed: one row per write (petition insert/delete, feedback, matter change), numbered in the
    writing transaction. `kind` is `petition`, `feedback` or `matter`; `object_id` the petition or matter id."""

    __tablename__ = "changes"
    __table_args__ = {"sqlite_autoincrement": True}
    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(140))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# ------------------------------------------------------------------ model registry (models/registry.py's format)
class RegistryState(Base):
    """One row: the registry's write lock (every change updates it first) and a revision replicas can poll."""

    __tablename__ = "registry_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegistryVersion(Base):
    __tablename__ = "registry_versions"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(32), index=True)
    record: Mapped[dict] = mapped_column(JSON)  # the version record (metrics, bundle sha256, parent, gate...)


class RegistryTask(Base):
    __tablename__ = "registry_tasks"
    task: Mapped[str] = mapped_column(String(32), primary_key=True)
    promoted: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[dict] = mapped_column(JSON)  # promotion stack, next version number, evaluation set


class RegistryEvent(Base):
    __tablename__ = "registry_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event: Mapped[dict] = mapped_column(JSON)  # at, action, task, version, previous, by, gate


class RegistryBlob(Base):
    """A bundle archive or evaluation file, content-addressed: its chunks hold the bytes whose sha256 it is."""

    __tablename__ = "registry_blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegistryBlobChunk(Base):
    __tablename__ = "registry_blob_chunks"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
