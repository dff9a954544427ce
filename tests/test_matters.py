"""Matters: linkage rules, cannot-links, naming, the intake join rule, the scoring of a clustering."""

from __future__ import annotations

import random

import pytest

from xinfang.errors import DataError
from xinfang.models.matters import Link, MatterRule, group, join_decision, name_matters
from xinfang.training.matter_eval import bcubed, hard_negative_merges, matter_pairs, matter_pr, pair_decisions


def _links(*triples) -> list[Link]:
    return [Link(a, b, p, p) for a, b, p in triples]


CHAIN = _links(("a", "b", 0.95), ("b", "c", 0.9), ("c", "d", 0.6), ("d", "e", 0.9), ("x", "y", 0.2))


def test_single_linkage_is_connected_components_above_threshold():
    groups = group("abcdexy", CHAIN, 0.5)
    assert groups == [["a", "b", "c", "d", "e"], ["x"], ["y"]]
    assert group("abcdexy", CHAIN, 0.7) == [["a", "b", "c"], ["d", "e"], ["x"], ["y"]]
    # every id is in exactly one group, links to unknown ids are ignored
    assert group("ab", _links(("a", "zz", 0.99)), 0.5) == [["a"], ["b"]]


def test_average_linkage_refuses_a_weakly_supported_merge():
    # {a,b,c} and {d,e} are joined by one link above the threshold and two weak ones: mean 0.53 < 0.7
    links = _links(("a", "b", 0.95), ("b", "c", 0.95), ("a", "c", 0.9), ("d", "e", 0.9),
                   ("c", "d", 0.75), ("a", "d", 0.45), ("b", "e", 0.4))
    assert group("abcde", links, 0.7, "single") == [["a", "b", "c", "d", "e"]]
    assert group("abcde", links, 0.7, "average") == [["a", "b", "c"], ["d", "e"]]
    assert group("abcde", links, 0.5, "average") == [["a", "b", "c", "d", "e"]]
    assert group("abcde", links, 0.99, "average") == [["a"], ["b"], ["c"], ["d"], ["e"]]


@pytest.mark.parametrize("linkage", ["single", "average"])
def test_cannot_links_are_respected_transitively(linkage):
    groups = group("abcde", CHAIN, 0.5, linkage, cannot_links=[("a", "e")])
    assert not any({"a", "e"} <= set(g) for g in groups)
    assert ["a", "b", "c"] in groups or ["a", "b", "c", "d"] in groups
    with pytest.raises(DataError, match="linkage"):
        group("ab", CHAIN, 0.5, "complete")


@pytest.mark.parametrize("linkage", ["single", "average"])
def test_grouping_and_names_do_not_depend_on_input_order(linkage):
    rng = random.Random(0)
    ids = [f"p{i:02d}" for i in range(40)]
    links = [Link(*sorted(rng.sample(ids, 2)), round(rng.random(), 3), 0.5) for _ in range(120)]
    times = {pid: {"id": pid, "time": f"2024-01-{1 + i % 28:02d} 10:00:00"} for i, pid in enumerate(ids)}
    ref = name_matters(group(ids, links, 0.6, linkage, [("p01", "p02")]), times)
    for _ in range(5):
        rng.shuffle(ids)
        rng.shuffle(links)
        assert name_matters(group(ids, links, 0.6, linkage, [("p02", "p01")]), times) == ref


def test_matter_named_after_its_earliest_member():
    by_id = {"a": {"time": "2024-02-01 08:00:00"}, "b": {"time": "2024/1/5 9:00:00"}, "c": {}}
    assert name_matters([["a", "b", "c"]], by_id) == {"a": "M-b", "b": "M-b", "c": "M-b"}
    assert name_matters([["c", "d"]], {}) == {"c": "M-c", "d": "M-c"}


def test_rule_validation():
    assert MatterRule(threshold=None).resolve(type("S", (), {"threshold": 0.7})()) == 0.7
    assert MatterRule(threshold=0.9).resolve(type("S", (), {"threshold": 0.7})()) == 0.9
    for bad in ({"linkage": "ward"}, {"k": 0}, {"threshold": 1.5}):
        with pytest.raises(DataError):
            MatterRule(**bad)


