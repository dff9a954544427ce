"""Matters through the real app: joining at intake, merge, cannot-link, split, status, delete, hot issues."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_fixtures import auth, create_keys, make_config, running_app


@pytest.fixture(scope="module")
def literal_scorer(tmp_path_factory) -> Path:
    """A repeat scorer on char-bigram overlap alone, so that which petitions link does not hang on the tiny
    encoder's (random) geometry: near-copies link (p ~ 1), unrelated texts do not (p ~ 0)."""
    from xinfang.models.repeat_scorer import RepeatScorer

    scorer = RepeatScorer(["bigram_jaccard"], [0.0], [1.0], [20.0], -8.0, threshold=0.5)
    return scorer.save(tmp_path_factory.mktemp("scorer") / "literal.json")


@pytest.fixture(scope="module")
def env(tmp_path_factory, service_models, tiny_encoder_dir, literal_scorer):
    bundles, _ = service_models
    config = make_config(tmp_path_factory.mktemp("svc-matters"), bundles, tiny_encoder_dir,
                         repeat_scorer=literal_scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        yield client, keys, config


PARK = "青山市临江区翠湖花园小区物业擅自上调停车费，每月从200元涨到400元，业主多次反映无果，请相关部门查处。"
SCHOOL = "白河县石桥镇中心小学食堂饭菜质量差，孩子吃了拉肚子，家长要求教育局调查。"
ROAD = "城东区滨江路夜间渣土车超速，噪音很大，道路破损严重。"


def _post(client, keys, pid, text, title="反映", **kw):
    r = client.post("/v1/petitions", headers=auth(keys["intake"]),
                    json={"id": pid, "title": title, "text": text, **kw})
    assert r.status_code in (200, 201), r.text
    return r.json()


def _matter(client, keys, mid):
    return client.get(f"/v1/matters/{mid}", headers=auth(keys["caseworker"]))


def _fb(client, keys, pid, kind, target):
    return client.post(f"/v1/petitions/{pid}/feedback", headers=auth(keys["caseworker"]),
                       json={"kind": kind, "target_id": target})


def test_intake_joins_or_opens_a_matter_and_says_why(env):
    client, keys, _ = env
    a = _post(client, keys, "mt-a", PARK, petitioner="P1", received_at="2024-05-01T08:00:00+08:00")
    assert a["matter"] == {"id": "M-mt-a", "joined": False, "via": None, "probability": None,
                           "reason": a["matter"]["reason"]} and "新事项" in a["matter"]["reason"]
    b = _post(client, keys, "mt-b", PARK, petitioner="P2", received_at="2024-05-03T08:00:00+08:00")
    assert b["matter"]["joined"] and b["matter"]["id"] == "M-mt-a" and b["matter"]["via"] == "mt-a"
    assert b["matter"]["probability"] >= 0.5 and "mt-a" in b["matter"]["reason"]
    m = _matter(client, keys, "M-mt-a").json()
    assert (m["size"], m["petitioners"], m["status"]) == (2, 2, "open")
    assert m["first"].startswith("2024-05-01") and m["last"].startswith("2024-05-03")
    assert [x["id"] for x in m["members"]] == ["mt-a", "mt-b"] and m["members"][1]["via"] == "mt-a"
    assert "临江区" in m["jurisdictions"] and m["topics"]
    # the retry of an identical body replays the answer, matter included
    again = _post(client, keys, "mt-b", PARK, petitioner="P2", received_at="2024-05-03T08:00:00+08:00")
    assert again["matter"] == b["matter"]
    r = client.get("/v1/petitions/mt-b/matter", headers=auth(keys["caseworker"]))
    assert r.status_code == 200 and r.json()["id"] == "M-mt-a"
    assert client.get("/v1/petitions/mt-b", headers=auth(keys["caseworker"])).json()["matter"] == "M-mt-a"


def test_confirm_merges_reject_records_a_cannot_link(env):
    client, keys, config = env
    c = _post(client, keys, "mt-c", SCHOOL, petitioner="P3")
    d = _post(client, keys, "mt-d", ROAD, petitioner="P4")
    assert c["matter"]["id"] == "M-mt-c" and d["matter"]["id"] == "M-mt-d"
    assert _fb(client, keys, "mt-c", "repeat_confirm", "mt-d").status_code == 201
    merged = _matter(client, keys, "M-mt-c").json()
    assert {x["id"] for x in merged["members"]} == {"mt-c", "mt-d"}
    assert _matter(client, keys, "M-mt-d").status_code == 404
    # rejecting two members of one matter moves the first out and records the cannot-link
    assert _fb(client, keys, "mt-d", "repeat_reject", "mt-c").status_code == 201
    assert {x["id"] for x in _matter(client, keys, "M-mt-c").json()["members"]} == {"mt-c"}
    moved = client.get("/v1/petitions/mt-d/matter", headers=auth(keys["caseworker"])).json()
    assert [x["id"] for x in moved["members"]] == ["mt-d"]
    # feedback that contradicts it: 409 naming both, nothing stored
    before = client.get("/v1/petitions/mt-c/feedback", headers=auth(keys["caseworker"])).json()["items"]
    r = _fb(client, keys, "mt-c", "repeat_confirm", "mt-d")
    assert r.status_code == 409 and "mt-c" in r.json()["message"] and "mt-d" in r.json()["message"]
    assert client.get("/v1/petitions/mt-c/feedback", headers=auth(keys["caseworker"])).json()["items"] == before
    r = client.post("/v1/matters/M-mt-c/merge", headers=auth(keys["caseworker"]), json={"target": moved["id"]})
    assert r.status_code == 409 and "mt-c" in r.json()["message"]
    from xinfang.serving.store import Store

    store = Store(config.db_url)
    actions = [a["action"] for a in store.list_audit(limit=50)]
    store.close()
    assert {"matter.merge", "matter.cannot_link"} <= set(actions)


def test_merge_split_status_and_bad_input(env):
    client, keys, _ = env
    cw = auth(keys["caseworker"])
    _post(client, keys, "mt-e", "青山县桃源镇自来水停水三天没有通知，居民生活困难。")
    _post(client, keys, "mt-f", "高新区某培训机构倒闭后拒不退费，家长维权无门。")
    r = client.post("/v1/matters/M-mt-e/merge", headers=cw, json={"target": "M-mt-e"})
    assert r.status_code == 422 and "itself" in r.json()["message"]
    r = client.post("/v1/matters/M-mt-e/merge", headers=cw, json={"target": "M-gone"})
    assert r.status_code == 404 and "M-gone" in r.json()["message"]
    r = client.post("/v1/matters/M-mt-e/merge", headers=cw, json={"target": "M-mt-f"})
    assert r.status_code == 200 and r.json()["size"] == 2
    r = client.post("/v1/matters/M-mt-e/split", headers=cw, json={"petition_ids": ["mt-e", "mt-f"]})
    assert r.status_code == 422 and "empty" in r.json()["message"]
    r = client.post("/v1/matters/M-mt-e/split", headers=cw, json={"petition_ids": ["mt-a"]})
    assert r.status_code == 422 and "mt-a" in r.json()["message"]
    r = client.post("/v1/matters/M-mt-e/split", headers=cw, json={"petition_ids": ["mt-f"]})
    assert r.status_code == 201 and [x["id"] for x in r.json()["members"]] == ["mt-f"]
    r = client.post("/v1/matters/M-mt-e/status", headers=cw, json={"status": "resolved"})
    assert r.status_code == 200 and r.json()["status"] == "resolved"
    assert client.post("/v1/matters/M-mt-e/status", headers=cw, json={"status": "done"}).status_code == 422
    listed = client.get("/v1/matters?status=resolved", headers=cw).json()
    assert [m["id"] for m in listed["items"]] == ["M-mt-e"] and listed["total"] == 1
    assert client.get("/v1/matters?min_size=2", headers=cw).json()["items"][0]["size"] >= 2
    assert client.get("/v1/matters?since=2030-01-01T00:00:00&until=2020-01-01T00:00:00",
                      headers=cw).status_code == 422
    assert client.get("/v1/matters/M-mt-e", headers=auth(keys["intake"])).status_code == 403


def test_delete_keeps_the_matter_consistent(env):
    client, keys, _ = env
    admin = auth(keys["admin"])
    _post(client, keys, "mt-g", PARK, petitioner="P9", received_at="2024-06-01T08:00:00+08:00")
    mid = client.get("/v1/petitions/mt-g/matter", headers=auth(keys["caseworker"])).json()
    assert mid["id"] == "M-mt-a" and mid["size"] == 3 and mid["last"].startswith("2024-06-01")
    assert client.delete("/v1/petitions/mt-g", headers=admin).status_code == 200
    m = _matter(client, keys, "M-mt-a").json()
    assert m["size"] == 2 and m["last"].startswith("2024-05-03") and m["petitioners"] == 2
    for pid in ("mt-a", "mt-b"):
        assert client.delete(f"/v1/petitions/{pid}", headers=admin).status_code == 200
    assert _matter(client, keys, "M-mt-a").status_code == 404


def test_hot_issues_route(env):
    client, keys, _ = env
    cw = auth(keys["caseworker"])
    for i in range(3):
        _post(client, keys, f"mt-h{i}", ROAD + "再次反映。" * i, petitioner=f"Q{i}",
              received_at=f"2024-07-0{i + 1}T08:00:00+08:00")
    r = client.get("/v1/hot-issues?limit=3", headers=cw)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items and [i["rank"] for i in items] == list(range(1, len(items) + 1))
    assert all(set(i["terms"]) == {"volume", "petitioners", "support", "recency", "growth"} for i in items)
    assert items == sorted(items, key=lambda i: -i["heat"])
    assert client.get("/v1/hot-issues?since=2024-08-01T00:00:00&until=2024-07-01T00:00:00",
                      headers=cw).status_code == 422
    assert client.get("/v1/hot-issues?since=2031-01-01T00:00:00", headers=cw).json()["items"] == []
    assert client.get("/v1/hot-issues?limit=0", headers=cw).status_code == 422


def test_restart_gives_every_stored_petition_a_matter(tmp_path, service_models, tiny_encoder_dir, literal_scorer):
    from sqlalchemy import delete

    from xinfang.serving.matters_store import Matter, MatterMember
    from xinfang.serving.store import Store

    config = make_config(tmp_path, service_models[0], tiny_encoder_dir, repeat_scorer=literal_scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        _post(client, keys, "r-1", PARK)
        _post(client, keys, "r-2", SCHOOL)
    store = Store(config.db_url)
    with store.session() as s, s.begin():  # as if stored before matters existed
        s.execute(delete(MatterMember))
        s.execute(delete(Matter))
    store.close()
    with running_app(config) as client:
        for pid in ("r-1", "r-2"):
            r = client.get(f"/v1/petitions/{pid}/matter", headers=auth(keys["caseworker"]))
            assert r.status_code == 200 and r.json()["id"] == f"M-{pid}"
    assert Path(config.data_dir).exists()


def test_a_store_opened_alone_has_the_matter_tables(tmp_path) -> None:
    """The bulk loader opens the store before anything imports the matter routes (fresh process)."""
    import subprocess
    import sys

    db = tmp_path / "s.db"
    code = ("import sqlalchemy as sa; from xinfang.serving.store import Store; "
            f"s = Store('sqlite:///{db}'); print(sorted(sa.inspect(s.engine).get_table_names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "matter_members" in out and "matters" in out and "matter_cannot_links" in out


def test_membership_is_committed_with_the_petition(tmp_path) -> None:
    """The intake's membership is part of the petition's insert: both are stored, or neither."""
    from datetime import UTC, datetime

    from xinfang.models.matters import JoinDecision
    from xinfang.serving.matters_ops import membership
    from xinfang.serving.matters_store import MatterStore
    from xinfang.serving.store import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    ms = MatterStore(store)

    def row(pid: str) -> dict:
        return {"id": pid, "title": None, "text": "x", "petitioner": None, "received_at": None, "channel": None,
                "text_hash": "0" * 64, "request_hash": "0" * 64, "labels": {}, "topic": None, "department": None,
                "needs_review": False, "repeat_count": 0, "models": {}, "response": {},
                "created_at": datetime.now(UTC)}

    assert store.insert_petition(row("t-a"), membership("t-a", JoinDecision(None)))[0]
    d = JoinDecision("M-t-a", "t-a", 0.9, "重复概率 0.90")
    assert store.insert_petition(row("t-b"), membership("t-b", d))[0]
    assert ms.matter_of(["t-a", "t-b"]) == {"t-a": "M-t-a", "t-b": "M-t-a"}

    def broken(session) -> None:
        membership("t-c", d)(session)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.insert_petition(row("t-c"), broken)
    assert store.get_petition("t-c") is None and ms.matter_of(["t-c"]) == {}
    # a membership left over from a deleted petition of the same id is replaced, not a conflict
    assert store.delete_petition("t-b", "test")
    assert store.insert_petition(row("t-b"), membership("t-b", JoinDecision(None)))[0]
    assert ms.matter_of(["t-b"]) == {"t-b": "M-t-b"} and ms.get("M-t-a")["size"] == 1
    store.close()
