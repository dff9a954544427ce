"""The typed petition, the one repeat search, and the shared helpers (atomic writes, hashes, union-find)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from xinfang.errors import DataError
from xinfang.models.disjoint_sets import DisjointSets, pair_groups
from xinfang.models.normalize import petition_text
from xinfang.models.petition import Petition, as_petition, days_between
from xinfang.models.repeat_features import pair_features
from xinfang.models.repeat_ranking import rerank
from xinfang.models.repeat_scorer import RepeatScorer
from xinfang.models.repeats import PetitionStore, search_candidates
from xinfang.models.vector_index import VectorIndex

A = {"id": "a", "title": "伊景园滨河苑车位捆绑销售", "text": "伊景园滨河苑开发商捆绑销售车位，业主多次反映。",
     "user": " 张三 ", "time": "2019/2/28 11:25:05"}
B = {"id": "b", "title": "滨河苑车位问题", "text": "<p>伊景园滨河苑車位捆綁銷售</p>", "petitioner": "张三",
     "time": "2019-03-09 10:00:00"}


def test_from_record_reads_the_data_formats():
    p = Petition.from_record({**A, "_row": 7})
    assert (p.id, p.petitioner, p.row) == ("a", "张三", 7)
    assert p.received_at == datetime(2019, 2, 28, 11, 25, 5)
    assert p.normalized == petition_text(A["title"], A["text"])
    q = Petition.from_record(B)
    assert q.norm_text == "伊景园滨河苑车位捆绑销售"  # markup dropped, traditional -> simplified
    assert as_petition(p) is p
    stored = Petition.from_record({"id": 3, "text": "x", "received_at": None}, default_time=datetime(2024, 1, 1))
    assert stored.id == "3" and stored.received_at == datetime(2024, 1, 1)


def test_empty_petition_is_an_error_naming_it_and_its_row():
    with pytest.raises(DataError, match=r"'e' \(row 4\)"):
        Petition("e", " ", None, row=4).require_text()


def test_days_between_aware_and_naive():
    t = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert days_between(t, t.astimezone(timezone(timedelta(hours=8))) + timedelta(days=2)) == 2.0
    assert days_between(datetime(2024, 5, 1), datetime(2024, 5, 3, 12)) == 2.5
    assert days_between(None, t) is None


def test_text_is_normalised_once_not_per_candidate(monkeypatch):
    import xinfang.models.petition as pm

    calls: list[str | None] = []
    real = pm.normalize_text
    monkeypatch.setattr(pm, "normalize_text", lambda t, *a: calls.append(t) or real(t, *a))
    pm._normalise.cache_clear()
    q, c = Petition.from_record(A), Petition.from_record(B)
    assert len(calls) == 4  # title and text of each, once
    again = Petition.from_record(B)  # the same stored candidate looked up again
    feats, _ = pair_features(q, again, 0.9)
    rerank(q, [("b", 0.9)], {"b": again}, 1)
    RepeatScorer.default().score(q, c, 0.9)
    assert len(calls) == 4
    assert feats == pair_features(A, B, 0.9)[0]  # dicts give the same features
    gap = (datetime(2019, 3, 9, 10) - datetime(2019, 2, 28, 11, 25, 5)).total_seconds() / 86400
    assert feats["same_petitioner"] == 1.0 and feats["log_gap_days"] == pytest.approx(np.log1p(gap))


def test_search_candidates_is_the_finder_path():
    ids = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = VectorIndex(8, "Flat", "fp")
    index.add(ids, vecs)
    store = PetitionStore([A, B, {"id": "c", "title": "路灯不亮", "text": "某路路灯坏了"}])
    rows = search_candidates(index, [A], vecs[:1], 2, store.lookup, RepeatScorer.default())
    assert [c["id"] for c in rows[0]] and "a" not in [c["id"] for c in rows[0]]  # never the petition itself
    with pytest.raises(DataError, match="k must be positive"):
        search_candidates(index, [A], vecs[:1], 0, store.lookup, RepeatScorer.default())


def test_petition_store_round_trip(tmp_path):
    store = PetitionStore([A, {**B, "received_at": datetime(2019, 3, 9, 2, tzinfo=UTC), "time": None}])
    store.save(tmp_path)
    back = PetitionStore.load(tmp_path).lookup(["a", "b"])
    assert back["a"] == store.lookup(["a"])["a"]
    assert back["b"].received_at == datetime(2019, 3, 9, 2)  # kept as naive UTC
    assert json.loads((tmp_path / "petitions.jsonl").read_text().splitlines()[1])["time"] == "2019-03-09 02:00:00"


def test_disjoint_sets_and_pair_groups():
    s = DisjointSets(5)
    s.union(3, 4)
    s.union(4, 1)
    assert s.find(4) == 1 and s.labels() == [0, 1, 2, 1, 1]
    assert pair_groups([("a", "b"), ("c", "d"), ("b", "e"), ("e", "c"), ("x", "y")]) == [0, 0, 0, 0, 1]


def test_atomic_file_keeps_the_old_file_on_error(tmp_path):
    from xinfang.fsutil import atomic_file, atomic_write_json

    path = atomic_write_json(tmp_path / "d" / "x.json", {"k": "值"})
    with pytest.raises(RuntimeError), atomic_file(path) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert json.loads(path.read_text(encoding="utf-8")) == {"k": "值"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_sha256_file_cache_follows_changes(tmp_path):
    import hashlib

    from xinfang.hashing import sha256_file

    f = tmp_path / "w.bin"
    f.write_bytes(b"one")
    assert sha256_file(f, cached=True) == hashlib.sha256(b"one").hexdigest()
    f.write_bytes(b"two!")  # another size: not served from the cache
    assert sha256_file(f, cached=True) == sha256_file(f) == hashlib.sha256(b"two!").hexdigest()
