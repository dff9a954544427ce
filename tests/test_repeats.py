"""Repeat-petition detection: vector index, pair features and reasons, scorer, finder, CLI."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from xinfang.errors import DataError, IndexError_, ModelError
from xinfang.models.disjoint_sets import pair_groups
from xinfang.models.repeat_features import (
    DEFAULT_FEATURES,
    FEATURES,
    extract_names,
    names_match,
    pair_features,
    reasons,
)
from xinfang.models.repeat_scorer import RepeatScorer, choose_threshold
from xinfang.models.vector_index import VectorIndex
from xinfang.records import parse_time

DIM = 16


def _vecs(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


@pytest.fixture(params=["Flat", "HNSW16", "IVF4,Flat"])
def factory(request) -> str:
    return request.param


# ----------------------------------------------------------------------------------------- vector index
def test_index_add_search_excludes_self(factory):
    x = _vecs(300)
    ix = VectorIndex(DIM, factory, "fp", ivf_min_train=100)
    ix.add(_ids(300), x)
    assert len(ix) == 300
    res = ix.search(x[:3], 5)
    assert [r[0][0] for r in res] == ["p0", "p1", "p2"]
    res = ix.search(x[:3], 5, exclude_ids=[{"p0"}, {"p1"}, set()])
    assert "p0" not in [i for i, _ in res[0]] and "p1" not in [i for i, _ in res[1]]
    assert res[2][0][0] == "p2"
    assert all(len(r) == 5 for r in res)
    assert all(r[j][1] >= r[j + 1][1] for r in res for j in range(4))


def test_index_duplicate_and_unknown_ids_change_nothing(factory):
    x = _vecs(10)
    ix = VectorIndex(DIM, factory, "fp")
    ix.add(_ids(5), x[:5])
    with pytest.raises(IndexError_, match="'p3'"):
        ix.add(["p9", "p3"], x[5:7])
    assert len(ix) == 5 and not ix.contains("p9")
    with pytest.raises(IndexError_, match="'nope'"):
        ix.remove(["p1", "nope"])
    assert len(ix) == 5 and ix.contains("p1")
    assert ix.remove(["p1", "nope"], missing_ok=True) == 1
    assert not ix.contains("p1") and len(ix) == 4
    with pytest.raises(IndexError_, match="duplicate id"):
        ix.add(["q", "q"], x[:2])


def test_index_remove_and_replace(factory):
    x = _vecs(200)
    ix = VectorIndex(DIM, factory, "fp", ivf_min_train=100)
    ix.add(_ids(200), x)
    ix.remove(["p0", "p1"])
    hits = [i for i, _ in ix.search(x[0], 10)[0]]
    assert "p0" not in hits and "p1" not in hits and len(hits) == 10
    ix.replace(["p2"], x[3])  # p2 now carries p3's vector
    top = ix.search(x[3], 2)[0]
    assert {i for i, _ in top} == {"p2", "p3"}
    assert top[0][1] == pytest.approx(1.0, abs=1e-4)
    ix.replace(["new"], x[0])
    assert ix.contains("new") and len(ix) == 199
    np.testing.assert_allclose(ix.vector("new"), x[0], atol=1e-5)
    # many removals trigger compaction of approximate indexes; results stay right
    ix.remove(_ids(200)[10:150])
    assert len(ix) == 59
    assert ix.search(x[160], 1)[0][0][0] == "p160"
    assert set(ix.ids()) == {"new", *_ids(200)[2:10], *_ids(200)[150:]}


def test_ivf_falls_back_to_exact_until_trained():
    x = _vecs(120)
    ix = VectorIndex(DIM, "IVF4,Flat", "fp", ivf_min_train=100)
    ix.add(_ids(50), x[:50])
    assert ix.active_factory == "Flat"
    ix.add(_ids(120)[50:], x[50:])
    assert ix.active_factory == "IVF4,Flat" and len(ix) == 120
    assert ix.search(x[77], 1)[0][0][0] == "p77"


def test_index_save_load_roundtrip(tmp_path, factory):
    x = _vecs(150)
    ix = VectorIndex(DIM, factory, "fp-a", ivf_min_train=100)
    ix.add(_ids(150), x)
    ix.remove(["p5"])
    ix.save(tmp_path / "idx")
    ix.add(["late"], x[5])
    ix.save(tmp_path / "idx")  # second generation replaces the first
    files = sorted(os.listdir(tmp_path / "idx"))
    assert len([f for f in files if f.endswith(".faiss")]) == 1
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["dimension"] == DIM and manifest["count"] == 150
    assert manifest["encoder_fingerprint"] == "fp-a" and manifest["factory"] == factory
    back = VectorIndex.load(tmp_path / "idx", expected_fingerprint="fp-a")
    assert len(back) == 150 and set(back.ids()) == set(ix.ids())
    assert back.search(x[5], 1)[0][0][0] == "late"
    assert back.search(x[7], 2, [{"p7"}])[0][0][0] != "p7"


def test_index_load_refuses_mismatch_and_corruption(tmp_path):
    ix = VectorIndex(DIM, "Flat", "fp-a")
    ix.add(_ids(20), _vecs(20))
    d = ix.save(tmp_path / "idx")
    with pytest.raises(IndexError_, match="another encoder"):
        VectorIndex.load(d, expected_fingerprint="fp-b")
    with pytest.raises(IndexError_, match="dimension"):
        VectorIndex.load(d, expected_fingerprint="fp-a", expected_dim=DIM + 1)
    with pytest.raises(IndexError_, match="no index"):
        VectorIndex.load(tmp_path / "elsewhere")
    manifest = json.loads((d / "manifest.json").read_text())
    blob = d / manifest["files"]["index"]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="corrupt"):
        VectorIndex.load(d, expected_fingerprint="fp-a")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(IndexError_, match="corrupt manifest"):
        VectorIndex.load(d)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_index_save_to_read_only_dir_keeps_old_index(tmp_path):
    ix = VectorIndex(DIM, "Flat", "fp")
    ix.add(_ids(10), _vecs(10))
    d = ix.save(tmp_path / "idx")
    ix.add(["extra"], _vecs(1, seed=3))
    os.chmod(d, 0o555)
    try:
        with pytest.raises(IndexError_, match="cannot write index"):
            ix.save(d)
    finally:
        os.chmod(d, 0o755)
    assert len(VectorIndex.load(d, "fp")) == 10


def test_index_save_failure_keeps_old_index(tmp_path, monkeypatch):
    """A failing write (any OSError: permissions, full disk) leaves the previous index loadable."""
    import xinfang.models.vector_index as vi

    ix = VectorIndex(DIM, "Flat", "fp")
    ix.add(_ids(10), _vecs(10))
    d = ix.save(tmp_path / "idx")
    ix.add(["extra"], _vecs(1, seed=3))
    calls = {"n": 0}
    real = vi.write_durable

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise PermissionError(13, "Permission denied", str(path))
        real(path, data)

    monkeypatch.setattr(vi, "write_durable", failing)
    with pytest.raises(IndexError_, match="Permission denied"):
        ix.save(d)
    assert sorted(os.listdir(d)) == sorted(os.listdir(d))  # no temp files left behind below
    assert len([f for f in os.listdir(d) if f.endswith(".faiss")]) == 1
    assert len(VectorIndex.load(d, "fp")) == 10


def test_index_concurrent_searches_while_writing():
    x = _vecs(400, seed=1)
    ix = VectorIndex(DIM, "Flat", "fp")
    ix.add(_ids(100), x[:100])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(q: int) -> None:
        try:
            while not stop.is_set():
                res = ix.search(x[q:q + 1], 5, [{f"p{q}"}])[0]
                assert len(res) == 5 and all(i != f"p{q}" for i, _ in res)
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(q,)) for q in range(4)]
    for t in threads:
        t.start()
    for start in range(100, 400, 20):
        ix.add(_ids(400)[start:start + 20], x[start:start + 20])
        ix.replace([f"p{start}"], x[start])
        ix.remove([f"p{start + 1}"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(ix) == 400 - 15


def test_index_bad_vectors():
    ix = VectorIndex(DIM)
    with pytest.raises(IndexError_, match="expects"):
        ix.add(["a"], np.zeros((1, DIM + 1), dtype=np.float32))
    with pytest.raises(IndexError_, match="NaN"):
        ix.add(["a"], np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(IndexError_, match="2 ids but 1"):
        ix.add(["a", "b"], _vecs(1))
    assert ix.search(_vecs(1), 3) == [[]]


# ----------------------------------------------------------------------------------------- features
A = {"id": "a", "title": "伊景园滨河苑小区开发商捆绑销售车位", "text": "A市A3区伊景园滨河苑开发商强制捆绑销售车位，请相关部门调查。",
     "petitioner": "U001", "time": "2019/2/28 11:25:05"}
B = {"id": "b", "title": "再次反映伊景园滨河苑捆绑销售车位问题", "text": "伊景园滨河苑开发商捆绑销售车位，至今未解决，希望尽快处理。",
     "petitioner": "U001", "time": "2019-03-12 11:25:05"}
C = {"id": "c", "title": "金色家园小区电梯故障", "text": "A市A5区金色家园小区电梯经常故障，物业不管。",
     "user": "U777", "time": "2019-03-01 08:00:00"}


def test_parse_time_mixed_formats():
    assert parse_time("2019/2/28 11:25:05").isoformat() == "2019-02-28T11:25:05"
    assert parse_time("2017-06-08 17:31:20").isoformat() == "2017-06-08T17:31:20"
    assert parse_time("2019/3/1").isoformat() == "2019-03-01T00:00:00"
    assert parse_time(None) is None and parse_time("昨天") is None


def test_extract_names():
    names = extract_names("A市A3区伊景园滨河苑旁的金星路上，恒大地产集团在施工，我小区的孩子在博才小学读书")
    assert ("estate", "伊景园滨河苑") in names
    assert ("road", "金星路") in names
    assert ("school", "博才小学") in names
    assert not any(n.endswith("政府") for _k, n in extract_names("请市政府和区政府尽快处理"))


def test_names_match_typos_and_nesting():
    assert names_match("中茂城", "中贸城") and names_match("千山制药机械股份有限公司", "山千制药机械股份有限公司")
    assert names_match("伊景园滨河苑", "滨河苑") and names_match("锦绣华庭", "锦秀华庭")
    assert not names_match("大风车幼儿园", "三之三幼儿园") and not names_match("金星路", "银星路"[:2])
    feats, facts = pair_features({"title": "中茂城商铺退款", "text": "星沙中茂城商铺不退款"},
                                 {"title": "中贸城商铺退款难", "text": "中贸城拒不退还定金"}, 0.9)
    assert feats["name_conflict"] == 0.0 and facts.shared and "中茂城" in facts.shared[0][1]


def test_pair_features_and_reasons_repeat():
    feats, facts = pair_features(A, B, 0.93)
    assert list(feats) == FEATURES
    assert feats["same_petitioner"] == 1.0 and feats["diff_petitioner"] == 0.0
    assert feats["followup"] == 1.0 and feats["shared_names"] >= 1 and feats["name_conflict"] == 0.0
    assert facts.gap_days == pytest.approx(12.0)
    rs = reasons(feats, facts)
    assert rs[0] == "同一信访人"
    assert "同一地点: 伊景园滨河苑" in rs and "文本相似度 0.93" in rs and "间隔 12 天" in rs


def test_pair_features_different_matter():
    feats, facts = pair_features(A, C, 0.41)
    assert feats["same_petitioner"] == 0.0 and feats["diff_petitioner"] == 1.0  # `user` is read too
    assert feats["shared_names"] == 0 and feats["name_conflict"] == 1.0
    assert feats["bigram_jaccard"] < 0.2
    rs = reasons(feats, facts)
    assert "同一信访人" not in rs and any(r.startswith("地点不同") for r in rs)
    # unknown petitioner/time: features say unknown, reasons do not invent facts
    f2, facts2 = pair_features({"title": "x路灯坏了", "text": "a"}, {"title": "y", "text": "b"}, 0.1)
    assert f2["time_known"] == 0.0 and f2["same_petitioner"] == 0.0 and f2["diff_petitioner"] == 0.0
    assert not any("间隔" in r or "信访人" in r for r in reasons(f2, facts2))


def test_identical_text_reason():
    feats, facts = pair_features(A, dict(A, id="a2"), 0.999)
    assert feats["identical_text"] == 1.0 and reasons(feats, facts)[0] == "内容完全相同"


# ----------------------------------------------------------------------------------------- scorer
def _toy_scorer(seed: int = 0) -> tuple[RepeatScorer, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 160
    y = (rng.random(n) < 0.5).astype(int)
    X = rng.normal(size=(n, len(FEATURES))) * 0.3
    X[:, 0] = np.clip(0.75 + 0.15 * y + rng.normal(0, 0.06, n), -1, 1)
    X[:, 6] = (rng.random(n) < 0.2 + 0.5 * y).astype(float)
    groups = np.arange(n) // 4
    return RepeatScorer.fit(X, y, groups, encoder_fingerprint="fp"), X, y


def test_scorer_fit_threshold_and_json_roundtrip(tmp_path):
    scorer, X, y = _toy_scorer()
    assert scorer.metrics["roc_auc"] > 0.85
    assert "precision" in scorer.threshold_rule and 0 < scorer.threshold < 1
    coefs = dict(scorer.explain())
    assert coefs["cosine"] > 0 and coefs["same_petitioner"] > 0
    path = scorer.save(tmp_path / "s.json")
    raw = json.loads(path.read_text())
    assert raw["format"].startswith("xinfang-repeat-scorer") and raw["feature_names"] == FEATURES
    back = RepeatScorer.load(path)
    np.testing.assert_allclose(back.probability_from_features(X), scorer.probability_from_features(X))
    out = back.score(A, B, 0.95)
    assert set(out) == {"probability", "is_repeat", "reasons"} and 0 <= out["probability"] <= 1
    assert out["is_repeat"] == (out["probability"] >= back.threshold)
    assert back.score(A, B, 0.95)["probability"] > back.score(A, C, 0.3)["probability"]


def test_scorer_load_errors(tmp_path):
    with pytest.raises(ModelError, match="cannot read"):
        RepeatScorer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ModelError, match="not a repeat scorer"):
        RepeatScorer.load(tmp_path / "bad.json")
    scorer, _, _ = _toy_scorer()
    d = scorer.to_dict()
    d["coef"] = d["coef"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="do not match"):
        RepeatScorer.load(tmp_path / "short.json")


def test_threshold_rule_and_components():
    y = np.array([0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9])
    t, rule = choose_threshold(y, p, 0.95)
    assert t == 0.6 and "precision" in rule
    assert pair_groups([("a", "b"), ("c", "d"), ("b", "e"), ("e", "c"), ("x", "y")]) == [0, 0, 0, 0, 1]


def test_default_scorer_loads():
    scorer = RepeatScorer.default()
    assert scorer.feature_names == DEFAULT_FEATURES and 0 < scorer.threshold < 1


# ----------------------------------------------------------------------------------------- finder + CLI
@pytest.fixture(scope="module")
def tiny_embedder(tiny_encoder_dir):
    from xinfang.models.embedder import Embedder

    return Embedder(tiny_encoder_dir, max_length=64)


def test_embedder_contract(tiny_embedder, tiny_encoder_dir):
    from xinfang.models.embedder import Embedder

    v = tiny_embedder.encode(["投诉小区噪音", "学校收费", ""])
    assert v.dtype == np.float32 and v.shape == (3, tiny_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiny_embedder.encode(["学校收费"])[0], v[1], atol=1e-5)  # order-independent
    assert tiny_embedder.encode([]).shape == (0, tiny_embedder.dim)
    other = Embedder(tiny_encoder_dir, prefix="query: ", max_length=64)
    assert other.fingerprint != tiny_embedder.fingerprint and len(other.fingerprint) == 64


def test_finder_never_returns_itself(tiny_embedder):
    from xinfang.models.repeats import PetitionStore, RepeatFinder, build_index

    scorer, _, _ = _toy_scorer()
    scorer.encoder_fingerprint = tiny_embedder.fingerprint
    recs = [A, B, C, {"id": "d", "title": "学校乱收费", "text": "某小学收取补课费"}]
    index = build_index(recs, tiny_embedder)
    store = PetitionStore(recs)
    finder = RepeatFinder(tiny_embedder, index, scorer)
    cands = finder.candidates(A, 10, store.lookup)
    assert [c["id"] for c in cands if c["id"] == "a"] == [] and len(cands) == 3
    assert [c["probability"] for c in cands] == sorted((c["probability"] for c in cands), reverse=True)
    assert set(cands[0]) == {"id", "similarity", "probability", "is_repeat", "reasons"}
    # the same text under a new id is found, with the identical-content reason
    same = finder.candidates(dict(A, id="new"), 2, store.lookup)
    assert same[0]["id"] == "a" and "内容完全相同" in same[0]["reasons"]
    with pytest.raises(DataError, match="empty title and text"):
        finder.candidates({"id": "e", "title": " ", "text": None}, 3, store.lookup)


def test_lexical_similarity():
    from xinfang.models.repeat_ranking import lexical_similarity

    a = "伊景园滨河苑捆绑销售车位\n开发商要求购房必须买车位"
    assert lexical_similarity(a, a) == pytest.approx(1.0)
    assert lexical_similarity(a, "学校乱收费补课费") == 0.0
    assert lexical_similarity(a, "") == 0.0 and lexical_similarity("", "") == 0.0
    near = lexical_similarity(a, "伊景园滨河苑强制捆绑销售车位")
    far = lexical_similarity(a, "开发商拖延交房")
    assert 0 < far < near < 1
    assert lexical_similarity(a, "伊景园滨河苑强制捆绑销售车位") == pytest.approx(
        lexical_similarity("伊景园滨河苑强制捆绑销售车位", a))


def test_rerank_lifts_literal_match_and_drops_unknown_ids():
    from xinfang.models.repeat_ranking import HYBRID_WEIGHT, fetch_size, rerank

    query = {"title": "伊景园滨河苑捆绑销售车位", "text": "开发商要求购房必须买车位"}
    found = {"x": {"title": "丽发新城搅拌站噪音", "text": "每天轰鸣"},
             "y": {"title": "伊景园滨河苑捆绑销售车位", "text": "购房必须买车位"}}
    hits = [("x", 0.95), ("gone", 0.94), ("y", 0.93)]
    assert rerank(query, hits, found, 1) == [("y", 0.93)]  # cosine order alone would pick x
    assert rerank(query, hits, found, 5) == [("y", 0.93), ("x", 0.95)]
    assert rerank(query, [], found, 3) == []
    assert 0 < HYBRID_WEIGHT < 1 and fetch_size(5) >= 20 and fetch_size(100) == 400


def test_finder_candidates_come_from_a_widened_search(tiny_embedder):
    from xinfang.models.repeats import PetitionStore, RepeatFinder, build_index

    scorer, _, _ = _toy_scorer()
    scorer.encoder_fingerprint = tiny_embedder.fingerprint
    recs = [{"id": f"n{i}", "title": f"第{i}号意见", "text": "一般建议" * (i + 1)} for i in range(30)]
    recs.append({"id": "same", "title": A["title"], "text": A["text"]})
    index = build_index(recs, tiny_embedder)
    finder = RepeatFinder(tiny_embedder, index, scorer)
    top = finder.candidates(dict(A, id="q"), 1, PetitionStore(recs).lookup)
    assert [c["id"] for c in top] == ["same"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_index_query_score(tmp_path, tiny_encoder_dir, demo_data_path):
    from typer.testing import CliRunner

    from xinfang.cli import app

    if not demo_data_path.exists():
        pytest.skip("demo data not present")
    runner = CliRunner()
    idx = tmp_path / "index"
    enc = str(tiny_encoder_dir)
    r = runner.invoke(app, ["repeats", "index", "--input", str(demo_data_path), "--index", str(idx),
                            "--encoder", enc])
    assert r.exit_code == 0, r.output
    n = sum(1 for line in demo_data_path.read_text("utf-8").splitlines() if line.strip())
    assert json.loads((idx / "manifest.json").read_text())["count"] == n
    # adding the same file again: duplicate ids refused, index unchanged
    r = runner.invoke(app, ["repeats", "index", "--input", str(demo_data_path), "--index", str(idx),
                            "--encoder", enc])
    assert r.exit_code != 0 and "already indexed" in str(r.exception)
    assert json.loads((idx / "manifest.json").read_text())["count"] == n
    out = tmp_path / "q.jsonl"
    r = runner.invoke(app, ["repeats", "query", "--input", str(demo_data_path), "--k", "3", "--output", str(out),
                            "--index", str(idx), "--encoder", enc])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(rows) == n
    for row in rows:
        assert len(row["candidates"]) == 3 and all(c["id"] != row["id"] for c in row["candidates"])
        c = row["candidates"][0]
        assert set(c) == {"id", "similarity", "probability", "is_repeat", "reasons"}
        assert isinstance(c["is_repeat"], bool) and any(x.startswith("文本相似度") for x in c["reasons"])
    # another encoder's index is refused
    r = runner.invoke(app, ["repeats", "query", "--input", str(demo_data_path), "--output", str(out),
                            "--index", str(idx)])
    assert r.exit_code != 0 and "another encoder" in str(r.exception)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"a": A, "b": B}, {"a": A, "b": C}])
    out2 = tmp_path / "s.jsonl"
    r = runner.invoke(app, ["repeats", "score", "--input", str(pairs), "--output", str(out2), "--encoder", enc])
    assert r.exit_code == 0, r.output
    scored = [json.loads(line) for line in out2.read_text("utf-8").splitlines()]
    assert [set(s) for s in scored] == [{"probability", "is_repeat", "reasons"}] * 2
    assert "同一信访人" in scored[0]["reasons"]


def test_cli_train_scorer(tmp_path, tiny_encoder_dir):
    from typer.testing import CliRunner

    from xinfang.cli import app

    pets, pairs = [], []
    places = ["伊景园滨河苑", "金色家园", "博才小学", "麓谷明珠小区", "黄兴路", "石塘铺村"]
    issues = ["噪音扰民", "乱收费", "电梯故障", "违章停车"]
    for i, place in enumerate(places):
        for j, issue in enumerate(issues):
            for v in range(2):
                pets.append({"id": f"{i}-{j}-{v}", "title": f"{place}{issue}", "petitioner": f"U{i}{v}",
                             "text": f"{'再次反映' if v else ''}{place}{issue}问题严重，请处理。",
                             "time": f"2019-0{1 + v}-1{j} 10:00:00"})
            pairs.append({"a": f"{i}-{j}-0", "b": f"{i}-{j}-1", "label": 1})
            pairs.append({"a": f"{i}-{j}-0", "b": f"{(i + 1) % 6}-{(j + 1) % 4}-0", "label": 0})
    pairs.append({"a": "0-0-0", "b": "0-1-0", "label": 0.5})
    r = CliRunner().invoke(app, [
        "repeats", "train-scorer", "--pairs", str(_write_jsonl(tmp_path / "p.jsonl", pairs)),
        "--petitions", str(_write_jsonl(tmp_path / "pets.jsonl", pets)), "--out", str(tmp_path / "s.json"),
        "--encoder", str(tiny_encoder_dir)])
    assert r.exit_code == 0, r.output
    s = RepeatScorer.load(tmp_path / "s.json")
    assert s.metrics["n"] == 48 and s.metrics["roc_auc"] > 0.8


@pytest.mark.realdata
def test_realdata_pairs_features(shared_data_dir):
    """Feature extraction on the real dev pairs: petitioner ids and mixed times are read for every pair."""
    from xinfang.records import load_records
    from xinfang.training.repeats import labelled_pairs

    by_id = {r["id"]: r for r in load_records(shared_data_dir / "attachment3_likes.jsonl")}
    pairs = [json.loads(line) for line in (shared_data_dir / "repeat_pairs_dev.jsonl").read_text().splitlines()]
    triples = labelled_pairs(pairs, by_id)
    # 224 pairs since 2026-12-01 (217 decided); the 83 that touched held-out matters were taken out.
    assert len(triples) == sum(p["label"] in (0, 1) for p in pairs) > 200
    same = 0
    for (a, b, _), p in zip(triples, [p for p in pairs if p["label"] in (0, 1)], strict=True):
        feats, _ = pair_features(by_id[a], by_id[b], 0.5)
        assert feats["time_known"] == 1.0
        same += feats["same_petitioner"] == 1.0
        assert feats["same_petitioner"] == float(p["same_user"])
    assert same > 50


def test_cli_train_fine_tunes_embedder_and_scorer(tmp_path, tiny_encoder_dir, demo_data_path):
    from typer.testing import CliRunner

    from xinfang.cli import app
    from xinfang.models.embedder import Embedder
    from xinfang.models.repeat_scorer import RepeatScorer

    pairs = demo_data_path.parent / "repeat_pairs.jsonl"
    if not pairs.exists():
        pytest.skip("demo data not present")
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["repeats", "train", "--pairs", str(pairs), "--petitions", str(demo_data_path),
                                 "--out", str(out), "--base", str(tiny_encoder_dir), "--recipe", "tiny",
                                 "--folds", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "training.json").read_text())
    assert 0 <= summary["roc_auc_cross_fitted_cosine"] <= 1 and summary["folds"] == 2
    base = Embedder(tiny_encoder_dir, max_length=64)
    tuned = Embedder(out / "embedder", max_length=64)
    assert tuned.fingerprint != base.fingerprint  # other weights: an index built with the base is refused
    texts = ["小区噪音扰民", "学校乱收费"]
    assert not np.allclose(tuned.encode(texts), base.encode(texts), atol=1e-4)
    scorer = RepeatScorer.load(out / "repeat-scorer.json")
    assert scorer.encoder_fingerprint == tuned.fingerprint and 0 < scorer.threshold < 1
    assert summary["features"] == scorer.feature_names == summary["feature_selection"][
        summary["feature_selection"]["chosen"]]["features"]
    assert not list(out.parent.glob(".embedder-*"))  # no temporary directory left behind


def test_embedder_fine_tuning_refuses_one_sided_pairs(tiny_encoder_dir):
    from xinfang.training.repeat_embedder import RECIPES, fine_tune_embedder

    texts = {"a": "小区噪音", "b": "小区噪音扰民", "c": "学校收费"}
    with pytest.raises(DataError, match="both repeat"):
        fine_tune_embedder([("a", "b", 1), ("a", "c", 1)], texts, tiny_encoder_dir, RECIPES["tiny"])
    with pytest.raises(DataError, match="no pairs"):
        fine_tune_embedder([], texts, tiny_encoder_dir, RECIPES["tiny"])


def test_select_features_prefers_the_informative_set() -> None:
    from xinfang.models.repeat_features import FEATURES
    from xinfang.training.repeats import FEATURE_SETS, select_features

    rng = np.random.default_rng(0)
    n = 240
    y = np.tile([0, 1], n // 2)
    X = rng.normal(0, 1, (n, len(FEATURES)))
    X[:, FEATURES.index("cosine")] = 0.6 + 0.25 * y + rng.normal(0, 0.06, n)
    groups = np.arange(n) // 4  # 60 groups of 4 pairs
    noise_only = [f for f in FEATURES if f not in ("cosine",)][:3]
    scorer, table = select_features(X, y, groups, candidates={"noise": noise_only, "cosine only": ["cosine"]})
    assert table["chosen"] == "cosine only" and scorer.feature_names == ["cosine"]
    assert table["cosine only"]["f1"] > table["noise"]["f1"] and 0 < scorer.threshold < 1
    scorer, table = select_features(X, y, groups)
    assert set(table) == {*FEATURE_SETS, "chosen"} and scorer.feature_names == FEATURE_SETS[table["chosen"]]
    # the scorer is usable on a full feature dict, whatever set it kept
    feats = {f: float(X[0, i]) for i, f in enumerate(FEATURES)}
    assert scorer.features_vector(feats).shape == (len(scorer.feature_names),)


def test_embedder_recipe_deeper_than_the_encoder_trains_every_layer(tiny_encoder_dir):
    """`full` asks for 12 layers; on the 2-layer test encoder it trains both (and the embeddings stay frozen)."""
    from dataclasses import replace

    import torch
    from transformers import AutoModel

    from xinfang.training.repeat_embedder import RECIPES, fine_tune_embedder

    texts = {"a": "小区夜间施工噪音", "b": "小区夜间施工噪音扰民", "c": "学校违规收费", "d": "学校乱收费"}
    pairs = [("a", "b", 1), ("a", "c", 0), ("c", "d", 1), ("b", "d", 0)]
    base = AutoModel.from_pretrained(tiny_encoder_dir)
    recipe = replace(RECIPES["full"], epochs=2, lr=5e-3, batch_pairs=4, max_length=32)
    model, _tok = fine_tune_embedder(pairs, texts, tiny_encoder_dir, recipe)
    tuned = {k: v.cpu() for k, v in model.state_dict().items()}
    for name, value in base.state_dict().items():
        changed = not torch.equal(value, tuned[name])
        if name.startswith("embeddings."):
            assert not changed, name
        elif name.startswith("encoder.layer.0.attention.self.query.weight") or name.startswith(
                "encoder.layer.1.output.dense.weight"):
            assert changed, name


def test_attention_mask_across_transformers_signatures():
    """The layer mask helper passes only the keywords this transformers version's method takes."""
    import torch

    from xinfang.models.stack import attention_mask as _attention_mask

    mask = torch.tensor([[1, 1, 0]])
    hidden = torch.zeros(1, 3, 4)

    class New:  # transformers 5.17: past_key_values
        def _create_attention_masks(self, attention_mask, encoder_attention_mask, embedding_output,
                                    encoder_hidden_states, past_key_values):
            return ("self", attention_mask.sum()), None

    class Newer:  # transformers 5.24: cache
        def _create_attention_masks(self, attention_mask, encoder_attention_mask, embedding_output,
                                    encoder_hidden_states, cache):
            return ("self", attention_mask.sum()), None

    class Unknown:  # a required keyword we cannot supply: fall back to the classic extended mask
        def _create_attention_masks(self, attention_mask, something_new):
            raise AssertionError("must not be called")

        def get_extended_attention_mask(self, attention_mask, shape):
            return ("extended", tuple(shape))

    assert _attention_mask(New(), mask, hidden) == ("self", 2)
    assert _attention_mask(Newer(), mask, hidden) == ("self", 2)
    assert _attention_mask(Unknown(), mask, hidden) == ("extended", (1, 3))