def test_join_decision_takes_the_best_allowed_candidate():
    cands = [{"id": "p1", "probability": 0.97}, {"id": "p2", "probability": 0.91}, {"id": "p3", "probability": 0.4}]
    matter_of = {"p1": "M-1", "p2": "M-2", "p3": "M-3"}
    d = join_decision(cands, matter_of, 0.8)
    assert (d.matter, d.via, d.probability) == ("M-1", "p1", 0.97) and "p1" in d.reason
    d = join_decision(cands, matter_of, 0.8, blocked={"M-1"})
    assert (d.matter, d.via, d.skipped) == ("M-2", "p2", ["M-1"])
    d = join_decision(cands, matter_of, 0.8, blocked={"M-1", "M-2"})
    assert d.matter is None and "不予合并" in d.reason
    d = join_decision(cands, matter_of, 0.99)
    assert d.matter is None and d.via is None and "阈值 0.99" in d.reason
    # average: the matter whose candidates agree on average, not the one with a single strong link
    cands = [{"id": "p1", "probability": 0.97}, {"id": "p4", "probability": 0.5}, {"id": "p2", "probability": 0.9},
             {"id": "p5", "probability": 0.88}]
    matter_of = {"p1": "M-1", "p4": "M-1", "p2": "M-2", "p5": "M-2"}
    assert join_decision(cands, matter_of, 0.8).matter == "M-1"
    d = join_decision(cands, matter_of, 0.8, linkage="average")
    assert (d.matter, d.via, d.probability) == ("M-2", "p2", 0.89) and "平均" in d.reason
    assert join_decision(cands, matter_of, 0.95, linkage="average").matter is None


def _writer(pid: str, title: str, text: str) -> dict:
    return {"id": pid, "title": title, "text": text, "petitioner": "U1", "time": "2019/3/1 10:00:00"}


def test_one_writers_generic_messages_are_not_one_matter():
    from xinfang.models.repeat_features import (
        pair_features,
        reasons,
        same_writer_only,
        same_writer_only_reasons,
    )

    rail = _writer("w1", "请A市加快轨道交通建设力度", "地处中部中心城市的A市在高铁和地铁建设极为落后，在国家大力倡导的大背景下刻不容缓。")
    park = _writer("w2", "请A市加快考古遗址公园建设力度", "地处银杉路旁边的遗址公园已规划多年，在国家大力倡导的大背景下刻不容缓。")
    same_place = _writer("w3", "A3区西湖街道茶场村五组何时启动拆迁", "A3区西湖街道茶场村五组何时启动拆迁？")
    again = _writer("w4", "请问A3区西湖街道茶场村五组是如何规划的", "请问A3区西湖街道茶场村五组是如何规划的？")
    f, facts = pair_features(rail, park, 0.93)
    assert same_writer_only(f) and same_writer_only_reasons(reasons(f, facts))
    f2, facts2 = pair_features(same_place, again, 0.93)
    assert not same_writer_only(f2) and not same_writer_only_reasons(reasons(f2, facts2))
    assert not same_writer_only(pair_features({**rail, "petitioner": "U2"}, park, 0.93)[0])
    # grouping: the style-only link is left out, the link through a shared place is kept
    links = [Link("w1", "w2", 0.9, 0.93, same_writer_only=True), Link("w3", "w4", 0.9, 0.93)]
    assert group(["w1", "w2", "w3", "w4"], links, 0.8) == [["w1"], ["w2"], ["w3", "w4"]]
    assert group(["w1", "w2"], links, 0.8, same_writer_needs_name=False) == [["w1", "w2"]]
    # intake: a candidate of the same writer with nothing concrete in common does not pull it into its matter
    cands = [{"id": "w1", "probability": 0.95, "reasons": reasons(f, facts)},
             {"id": "w3", "probability": 0.85, "reasons": reasons(f2, facts2)}]
    d = join_decision(cands, {"w1": "M-w1", "w3": "M-w3"}, 0.8)
    assert (d.matter, d.via) == ("M-w3", "w3")
    assert join_decision(cands, {"w1": "M-w1"}, 0.8).matter is None
    assert join_decision(cands, {"w1": "M-w1"}, 0.8, same_writer_needs_name=False).matter == "M-w1"


