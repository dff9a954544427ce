"""Hot issues: heat terms and ordering, order independence, windows and bad input, the Excel tables."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from xinfang.errors import DataError
from xinfang.models.hot_issues import (
    DETAIL_COLUMNS,
    HEAT_TERMS,
    ISSUE_COLUMNS,
    describe,
    heat,
    hot_issues,
    place_and_people,
)


def _p(pid, title, day, user=None, likes=None, text=None):
    row = {"id": pid, "title": title, "text": text or f"{title}，请尽快处理。", "user": user,
           "time": f"2019/3/{day} 10:00:00" if day else None}
    if likes is not None:
        row["likes"], row["dislikes"] = likes, 0
    return row


def _corpus():
    rows = [_p(f"a{i}", "A2区丽发新城搅拌站噪音扰民", 1 + i, user=f"U{i}", likes=3, text="A2区丽发新城小区旁搅拌站"
               "夜间施工噪音，业主无法休息") for i in range(8)]
    rows += [_p(f"b{i}", "A7县星沙路灯不亮", 20 + i, user="U99", likes=0) for i in range(5)]
    rows += [_p("c0", "咨询人才购房补贴", 28, user="U50", likes=10)]
    matter_of = {r["id"]: "M-" + r["id"][0] for r in rows}
    return rows, matter_of


def test_heat_terms_weights_and_reasons():
    assert sum(HEAT_TERMS.values()) == pytest.approx(1.0)
    rows, _ = _corpus()
    h = heat(rows[:8])
    assert set(h["terms"]) == set(HEAT_TERMS)
    assert all(t["reason"] and 0 <= t["value"] <= 1 for t in h["terms"].values())
    assert h["heat"] == pytest.approx(sum(t["points"] for t in h["terms"].values()))
    assert "8 件" in h["terms"]["volume"]["reason"] and "8 位" in h["terms"]["petitioners"]["reason"]
    # no times: no recency, said so; no likes in the data: no support, said so
    untimed = [{**r, "time": None} for r in rows[8:13]]
    for r in untimed:
        r.pop("likes"), r.pop("dislikes")
    h2 = heat(untimed)
    assert h2["terms"]["recency"]["points"] == 0 and "无时间" in h2["terms"]["recency"]["reason"]
    assert h2["terms"]["support"]["points"] == 0 and "无点赞" in h2["terms"]["support"]["reason"]


def test_heat_ranks_volume_and_people_over_one_writer():
    rows, matter_of = _corpus()
    issues = hot_issues(rows, matter_of)
    # one writer's five petitions (M-b) count as three and weigh less than another's single, supported one
    assert [i["matter"] for i in issues] == ["M-a", "M-c", "M-b"]
    assert "每位信访人至多计 3 件，计 3 件" in issues[2]["terms"]["volume"]["reason"]
    assert issues[0]["size"] == 8 and issues[0]["rank"] == 1
    assert issues[0]["first"].startswith("2019-03-01") and issues[0]["last"].startswith("2019-03-08")
    assert "A2区" in issues[0]["place"] and "丽发新城" in issues[0]["place"] and "业主" in issues[0]["place"]
    assert issues[0]["description"] == "A2区丽发新城搅拌站噪音扰民"
    assert len(hot_issues(rows, matter_of, top=2)) == 2


def test_distinct_petitioners_outweigh_one_persons_volume():
    one = [_p(f"o{i}", "A7县星沙路灯不亮", 10 + i, user="U1", likes=1) for i in range(9)]
    many = [_p(f"m{i}", "A1区某小区停车费上涨", 10 + i, user=f"V{i}", likes=1) for i in range(3)]
    issues = hot_issues(one + many, {r["id"]: "M-" + r["id"][0] for r in one + many})
    assert [i["matter"] for i in issues] == ["M-m", "M-o"]
    t_one, t_many = issues[1]["terms"], issues[0]["terms"]
    assert t_one["volume"]["value"] == t_many["volume"]["value"]  # 9 petitions of one person count as 3
    assert t_many["petitioners"]["points"] > t_one["petitioners"]["points"]
    assert HEAT_TERMS["petitioners"] > HEAT_TERMS["volume"]


def test_heat_does_not_depend_on_input_order():
    rows, matter_of = _corpus()
    ref = hot_issues(rows, matter_of, since=datetime(2019, 3, 5), until=datetime(2019, 3, 31))
    rng = random.Random(1)
    for _ in range(5):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        got = hot_issues(shuffled, dict(reversed(list(matter_of.items()))), since=datetime(2019, 3, 5),
                         until=datetime(2019, 3, 31))
        assert [(i["matter"], i["heat"], i["place"], i["description"], [m["id"] for m in i["members"]])
                for i in got] == [(i["matter"], i["heat"], i["place"], i["description"],
                                   [m["id"] for m in i["members"]]) for i in ref]


def test_window_growth_and_bad_input():
    rows, matter_of = _corpus()
    late = hot_issues(rows, matter_of, since=datetime(2019, 3, 20), until=datetime(2019, 3, 31))
    b = next(i for i in late if i["matter"] == "M-b")
    assert b["terms"]["growth"]["value"] > 0 and "上一等长窗口 0 件" in b["terms"]["growth"]["reason"]
    assert all(i["matter"] != "M-a" for i in late)  # M-a's petitions all fall before the window
    with pytest.raises(DataError, match="after until"):
        hot_issues(rows, matter_of, since=datetime(2019, 4, 1), until=datetime(2019, 3, 1))
    with pytest.raises(DataError, match="no petitions in the window"):
        hot_issues(rows, matter_of, since=datetime(2020, 1, 1), until=datetime(2020, 2, 1))
    bad = rows + [{**rows[0], "id": "x", "time": "31/31/2019", "_row": 14}]
    with pytest.raises(DataError, match="row 14: cannot parse time"):
        hot_issues(bad, {**matter_of, "x": "M-x"})
    with pytest.raises(DataError, match="has no matter"):
        hot_issues(rows, {})


def test_place_and_description_come_from_the_members():
    members = [_p("1", "K8县白云村修路占地", 1, text="K8县白云村村民反映修路占用山林"),
               _p("2", "白云村修路占山林", 2, text="K8县白云村修路侵占三户村民山林")]
    assert place_and_people(members) == "K8县 白云村 村民"
    assert describe(members) in {"K8县白云村修路占地", "白云村修路占山林"}
    assert place_and_people([{"id": "z", "title": "你好", "text": "谢谢"}]) == "（未指明）"


def test_cli_hot_issues_writes_the_two_tables(tmp_path, monkeypatch, repeats_model):
    import json

    import openpyxl
    from test_matters import _run

    from xinfang.records import write_jsonl

    rows = _corpus()[0]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "hot"
    r = _run(["hot-issues", "--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--top", "2",
              "--repeats-model", str(repeats_model)], tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    issues_ws = openpyxl.load_workbook(out / "热点问题表.xlsx").active
    table = list(issues_ws.iter_rows(values_only=True))
    assert list(table[0]) == ISSUE_COLUMNS == ["热度排名", "问题ID", "热度指数", "时间范围", "地点/人群", "问题描述"]
    assert [row[0] for row in table[1:]] == [1, 2] and table[1][2] >= table[2][2]
    detail = list(openpyxl.load_workbook(out / "热点问题留言明细表.xlsx").active.iter_rows(values_only=True))
    assert list(detail[0]) == DETAIL_COLUMNS == ["问题ID", "留言编号", "留言用户", "留言主题", "留言时间", "留言详情",
                                                 "点赞数", "反对数"]
    doc = json.loads((out / "hot_issues.json").read_text("utf-8"))
    assert len(doc) == 2 and len(detail) - 1 == sum(len(i["members"]) for i in doc)
    assert {row[1] for row in detail[1:]} <= {r["id"] for r in rows}
    assert all(set(i["terms"]) == set(HEAT_TERMS) for i in doc)
    # bad input: since after until, an empty window, an unparseable date
    for args, msg in ((["--since", "2019-04-01", "--until", "2019-03-01"], "after --until"),
                      (["--since", "2020-01-01"], "no petitions"), (["--since", "soon"], "not a date")):
        r = _run(["hot-issues", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "x"), *args,
                  "--repeats-model", str(repeats_model)], tmp_path, monkeypatch)
        assert r.exit_code != 0 and msg in str(r.exception), (args, r.exception)
    assert not (tmp_path / "x").exists()
