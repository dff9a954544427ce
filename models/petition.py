"""The petition as the repeat search, the matters and the service read it: one typed value, normalised once.

    Petition(id, title, text, petitioner=None, received_at=None, channel=None, row=None)
    p.normalized          # petition_text(title, text): what is embedded, re-ranked and hashed
    p.norm_title, p.norm_text   # the normalised fields the pair features read
    Petition.from_record(record)  # a loaded record, a stored row or an API body (dict)
    as_petition(value)    # a Petition as is, a dict through from_record
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from xinfang.errors import DataError
from xinfang.models.normalize import join_normalized, normalize_text
from xinfang.records import parse_time


@lru_cache(maxsize=65536)  # stored candidates come back query after query: each is normalised once
def _normalise(title: str | None, text: str | None) -> tuple[str, str, str]:
    t, x = normalize_text(title), normalize_text(text)
    return t, x, join_normalized(t, x)


def _clean(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _person(record: Mapping[str, Any]) -> str | None:
    """`petitioner`, else `user` (the contest files' 留言用户), stripped; None when unknown."""
    v = record.get("petitioner") if record.get("petitioner") not in (None, "") else record.get("user")
    return str(v).strip() or None if v not in (None, "") else None


@dataclass(frozen=True, slots=True)
class Petition:
    id: str | None
    title: str | None
    text: str | None
    petitioner: str | None = None
    received_at: datetime | None = None
    channel: str | None = None
    row: int | None = field(default=None, compare=False)  # source row, for error messages
    norm_title: str = field(init=False, repr=False, compare=False)
    norm_text: str = field(init=False, repr=False, compare=False)
    normalized: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t, x, joined = _normalise(self.title, self.text)
        object.__setattr__(self, "norm_title", t)
        object.__setattr__(self, "norm_text", x)
        object.__setattr__(self, "normalized", joined)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], default_time: datetime | None = None) -> Petition:
        """From a dict: id, title, text, petitioner (or user), time or received_at (text or datetime), channel,
        _row; `default_time` when it has no time (a stored row's created_at)."""
        received = parse_time(record.get("time") or record.get("received_at")) or default_time
        return cls(id=_clean(record.get("id")), title=record.get("title"), text=record.get("text"),
                   petitioner=_person(record),
                   received_at=received, channel=_clean(record.get("channel")), row=record.get("_row"))

    def require_text(self) -> str:
        """The normalised text; DataError naming the petition (and its row) when nothing is left of it."""
        if not self.normalized.strip():
            where = f" (row {self.row})" if self.row else ""
            raise DataError(f"petition {self.id!r}{where}: empty title and text, nothing to compare")
        return self.normalized

    def stored(self) -> dict[str, Any]:
        """The JSON fields an index directory keeps for it (petitions.jsonl)."""
        t = self.received_at
        if t is not None and t.tzinfo is not None:
            t = t.astimezone(UTC).replace(tzinfo=None)
        return {"id": self.id, "title": self.title, "text": self.text, "petitioner": self.petitioner,
                "time": t.isoformat(sep=" ") if t else None}


def as_petition(value: Petition | Mapping[str, Any]) -> Petition:
    return value if isinstance(value, Petition) else Petition.from_record(value)


def days_between(a: datetime | None, b: datetime | None) -> float | None:
    """|a - b| in days; aware times are compared in UTC, naive ones as they are; None when either is unknown."""
    if a is None or b is None:
        return None
    a, b = (t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t for t in (a, b))
    return abs((a - b).total_seconds()) / 86400.0
