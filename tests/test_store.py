"""The service store (xinfang.serving.store) on SQLite and, when XINFANG_TEST_POSTGRES_URL is set (CI starts one
with scripts/start-postgres.sh), on a real PostgreSQL server."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

import pytest

from xinfang.serving.store import Store, StoreError, UnknownTarget, request_hash

PG_URL = os.environ.get("XINFANG_TEST_POSTGRES_URL")
PG_SKIP = ("PostgreSQL tests skipped: XINFANG_TEST_POSTGRES_URL is not set "
           "(start a server with: export XINFANG_TEST_POSTGRES_URL=$(bash scripts/start-postgres.sh))")


def fresh_store(backend: str, tmp_path) -> Store:
    if backend == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'store.db'}")
    if not PG_URL:
        pytest.skip(PG_SKIP)
    from xinfang.serving.schema import drop_everything

    old = Store(PG_URL, create=False)
    drop_everything(old.engine)
    old.close()
    return Store(PG_URL)  # a brand-new database: created at the migrations' head


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    s = fresh_store(request.param, tmp_path)
    yield s
    s.close()


def row(pid: str, text: str = "小区停车收费不合理", topic: str = "城乡建设", review: bool = False,
        repeats: int = 0, created: datetime | None = None, **extra) -> dict:
    labels = {"topic": {"label": topic, "score": 0.9, "top": []}, "department": None, "needs_review": review}
    body = {"id": pid, "text": text}
    return {"id": pid, "title": extra.get("title"), "text": text, "petitioner": extra.get("petitioner"),
            "received_at": extra.get("received_at"), "channel": None, "text_hash": request_hash({"t": text}),
            "request_hash": request_hash(body), "labels": labels, "topic": topic, "department": "住建局",
            "needs_review": review, "repeat_count": repeats, "models": {"topic": {"name": "t", "version": "1"}},
            "response": {"id": pid, "ok": True}, "created_at": created or datetime.now(UTC)}


def test_insert_get_and_duplicate(store: Store) -> None:
    r = row("p1", text="含表情😀和繁體字的文本", petitioner="王五",
            received_at=datetime(2024, 5, 1, 8, 0, tzinfo=UTC) + timedelta(hours=0))
    created, _ = store.insert_petition(r)
    assert created
    got = store.get_petition("p1")
    assert got["text"] == "含表情😀和繁體字的文本" and got["petitioner"] == "王五"
    assert got["received_at"] == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert got["created_at"].tzinfo is not None and got["labels"]["topic"]["label"] == "城乡建设"
    created, existing = store.insert_petition(row("p1", text="另一个"))
    assert not created and existing["request_hash"] == r["request_hash"] and existing["response"] == {"id": "p1", "ok": True}
    assert store.get_petition("nope") is None
    assert set(store.get_petitions(["p1", "nope"])) == {"p1"}
    assert store.texts(["p1"]) == [("p1", None, "含表情😀和繁體字的文本")]


def test_concurrent_inserts_of_one_id(store: Store) -> None:
    results: list[bool] = []

    def insert() -> None:
        results.append(store.insert_petition(row("same"))[0])

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.count_petitions() == 1


def test_list_filters_and_order(store: Store) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(7):
        store.insert_petition(row(f"p{i}", topic="A" if i % 2 else "B", review=i % 3 == 0, repeats=i % 2,
                                  created=t0 + timedelta(minutes=i)))
    items, total = store.list_petitions(limit=3)
    assert total == 7 and [p["id"] for p in items] == ["p6", "p5", "p4"]
    items, _ = store.list_petitions(limit=3, offset=3)
    assert [p["id"] for p in items] == ["p3", "p2", "p1"]
    assert {p["id"] for p in store.list_petitions(topic="A")[0]} == {"p1", "p3", "p5"}
    assert {p["id"] for p in store.list_petitions(needs_review=True)[0]} == {"p0", "p3", "p6"}
    assert {p["id"] for p in store.list_petitions(has_repeats=True)[0]} == {"p1", "p3", "p5"}
    items, total = store.list_petitions(since=t0 + timedelta(minutes=2), until=t0 + timedelta(minutes=4))
    assert total == 2 and {p["id"] for p in items} == {"p2", "p3"}
    assert sorted(store.iter_ids(chunk=2)) == [f"p{i}" for i in range(7)]


def test_feedback_delete_and_audit(store: Store) -> None:
    store.insert_petition(row("a"))
    store.insert_petition(row("b"))
    fb = store.add_feedback("a", "repeat_confirm", "cw", target_id="b")
    assert fb["petition_id"] == "a" and fb["target_id"] == "b" and fb["who"] == "cw"
    store.add_feedback("b", "topic_correction", "cw", label="城乡建设")
    assert store.add_feedback("zzz", "topic_correction", "cw", label="x") is None
    with pytest.raises(UnknownTarget):
        store.add_feedback("a", "repeat_reject", "cw", target_id="zzz")
    with pytest.raises(StoreError):
        store.add_feedback("a", "maybe", "cw")
    assert [f["kind"] for f in store.list_feedback(petition_id="b")] == ["repeat_confirm", "topic_correction"]
    assert len(store.list_feedback(since=datetime.now(UTC) + timedelta(days=1))) == 0
    assert store.delete_petition("b", who="admin1")
    assert not store.delete_petition("b", who="admin1")
    assert store.list_feedback() == []  # feedback naming the deleted petition went with it
    audit = store.list_audit()
    assert audit[0]["action"] == "petition.delete" and audit[0]["object_ids"] == ["b"] and audit[0]["who"] == "admin1"
    assert {a["action"] for a in audit} >= {"feedback.repeat_confirm", "feedback.topic_correction"}


def test_keys(store: Store) -> None:
    key = store.create_key("alice", "caseworker", who="root")
    assert key.startswith("xf_") and len(key) > 40
    assert store.authenticate(key) == ("alice", "caseworker")
    assert store.authenticate(key + "x") is None
    with pytest.raises(StoreError):
        store.create_key("alice", "admin")
    with pytest.raises(StoreError):
        store.create_key("bob", "superuser")
    assert [k["name"] for k in store.list_keys()] == ["alice"]
    assert store.revoke_key("alice", who="root") and not store.revoke_key("alice")
    assert store.authenticate(key) is None
    actions = [(a["action"], a["object_ids"]) for a in store.list_audit()]
    assert ("key.revoke", ["alice"]) in actions and ("key.create", ["alice"]) in actions


def test_sqlite_is_wal_and_full_sync(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_bad_url_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(StoreError, match="cannot open database"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
