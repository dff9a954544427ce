"""Audit sinks the CLI and the service hand to the model registry: the service store's audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xinfang.models.registry import AuditSink, JsonlAudit
from xinfang.serving.store import Store
from xinfang.settings import load_settings

__all__ = ["StoreAudit", "default_audit"]


class StoreAudit(AuditSink):
    """The service's `audit_log` table through `Store.audit(who, action, object_ids)`: ids only, never text.

    The object ids are the version plus ``task:<task>`` and, where there is one, ``previous:<version>``;
    the full event (gate figures, reasons) is kept in registry.json's ``events``.
    """

    def __init__(self, database_url: str):
        self.store = Store(database_url)
        self.description = f"store:{self.store.safe_url}"

    def record(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        ids = [target, f"task:{details.get('task')}"]
        if details.get("previous"):
            ids.append(f"previous:{details['previous']}")
        self.store.audit(who=actor, action=action, object_ids=ids)


def default_audit(root: Path, database_url: str | None = None) -> AuditSink:
    """The store's audit log when a store is configured (URL, XINFANG_DATABASE_URL, or the service's default
    ``<data dir>/xinfang.db`` next to the registry) and importable; else ``<registry>/audit.jsonl``."""
    url = database_url or load_settings().store.database_url
    default_db = root.parent / "xinfang.db"  # the service's default SQLite store in the same data dir
    if not url and default_db.exists():
        url = f"sqlite:///{default_db}"
    if url:
        return StoreAudit(url)
    return JsonlAudit(root / "audit.jsonl")