def test_gram_matrix_matches_lexical_similarity():
    """The batch path's vectorised lexical similarity gives the per-pair function's values."""
    from xinfang.models.petition import Petition
    from xinfang.models.repeat_ranking import GramMatrix, lexical_similarity
    from xinfang.records import load_records
    from xinfang.settings import DEMO_DATA_DIR

    demo = [Petition.from_record(r) for r in load_records(DEMO_DATA_DIR / "petitions.jsonl")[:60]]
    demo.append(Petition(id="short", title="路", text=None))
    grams = GramMatrix(demo)
    for q in demo[:10] + [demo[-1]]:
        got = grams.query_similarities(q.id, [p.id for p in demo])
        want = [lexical_similarity(q.normalized, p.normalized) for p in demo]
        assert np.allclose(got, want, atol=1e-12)


def test_gram_overlaps_match_string_sets():
    """Pair features' gram overlaps on int keys equal those on the gram strings themselves."""
    from xinfang.models.char_grams import gram_set, overlap

    def strings(s: str, n: int) -> set[str]:
        return {s[i:i + n] for i in range(len(s) - n + 1)} if len(s) >= n else ({s} if s else set())

    texts = ["伊景园滨河苑捆绑销售车位", "滨河苑车位捆绑", "路", "", "A市𠀋字测试"]
    for a in texts:
        for b in texts:
            for n in (2, 3):
                assert overlap(gram_set(a, n), gram_set(b, n)) == len(strings(a, n) & strings(b, n))
                assert len(gram_set(a, n)) == len(strings(a, n))