def _petition(pid: str, title: str, petitioner: str) -> dict:
    return {"id": pid, "title": title, "text": title + "，严重影响附近居民休息。", "petitioner": petitioner,
            "time": "2019/3/1 10:00:00"}


def test_one_complaint_about_two_estates_is_two_matters():
    from xinfang.models.repeat_features import names_differ, names_differ_reasons, pair_features, reasons

    here = _petition("e1", "A5区劳动东路魅力之城小区临街门面油烟扰民", "U1")
    again = _petition("e2", "万科魅力之城小区底层门店油烟直排扰民", "U2")
    there = _petition("e3", "A3区看云路润芳园小区临街门面油烟扰民", "U3")
    f, facts = pair_features(here, there, 0.95)
    assert names_differ(f, facts) and names_differ_reasons(reasons(f, facts))
    f2, facts2 = pair_features(here, again, 0.95)  # nested names (魅力之城 / 万科魅力之城) are one place
    assert not names_differ(f2, facts2) and not names_differ_reasons(reasons(f2, facts2))
    f3, facts3 = pair_features(here, {**there, "id": "e4", "title": here["title"], "text": here["text"]}, 1.0)
    assert not names_differ(f3, facts3)  # the same text is the same matter whatever it names
    # grouping: the link across two estates is left out even when it is the strongest
    links = [Link("e1", "e3", 0.99, 0.95, names_differ=True), Link("e1", "e2", 0.9, 0.95)]
    assert group(["e1", "e2", "e3"], links, 0.8) == [["e1", "e2"], ["e3"]]
    assert group(["e1", "e2", "e3"], links, 0.8, different_names_apart=False) == [["e1", "e2", "e3"]]
    # intake: the candidate about the other estate does not pull the petition into its matter
    cands = [{"id": "e3", "probability": 0.99, "reasons": reasons(f, facts)},
             {"id": "e2", "probability": 0.9, "reasons": reasons(f2, facts2)}]
    d = join_decision(cands, {"e3": "M-e3", "e2": "M-e2"}, 0.8)
    assert (d.matter, d.via) == ("M-e2", "e2")
    assert join_decision(cands[:1], {"e3": "M-e3"}, 0.8).matter is None
    assert join_decision(cands[:1], {"e3": "M-e3"}, 0.8, different_names_apart=False).matter == "M-e3"
    assert MatterRule().different_names_apart


