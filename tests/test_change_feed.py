"""The change feed (serving/change_feed.py, Store.changes_*) and the index keeper following it: every write
numbered in its transaction, gaps of late commits waited for (real PostgreSQL transactions), the high-water
mark persisted with the index, stored vectors applied without embedding, another embedder's vectors embedded."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from test_store import PG_URL, fresh_store, row

from xinfang.serving.change_feed import FeedCursor
from xinfang.serving.index_keeper import IndexKeeper
from xinfang.serving.matters_store import MatterStore
from xinfang.serving.store import Change, Store

DIM = 8


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class CountingEmbed:
    def __init__(self) -> None:
        self.texts = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return np.vstack([vec(sum(map(ord, t))) for t in texts])


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    s = fresh_store(request.param, tmp_path)
    yield s
    s.close()


def kinds(store: Store, after: int = 0) -> list[tuple[str, str]]:
    return [(k, o) for _, k, o, _ in store.changes_after(after)]


def test_every_write_gets_a_sequence_number(store: Store) -> None:
    assert store.last_change() == 0
    assert store.insert_petition(row("a"), vector=vec(1), fingerprint="fp")[0]
    assert store.insert_petition(row("b"))[0]
    assert not store.insert_petition(row("a", text="别的"))[0]  # a duplicate numbers nothing
    store.add_feedback("b", "repeat_confirm", "wang", target_id="a")
    matters = MatterStore(store)
    ma, mb = matters.assign("a", None, None, None, "t"), matters.assign("b", None, None, None, "t")
    matters.merge(ma, mb, "wang")
    assert store.delete_petition("a", "admin")
    seqs = [c[0] for c in store.changes_after(0)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[-1] == store.last_change()
    assert kinds(store) == [("petition", "a"), ("petition", "b"), ("feedback", "b"), ("matter", ma),
                            ("matter", mb), ("matter", ma), ("matter", mb), ("petition", "a")]
    assert store.index_state(["a", "b"]) == {"b": (None, None)}  # a is gone, b has no stored vector
    assert kinds(store, seqs[-2]) == [("petition", "a")]


class FakeFeed:
    """Committed changes as a PostgreSQL reader may see them: numbers appear out of order."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple] = {}

    def commit(self, *seqs: int) -> None:
        for s in seqs:
            self.rows[s] = (s, "petition", f"p{s}", datetime.now(UTC))

    def changes_after(self, seq: int, limit: int = 1000) -> list[tuple]:
        return [self.rows[s] for s in sorted(self.rows) if s > seq][:limit]

    def changes_in(self, seqs: list[int]) -> list[tuple]:
        return [self.rows[s] for s in sorted(seqs) if s in self.rows]


def test_cursor_waits_for_gaps_then_ages_them_out() -> None:
    feed, cursor = FakeFeed(), FeedCursor(0, gap_seconds=0.3)
    feed.commit(1, 2, 4, 6)
    assert [r[0] for r in cursor.read(feed)] == [1, 2, 4, 6]
    assert set(cursor.gaps) == {3, 5} and cursor.floor == 2 and cursor.top == 6
    assert cursor.read(feed) == []
    feed.commit(3)  # the transaction holding 3 committed late: not skipped
    assert [r[0] for r in cursor.read(feed)] == [3]
    assert cursor.floor == 4 and set(cursor.gaps) == {5}
    time.sleep(0.35)  # 5 never commits (rolled back): it ages out
    feed.commit(7)
    assert [r[0] for r in cursor.read(feed)] == [7]
    assert cursor.gaps == {} and cursor.floor == 7 and cursor.aged_out == 1
    restarted = FeedCursor(4, gap_seconds=0.3)  # from a persisted floor: re-reads after it, skips nothing
    assert [r[0] for r in restarted.read(feed)] == [6, 7] and set(restarted.gaps) == {5}


@pytest.mark.skipif(not PG_URL, reason="needs XINFANG_TEST_POSTGRES_URL")
def test_postgres_late_commit_is_not_skipped(tmp_path) -> None:
    store = fresh_store("postgres", tmp_path)
    try:
        slow = store.session()
        slow.add(Change(kind="petition", object_id="slow"))
        slow.flush()  # takes its number now, commits later
        store.insert_petition(row("fast"))
        cursor = FeedCursor(0, gap_seconds=30)
        first = cursor.read(store)
        assert [r[2] for r in first] == ["fast"] and len(cursor.gaps) == 1 and cursor.floor == 0
        slow.commit()
        slow.close()
        assert [r[2] for r in cursor.read(store)] == ["slow"]
        assert cursor.gaps == {} and cursor.floor == store.last_change()
    finally:
        store.close()


def keeper_for(path, store: Store, fingerprint: str = "fp") -> IndexKeeper:
    return IndexKeeper(path, DIM, fingerprint, store, save_every=1000, save_seconds=60, poll_seconds=0.05)


def test_keeper_applies_feed_from_its_mark(store: Store, tmp_path, caplog) -> None:
    embed = CountingEmbed()
    for i in range(5):
        store.insert_petition(row(f"p{i}"), vector=vec(i), fingerprint="fp")
    keeper = keeper_for(tmp_path / "b", store)
    stats = keeper.open(embed)
    assert stats["changes_applied"] == 5 and stats["reconciled"] is False and embed.texts == 0
    np.testing.assert_allclose(keeper.index.vector("p3").reshape(-1), vec(3))
    keeper.start_sync(embed)
    try:
        store.insert_petition(row("p5"), vector=vec(5), fingerprint="fp")  # written by another replica
        store.delete_petition("p0", "admin")
        deadline = time.monotonic() + 10
        while (keeper.index.contains("p0") or not keeper.index.contains("p5")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert keeper.index.contains("p5") and not keeper.index.contains("p0")
        assert keeper.version == store.last_change() and keeper.lag_changes == 0 and keeper.lag_seconds() == 0
    finally:
        keeper.close()
    # restart: only the changes after the saved mark are read
    store.insert_petition(row("p6"), vector=vec(6), fingerprint="fp")
    again = keeper_for(tmp_path / "b", store)
    with caplog.at_level(logging.INFO, logger="xinfang.serving.index_keeper"):
        stats = again.open(embed)
    again.close()
    assert stats["loaded"] == 5 and stats["changes_applied"] == 1 and stats["from_change"] == store.last_change() - 1
    assert any(getattr(r, "changes_applied", None) == 1 for r in caplog.records)
    assert sorted(again.index.ids()) == [f"p{i}" for i in range(1, 7)] and embed.texts == 0


def test_other_embedder_vectors_are_embedded_here(store: Store, tmp_path) -> None:
    embed = CountingEmbed()
    store.insert_petition(row("x", text="甲地停车收费"), vector=vec(9), fingerprint="other-encoder")
    store.insert_petition(row("y", text="乙地噪音"))  # stored before vectors were: no vector at all
    keeper = keeper_for(tmp_path / "c", store)
    keeper.open(embed)
    keeper.close()
    assert sorted(keeper.index.ids()) == ["x", "y"] and embed.texts == 2 and keeper.embedded == 2
    assert not np.allclose(keeper.index.vector("x").reshape(-1), vec(9))  # not the other embedder's vector


def test_count_check_repairs_a_write_that_bypassed_the_feed(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        store.insert_petition(row("a"), vector=vec(1), fingerprint="fp")
        keeper = keeper_for(tmp_path / "i", store)
        keeper.open(CountingEmbed())
        keeper.close()
        from xinfang.serving.store import Petition

        with store.session() as s, s.begin():  # e.g. a row restored by hand, no change row
            s.add(Petition(**row("b")))
        again = keeper_for(tmp_path / "i", store)
        stats = again.open(CountingEmbed())
        again.close()
        assert stats["reconciled"] is True and sorted(again.index.ids()) == ["a", "b"]
    finally:
        store.close()