def test_bcubed_and_matter_scores():
    gold = {"a": "G1", "b": "G1", "c": "G1", "d": "G2"}
    perfect = {"a": 1, "b": 1, "c": 1, "d": 2, "u": 3}
    assert bcubed(perfect, gold)["f1"] == 1.0
    # an unlabelled message in a's cluster costs precision; splitting c off costs recall
    pred = {"a": 1, "b": 1, "u": 1, "c": 2, "d": 3}
    m = bcubed(pred, gold)
    assert m["precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert m["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1) / 4)
    assert matter_pr(pred, ["a", "b", "c"]) == {"precision": 2 / 3, "recall": 2 / 3, "cluster_size": 3,
                                                 "overlap": 2}
    matters = [{"matter": "G1", "members": ["a", "b", "c"], "hard_negatives": ["u"]}]
    assert hard_negative_merges(pred, matters)["merged"] == 2
    pairs = matter_pairs(matters)
    assert (("a", "b", 1) in pairs and ("a", "u", 0) in pairs and len(pairs) == 6)
    same = [pred[a] == pred[b] for a, b, _ in pairs]
    pd = pair_decisions(same, [y for *_, y in pairs])
    assert pd["positives"] == 3 and pd["precision"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------- CLI
def _run(args, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from xinfang.cli import app

    monkeypatch.setenv("XINFANG_DATA_DIR", str(tmp_path / "data"))
    return CliRunner().invoke(app, args)


def test_cli_matters_build_is_deterministic_and_order_free(tmp_path, monkeypatch, repeats_model):
    import json

    from xinfang.records import load_records, write_jsonl
    from xinfang.settings import DEMO_DATA_DIR

    rows = load_records(DEMO_DATA_DIR / "petitions.jsonl")
    for r in rows:
        r.pop("_row")
    out = tmp_path / "m.jsonl"
    r = _run(["matters", "build", "--input", str(DEMO_DATA_DIR / "petitions.jsonl"), "--output", str(out),
              "--repeats-model", str(repeats_model)], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text("utf-8").splitlines()]
    assert [x["id"] for x in lines] == [x["id"] for x in rows] and all(set(x) == {"id", "matter"} for x in lines)
    matter_of = {x["id"]: x["matter"] for x in lines}
    assert all(matter_of[m[2:]] == m for m in matter_of.values())  # named after a member
    assert 5 < len(set(matter_of.values())) < len(rows)  # some petitions grouped, not all in one
    shuffled = rows[::-1]
    write_jsonl(tmp_path / "rev.jsonl", shuffled)
    out2 = tmp_path / "m2.jsonl"
    r = _run(["matters", "build", "--input", str(tmp_path / "rev.jsonl"), "--output", str(out2),
              "--repeats-model", str(repeats_model)], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    lines2 = [json.loads(x) for x in out2.read_text("utf-8").splitlines()]
    assert [x["id"] for x in lines2] == [x["id"] for x in shuffled]
    assert {x["id"]: x["matter"] for x in lines2} == matter_of


def test_cli_matters_build_on_a_large_input_uses_the_graph_index(tmp_path, monkeypatch, repeats_model):
    """Above EXACT_SEARCH_MAX petitions the build searches an HNSW graph; on the demo set (threshold lowered)
    it gives the exact search's matters, and an explicit XINFANG_INDEX_FACTORY wins."""
    import json

    import xinfang.models.matters as matters
    from xinfang.models.vector_index import VectorIndex
    from xinfang.settings import DEMO_DATA_DIR

    def build(name: str) -> dict[str, str]:
        out = tmp_path / f"{name}.jsonl"
        r = _run(["matters", "build", "--input", str(DEMO_DATA_DIR / "petitions.jsonl"), "--output", str(out),
                  "--repeats-model", str(repeats_model)], tmp_path, monkeypatch)
        assert r.exit_code == 0, r.output
        return {x["id"]: x["matter"] for x in map(json.loads, out.read_text("utf-8").splitlines())}

    exact = build("exact")
    built: list[str] = []
    original = VectorIndex.rebuild.__func__

    def spy(cls, ids, vectors, dim=None, factory="Flat", *a, **kw):
        built.append(factory)
        return original(cls, ids, vectors, dim, factory, *a, **kw)

    monkeypatch.setattr(VectorIndex, "rebuild", classmethod(spy))
    monkeypatch.setattr(matters, "EXACT_SEARCH_MAX", 50)
    assert build("graph") == exact and built == ["HNSW32"]
    monkeypatch.setenv("XINFANG_INDEX_FACTORY", "Flat")
    build("explicit")
    assert built[-1] == "Flat"


def test_cli_matters_build_bad_model_dir(tmp_path, monkeypatch):
    from xinfang.settings import DEMO_DATA_DIR

    r = _run(["matters", "build", "--input", str(DEMO_DATA_DIR / "petitions.jsonl"), "--output",
              str(tmp_path / "m.jsonl"), "--repeats-model", str(tmp_path)], tmp_path, monkeypatch)
    assert r.exit_code != 0 and "embedder not found" in str(r.exception)
    assert not (tmp_path / "m.jsonl").exists()


def test_repeats_model_embedder_keeps_its_recipe_settings(tmp_path, repeats_model):
    """A `repeats train` directory is embedded with the prefix and length it was fine-tuned with."""
    import json
    import shutil

    from xinfang.commands.matters import load_repeat_model

    model = tmp_path / "R"
    shutil.copytree(repeats_model, model)
    (model / "embedder" / "xinfang_embedder.json").write_text(json.dumps({"prefix": "query: ", "max_length": 64}))
    emb, scorer = load_repeat_model(model)
    assert (emb.prefix, emb.max_length) == ("query: ", 64) and scorer.threshold > 0
