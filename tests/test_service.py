"""The HTTP API (xinfang.serving) end to end with tiny bundles trained on the demo data and the tiny encoder:
auth and roles, every route, idempotency, bad input (never a 500), reload, restart consistency, delete,
feedback + audit, metrics, logs, micro-batching and the ONNX runtime."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import (
    auth,
    copy_bundle,
    create_keys,
    demo_petitions,
    make_config,
    running_app,
)

from xinfang.models.vector_index import VectorIndex
from xinfang.serving.batcher import MicroBatcher
from xinfang.serving.store import Store


@pytest.fixture(scope="session")
def bundles(service_models) -> list[Path]:
    return service_models[0]


@pytest.fixture(scope="session")
def scorer(service_models) -> Path | None:
    return service_models[1]


def _config(data_dir, bundles, encoder, scorer, **kw):
    return make_config(data_dir, bundles, encoder, repeat_scorer=scorer, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory, bundles, tiny_encoder_dir, scorer):
    """One running app for the read/write tests of this module, with a key per role."""
    config = _config(tmp_path_factory.mktemp("svc"), bundles, tiny_encoder_dir, scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        yield client, keys


def _petition(i: int, **extra) -> dict:
    rows = demo_petitions()
    r = rows[i % len(rows)]
    body = {"title": r.get("title"), "text": r.get("text") or r.get("title")}
    body.update(extra)
    return body


# ------------------------------------------------------------------------------------------------ auth
ROUTES = [  # method, path, body, roles allowed (admin always)
    ("post", "/v1/classify", {"petitions": [{"text": "小区停车收费问题"}]}, {"intake"}),
    ("post", "/v1/petitions", {"text": "小区停车收费问题"}, {"intake"}),
    ("get", "/v1/petitions", None, {"caseworker"}),
    ("get", "/v1/petitions/nope", None, {"caseworker"}),
    ("get", "/v1/petitions/nope/repeats", None, {"caseworker"}),
    ("post", "/v1/repeats/search", {"text": "小区停车收费问题"}, {"caseworker"}),
    ("post", "/v1/petitions/nope/feedback", {"kind": "topic_correction", "label": "城乡建设"}, {"caseworker"}),
    ("get", "/v1/petitions/nope/feedback", None, {"caseworker"}),
    ("delete", "/v1/petitions/nope", None, set()),
    ("get", "/v1/models", None, {"intake", "caseworker"}),
    ("post", "/v1/models/reload", {"model_dirs": ["/nonexistent"]}, set()),
    ("get", "/metrics", None, {"intake", "caseworker"}),
]


@pytest.mark.parametrize("method,path,body,allowed", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_auth_and_roles(env, method, path, body, allowed) -> None:
    client, keys = env
    kwargs = {"json": body} if body is not None else {}
    r = getattr(client, method)(path, **kwargs) if method != "delete" else client.delete(path)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    bad = getattr(client, method)(path, headers=auth("xf_not-a-key"), **kwargs)
    assert bad.status_code == 401
    for role in ("intake", "caseworker", "admin"):
        r = getattr(client, method)(path, headers=auth(keys[role]), **kwargs)
        if role in allowed or role == "admin":
            assert r.status_code not in (401, 403, 500), (role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert role in r.json()["message"]


def test_health_needs_no_key(env) -> None:
    client, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert set(r.json()["checks"]) == {"models", "index", "embedder", "repeat_scorer", "store",
                                       "index_caught_up"}


def test_revoked_key_is_refused(env) -> None:
    client, _ = env
    store = client.service.store
    key = store.create_key("temp-reader", "caseworker")
    assert client.get("/v1/petitions", headers=auth(key)).status_code == 200
    assert store.revoke_key("temp-reader")
    assert client.get("/v1/petitions", headers=auth(key)).status_code == 401
    actions = [a["action"] for a in store.list_audit(limit=10)]
    assert "key.create" in actions and "key.revoke" in actions


# ------------------------------------------------------------------------------------------------ classify
def test_classify_single_and_batch(env) -> None:
    client, keys = env
    models = client.get("/v1/models", headers=auth(keys["intake"])).json()
    labels = {t: set(models["models"][t]["labels"]) for t in ("topic", "department")}
    one = client.post("/v1/classify", json={"petitions": [_petition(0, id="c-1")]}, headers=auth(keys["intake"]))
    assert one.status_code == 200, one.text
    body = one.json()
    res = body["results"][0]
    assert res["id"] == "c-1"
    assert res["topic"]["label"] in labels["topic"] and 0 <= res["topic"]["score"] <= 1
    assert res["topic"]["top"][0]["label"] == res["topic"]["label"]
    assert res["department"]["label"] in labels["department"]
    assert isinstance(res["needs_review"], bool)
    assert body["models"]["topic"]["version"] == models["models"]["topic"]["version"]
    batch = [_petition(i) for i in range(10)]
    many = client.post("/v1/classify", json={"petitions": batch}, headers=auth(keys["intake"])).json()
    assert len(many["results"]) == 10
    # the same petition gets the same answer alone and inside a batch
    alone = client.post("/v1/classify", json={"petitions": [batch[3]]}, headers=auth(keys["intake"])).json()
    assert alone["results"][0]["topic"]["label"] == many["results"][3]["topic"]["label"]
    assert alone["results"][0]["topic"]["score"] == pytest.approx(many["results"][3]["topic"]["score"], abs=1e-4)


def test_concurrent_requests_are_micro_batched(env) -> None:
    client, keys = env
    texts = [_petition(i) for i in range(16)]
    expected = [client.post("/v1/classify", json={"petitions": [t]}, headers=auth(keys["intake"])).json()
                ["results"][0]["topic"]["label"] for t in texts]
    before = _metric(client, keys, "xinfang_batch_size_count", 'kind="classify"')
    items_before = _metric(client, keys, "xinfang_batch_size_sum", 'kind="classify"')
    results: dict[int, str] = {}

    def call(i: int) -> None:
        r = client.post("/v1/classify", json={"petitions": [texts[i]]}, headers=auth(keys["intake"]))
        results[i] = r.json()["results"][0]["topic"]["label"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(16)] == expected
    batches = _metric(client, keys, "xinfang_batch_size_count", 'kind="classify"') - before
    items = _metric(client, keys, "xinfang_batch_size_sum", 'kind="classify"') - items_before
    assert items == 16 and 1 <= batches <= 16  # every petition went through the batcher, in <= 16 model calls


# ------------------------------------------------------------------------------------------------ petitions
def test_create_is_idempotent_on_client_id(env) -> None:
    client, keys = env
    body = _petition(1, id="idem-1", petitioner="张三", channel="web", received_at="2024-05-01T08:00:00")
    first = client.post("/v1/petitions", json=body, headers=auth(keys["intake"]))
    assert first.status_code == 201, first.text
    again = client.post("/v1/petitions", json=body, headers=auth(keys["intake"]))
    assert again.status_code == 200 and again.json() == first.json()
    other = client.post("/v1/petitions", json={**body, "text": body["text"] + "（补充）"}, headers=auth(keys["intake"]))
    assert other.status_code == 409 and other.json()["fields"][0]["field"] == "id"
    a = client.post("/v1/petitions", json=_petition(2), headers=auth(keys["intake"])).json()
    b = client.post("/v1/petitions", json=_petition(2), headers=auth(keys["intake"])).json()
    assert a["id"] != b["id"]  # no client id: two petitions
    got = client.get("/v1/petitions/idem-1", headers=auth(keys["caseworker"])).json()
    assert got["petitioner"] == "张三" and got["channel"] == "web" and got["received_at"].startswith("2024-05-01T08")
    assert got["labels"] == first.json()["labels"]
    assert client.service.keeper.index.contains("idem-1")


def test_concurrent_identical_creates_store_one(env) -> None:
    client, keys = env
    body = _petition(3, id="race-1")
    codes: list[int] = []

    def post() -> None:
        codes.append(client.post("/v1/petitions", json=body, headers=auth(keys["intake"])).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 5 + [201]


def test_list_filters_and_paging(env) -> None:
    client, keys = env
    for i in range(5):
        client.post("/v1/petitions", json=_petition(10 + i, id=f"list-{i}"), headers=auth(keys["intake"]))
    h = auth(keys["caseworker"])
    page = client.get("/v1/petitions", params={"limit": 3}, headers=h).json()
    assert len(page["items"]) == 3 and page["total"] >= 5
    assert "text" not in page["items"][0] and "petitioner" not in page["items"][0]
    times = [p["created_at"] for p in page["items"]]
    assert times == sorted(times, reverse=True)
    nxt = client.get("/v1/petitions", params={"limit": 3, "offset": 3}, headers=h).json()
    assert not {p["id"] for p in page["items"]} & {p["id"] for p in nxt["items"]}
    topic = page["items"][0]["labels"]["topic"]["label"]
    same = client.get("/v1/petitions", params={"topic": topic, "limit": 200}, headers=h).json()
    assert same["items"] and all(p["labels"]["topic"]["label"] == topic for p in same["items"])
    review = client.get("/v1/petitions", params={"needs_review": "true", "limit": 200}, headers=h).json()
    assert all(p["labels"]["needs_review"] for p in review["items"])
    future = client.get("/v1/petitions", params={"since": "2999-01-01T00:00:00Z"}, headers=h).json()
    assert future["total"] == 0


def test_repeats_of_stored_and_free_text(env) -> None:
    client, keys = env
    text = "A3区丽发新城小区旁边的搅拌站噪音和粉尘污染严重，夜间施工影响居民休息，请求相关部门处理。"
    client.post("/v1/petitions", json={"id": "rep-a", "title": "搅拌站噪音扰民", "text": text,
                                       "petitioner": "UU001"}, headers=auth(keys["intake"]))
    created = client.post("/v1/petitions", json={"id": "rep-b", "title": "搅拌站噪音扰民", "text": text + "再次反映。",
                                                 "petitioner": "UU001"}, headers=auth(keys["intake"])).json()
    assert created["repeats"] and created["repeats"][0]["id"] == "rep-a"
    cand = created["repeats"][0]
    assert set(cand) == {"id", "similarity", "probability", "is_repeat", "reasons"}
    assert "同一信访人" in cand["reasons"]
    h = auth(keys["caseworker"])
    rep = client.get("/v1/petitions/rep-b/repeats", params={"k": 3}, headers=h).json()
    assert rep["id"] == "rep-b" and rep["candidates"][0]["id"] == "rep-a"
    assert all(c["id"] != "rep-b" for c in rep["candidates"]) and len(rep["candidates"]) <= 3
    found = client.post("/v1/repeats/search", json={"text": text, "k": 2}, headers=h).json()
    assert {c["id"] for c in found["candidates"]} <= {"rep-a", "rep-b"} | {c["id"] for c in found["candidates"]}
    assert found["candidates"][0]["id"] in {"rep-a", "rep-b"}
    before = client.get("/v1/petitions", headers=h).json()["total"]
    client.post("/v1/repeats/search", json={"text": "只是查询"}, headers=h)
    assert client.get("/v1/petitions", headers=h).json()["total"] == before  # nothing stored


def test_delete_removes_from_store_and_index(env) -> None:
    client, keys = env
    client.post("/v1/petitions", json=_petition(20, id="del-1"), headers=auth(keys["intake"]))
    client.post("/v1/petitions/del-1/feedback", json={"kind": "topic_correction", "label": "城乡建设"},
                headers=auth(keys["caseworker"]))
    assert client.service.keeper.index.contains("del-1")
    r = client.delete("/v1/petitions/del-1", headers=auth(keys["admin"]))
    assert r.status_code == 200 and r.json() == {"id": "del-1", "deleted": True}
    assert client.get("/v1/petitions/del-1", headers=auth(keys["caseworker"])).status_code == 404
    assert not client.service.keeper.index.contains("del-1")
    assert client.service.store.list_feedback(petition_id="del-1") == []
    assert client.delete("/v1/petitions/del-1", headers=auth(keys["admin"])).status_code == 404
    audit = client.service.store.list_audit(action="petition.delete")
    assert audit[0]["object_ids"] == ["del-1"] and audit[0]["who"].startswith("admin")


def test_feedback_and_audit(env) -> None:
    client, keys = env
    for pid in ("fb-1", "fb-2"):
        client.post("/v1/petitions", json=_petition(30, id=pid), headers=auth(keys["intake"]))
    h = auth(keys["caseworker"])
    ok = [
        {"kind": "repeat_confirm", "target_id": "fb-2"},
        {"kind": "repeat_reject", "target_id": "fb-2"},
        {"kind": "topic_correction", "label": "城乡建设"},
        {"kind": "department_correction", "label": "住房和城乡建设"},
    ]
    for fb in ok:
        r = client.post("/v1/petitions/fb-1/feedback", json=fb, headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["who"] == next(k["name"] for k in client.service.store.list_keys() if k["role"] == "caseworker")
    items = client.get("/v1/petitions/fb-1/feedback", headers=h).json()["items"]
    assert [i["kind"] for i in items] == [f["kind"] for f in ok]
    bad = [
        ({"kind": "repeat_confirm"}, "target_id"),
        ({"kind": "topic_correction"}, "label"),
        ({"kind": "repeat_confirm", "target_id": "no-such"}, "target_id"),
        ({"kind": "repeat_confirm", "target_id": "fb-1"}, "target_id"),
        ({"kind": "maybe", "target_id": "fb-2"}, "kind"),
        ({"kind": "topic_correction", "label": "  "}, "label"),
    ]
    for body, field in bad:
        r = client.post("/v1/petitions/fb-1/feedback", json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
        assert field in r.json()["message"] or any(field in f["field"] for f in r.json().get("fields", []))
    assert client.post("/v1/petitions/none/feedback", json=ok[2], headers=h).status_code == 404
    audit = client.service.store.list_audit(limit=50)
    fb_rows = [a for a in audit if a["action"].startswith("feedback.") and "fb-1" in a["object_ids"]]
    assert {a["action"] for a in fb_rows} >= {"feedback.repeat_confirm", "feedback.topic_correction"}
    for a in fb_rows:  # ids only, never labels or text
        assert all(i.startswith(("fb-", "feedback:")) for i in a["object_ids"])


# ------------------------------------------------------------------------------------------------ bad input
BAD_INPUTS = [
    ("/v1/classify", b"{not json", "body"),
    ("/v1/classify", b"\xff\xfe{}", "body"),
    ("/v1/classify", {"petitions": []}, "petitions"),
    ("/v1/classify", {"petitions": [{"title": "只有标题"}]}, "text"),
    ("/v1/classify", {"petitions": [{"text": 123}]}, "text"),
    ("/v1/classify", {"petitions": [{"text": ""}]}, "text"),
    ("/v1/classify", {"petitions": [{"text": "   "}]}, "text"),
    ("/v1/classify", {"petitions": [{"text": "控制\u0007字符"}]}, "text"),
    ("/v1/classify", {"petitions": [{"text": "ok", "title": "\x00"}]}, "title"),
    ("/v1/classify", {"petitions": [{"text": "x" * 100_000}]}, "text"),
    ("/v1/classify", {"petitions": [{"text": "ok"}] * 65}, "petitions"),
    ("/v1/classify", {"petitions": [{"text": "ok", "id": "a"}, {"text": "ok2", "id": "a"}]}, "petitions"),
    ("/v1/classify", {"petitions": [{"text": "ok", "extra": 1}]}, "extra"),
    ("/v1/classify", {"petitions": "text"}, "petitions"),
    ("/v1/classify", [1, 2], "body"),
    ("/v1/classify", {"petitions": [{"text": "<br/><p></p>"}]}, "text"),
    ("/v1/petitions", {"text": "ok", "id": "bad id/with slash"}, "id"),
    ("/v1/petitions", {"text": "ok", "received_at": "yesterday"}, "received_at"),
    ("/v1/petitions", {"text": "ok", "petitioner": ["x"]}, "petitioner"),
    ("/v1/petitions", {"title": "no text"}, "text"),
    ("/v1/repeats/search", {"text": "ok", "k": 0}, "k"),
    ("/v1/repeats/search", {"text": "ok", "k": "many"}, "k"),
]


@pytest.mark.parametrize("path,body,field", BAD_INPUTS, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_4xx_naming_the_field(env, path, body, field) -> None:
    client, keys = env
    headers = {**auth(keys["admin"]), "content-type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    r = client.post(path, content=content, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    out = r.json()
    assert out["error"] and out["request_id"]
    named = out["message"] + " " + " ".join(f["field"] + " " + f["message"] for f in out.get("fields") or [])
    assert field in named, out


def test_lone_surrogate_is_422(env) -> None:
    client, keys = env
    raw = b'{"petitions": [{"text": "\\ud800 lone"}]}'  # valid JSON escape, invalid Unicode
    r = client.post("/v1/classify", content=raw, headers={**auth(keys["intake"]), "content-type": "application/json"})
    assert r.status_code == 422 and "text" in r.json()["message"]
    r = client.post("/v1/petitions", content=b'{"text": "ok", "title": "\\udfff"}',
                    headers={**auth(keys["intake"]), "content-type": "application/json"})
    assert r.status_code == 422 and "title" in r.json()["message"]


def test_body_size_limit_413(env) -> None:
    client, keys = env
    limit = client.service.config.limits.max_body_bytes
    big = b'{"petitions": [{"text": "' + b"a" * (limit + 10) + b'"}]}'
    r = client.post("/v1/classify", content=big, headers={**auth(keys["intake"]), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():  # no content-length: counted while streaming
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    r = client.post("/v1/classify", content=chunks(), headers={**auth(keys["intake"]), "content-type": "application/json"})
    assert r.status_code == 413


def test_bad_paths_and_queries(env) -> None:
    client, keys = env
    h = auth(keys["admin"])
    assert client.get("/v1/petitions/" + "x" * 200, headers=h).status_code == 422
    assert client.get("/v1/petitions", params={"limit": 0}, headers=h).status_code == 422
    assert client.get("/v1/petitions", params={"limit": "lots"}, headers=h).status_code == 422
    assert client.get("/v1/petitions", params={"since": "soon"}, headers=h).status_code == 422
    assert client.get("/v1/petitions/x/repeats", params={"k": 10_000}, headers=h).status_code == 422
    assert client.get("/v1/nothing", headers=h).status_code == 404
    assert client.put("/v1/classify", headers=h).status_code == 405


# ------------------------------------------------------------------------------------------------ metrics, logs
def _metric(client, keys, name: str, label: str = "") -> float:
    text = client.get("/metrics", headers=auth(keys["admin"])).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics(env) -> None:
    client, keys = env
    client.post("/v1/classify", json={"petitions": [_petition(5)]}, headers=auth(keys["intake"]))
    text = client.get("/metrics", headers=auth(keys["caseworker"])).text
    assert 'xinfang_requests_total{method="POST",route="/v1/classify",status="200"}' in text
    assert 'xinfang_request_seconds_bucket{le="0.05",method="POST",route="/v1/classify"}' in text
    assert 'xinfang_batch_size_count{kind="classify"}' in text
    assert "xinfang_model_info{" in text and 'task="topic"' in text
    size = _metric(client, keys, "xinfang_index_size")
    assert size == len(client.service.keeper.index) > 0


def test_logs_are_json_with_ids_and_no_text(env, caplog) -> None:
    from xinfang.serving.observability import JsonFormatter

    client, keys = env
    secret_text = "这是一段不应出现在日志里的信访内容"
    with caplog.at_level(logging.INFO, logger="xinfang.access"):
        client.post("/v1/petitions", json={"id": "log-1", "text": secret_text, "petitioner": "李四"},
                    headers={**auth(keys["intake"]), "x-request-id": "req-42"})
    recs = [r for r in caplog.records if r.name == "xinfang.access"]
    assert recs
    line = json.loads(JsonFormatter().format(recs[-1]))
    assert line["request_id"] == "req-42" and line["route"] == "/v1/petitions" and line["status"] == 201
    assert line["petition_ids"] == ["log-1"] and line["ms"] > 0 and line["key"].startswith("intake")
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert secret_text not in everything and "李四" not in everything


def test_openapi_documents_routes_and_limits(env) -> None:
    client, _ = env
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/v1/classify", "/v1/petitions", "/v1/petitions/{pid}", "/v1/petitions/{pid}/repeats",
              "/v1/repeats/search", "/v1/petitions/{pid}/feedback", "/v1/models", "/v1/models/reload",
              "/healthz", "/readyz", "/metrics"):
        assert p in paths, p
    classify = spec["components"]["schemas"]["ClassifyRequest"]["properties"]["petitions"]
    assert classify["maxItems"] == 64
    assert "401" in paths["/v1/classify"]["post"]["responses"]
    assert paths["/v1/petitions"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorBody")


# ------------------------------------------------------------------------------------------------ reload
def test_reload_good_and_bad_bundles(tmp_path, bundles, tiny_encoder_dir, scorer) -> None:
    config = _config(tmp_path / "data", bundles, tiny_encoder_dir, scorer)
    keys = create_keys(config)
    broken = copy_bundle(bundles[0], tmp_path / "broken-topic")
    (broken / "labels.json").write_text('["tampered"]', encoding="utf-8")
    with running_app(config) as client:
        h = auth(keys["admin"])
        before = client.get("/v1/models", headers=h).json()
        r = client.post("/v1/models/reload", json={"model_dirs": [str(broken), str(bundles[1])]}, headers=h)
        assert r.status_code == 409 and r.json()["fields"][0]["field"] == "body.model_dirs"
        assert "labels.json" in r.json()["message"]
        assert client.get("/v1/models", headers=h).json()["generation"] == before["generation"]
        r = client.post("/v1/models/reload", json={"model_dirs": [str(tmp_path / "missing")]}, headers=h)
        assert r.status_code == 409
        assert client.post("/v1/classify", json={"petitions": [{"text": "小区停车"}]}, headers=h).status_code == 200
        # a good reload while classify requests keep coming: none fails
        stop, codes = threading.Event(), []

        def load() -> None:
            while not stop.is_set():
                codes.append(client.post("/v1/classify", json={"petitions": [{"text": "学校收费"}]},
                                         headers=h).status_code)

        t = threading.Thread(target=load)
        t.start()
        try:
            r = client.post("/v1/models/reload", headers=h)  # no body: the configured bundles, re-read
        finally:
            time.sleep(0.2)
            stop.set()
            t.join()
        assert r.status_code == 200, r.text
        assert r.json()["generation"] == before["generation"] + 1
        assert codes and set(codes) == {200}
        actions = [a["action"] for a in client.service.store.list_audit(limit=20)]
        assert "models.reload" in actions and "models.reload.refused" in actions
        assert client.post("/v1/models/reload", json={"model_dirs": []}, headers=h).status_code == 422


# ------------------------------------------------------------------------------------------------ restart
def test_restart_reconciles_index_with_store(tmp_path, bundles, tiny_encoder_dir, scorer, monkeypatch) -> None:
    config = _config(tmp_path / "data", bundles, tiny_encoder_dir, scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        for i in range(6):
            assert client.post("/v1/petitions", json=_petition(i, id=f"r-{i}"),
                               headers=auth(keys["intake"])).status_code == 201
    # after a clean shutdown the saved index holds everything
    saved = VectorIndex.load(config.index_path)
    assert sorted(saved.ids()) == [f"r-{i}" for i in range(6)]
    # writes while it was down: a delete through the store (a change after the saved mark), and a row that
    # bypassed the change feed (written by hand): the feed applies the first, the start-up count check repairs
    store = Store(config.db_url)
    with store.session() as s, s.begin():
        from xinfang.serving.store import Petition

        row = s.get(Petition, "r-0")
        s.add(Petition(**{c.name: getattr(row, c.name) for c in Petition.__table__.columns} | {"id": "crash-1"}))
    store.delete_petition("r-1", who="test")
    store.close()
    with running_app(config) as client:
        idx = client.service.keeper.index
        assert idx.contains("crash-1") and not idx.contains("r-1")
        assert sorted(idx.ids()) == sorted(client.service.store.iter_ids())
        rep = client.get("/v1/petitions/crash-1/repeats", headers=auth(keys["caseworker"]))
        assert rep.json()["candidates"][0]["id"] == "r-0"  # same text, found again
        assert int(rep.headers["X-Xinfang-Index-Version"]) == rep.json()["index_version"] > 0
    # an index entry whose row is gone (and counts that agree): `xinfang index reconcile` repairs it
    saved = VectorIndex.load(config.index_path)
    saved.remove(["r-2"])
    saved.add(["ghost"], np.ones((1, saved.dim), dtype=np.float32) / np.sqrt(saved.dim))
    saved.save(config.index_path, meta=VectorIndex.read_manifest(config.index_path)["meta"])
    from typer.testing import CliRunner

    from xinfang.cli import app as cli

    for k, v in {"XINFANG_EMBED_ENCODER": str(tiny_encoder_dir), "XINFANG_RUNTIME": "torch"}.items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(cli, ["index", "reconcile", "--data-dir", str(config.data_dir)])
    assert out.exit_code == 0 and "1 added, 1 removed" in out.output, out.output
    fixed = VectorIndex.load(config.index_path)
    assert fixed.contains("r-2") and not fixed.contains("ghost")
    # a corrupt persisted index is rebuilt from the store
    (config.index_path / "manifest.json").write_text("{broken", encoding="utf-8")
    with running_app(config) as client:
        assert sorted(client.service.keeper.index.ids()) == sorted(client.service.store.iter_ids())


def test_index_factory_and_search_params_from_settings(tmp_path, bundles, tiny_encoder_dir, scorer) -> None:
    from dataclasses import replace

    import faiss

    from xinfang.errors import XinfangError
    from xinfang.serving.config import parse_search_params

    assert parse_search_params("nprobe=768, efSearch=64") == {"nprobe": 768, "efSearch": 64}
    assert parse_search_params("") == {}
    for bad in ("nprobe", "nprobe=0", "nprobe=x", "=3"):
        with pytest.raises(XinfangError, match="XINFANG_INDEX_SEARCH"):
            parse_search_params(bad)
    config = _config(tmp_path / "data", bundles, tiny_encoder_dir, scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        for i in range(4):
            assert client.post("/v1/petitions", json=_petition(i, id=f"f-{i}"),
                               headers=auth(keys["intake"])).status_code == 201
    # another factory in the settings: the persisted vectors are moved into it at start-up, params applied
    hnsw = replace(config, index_factory="HNSW16", index_search={"efSearch": 77})
    with running_app(hnsw) as client:
        idx = client.service.keeper.index
        assert idx.factory == "HNSW16" and sorted(idx.ids()) == [f"f-{i}" for i in range(4)]
        assert faiss.downcast_index(idx._index.index).hnsw.efSearch == 77
        rep = client.get("/v1/petitions/f-0/repeats", headers=auth(keys["caseworker"]))
        assert rep.status_code == 200 and len(rep.json()["candidates"]) == 3


def test_ivf_search_params_survive_training() -> None:
    import faiss

    idx = VectorIndex(8, "IVF4,Flat", ivf_min_train=40)
    idx.set_search_params(nprobe=3)  # still exact (warm-up): remembered
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((60, 8)).astype(np.float32)
    idx.add([f"v{i}" for i in range(60)], vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    assert idx.approximate and faiss.extract_index_ivf(idx._index.index).nprobe == 3


def test_models_missing_means_not_ready_but_reads_work(tmp_path, tiny_encoder_dir, scorer) -> None:
    config = _config(tmp_path / "data", [tmp_path / "no-such-bundle"], tiny_encoder_dir, scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["models"] is False
        r = client.post("/v1/classify", json={"petitions": [{"text": "x"}]}, headers=auth(keys["intake"]))
        assert r.status_code == 503 and r.json()["error"] == "models_unavailable"
        assert client.get("/v1/petitions", headers=auth(keys["caseworker"])).status_code == 200


# ------------------------------------------------------------------------------------------------ runtime
def test_micro_batcher_groups_and_isolates_failures() -> None:
    calls: list[int] = []

    def double(items: list[int]) -> list[int]:
        calls.append(len(items))
        if -1 in items:
            raise ValueError("bad item")
        return [2 * i for i in items]

    b = MicroBatcher({"double": double}, max_batch=8, max_wait_ms=50)
    try:
        futures = [b.submit_future("double", [i]) for i in range(8)]
        assert [f.result(5) for f in futures] == [[2 * i] for i in range(8)]
        assert max(calls) > 1  # grouped
        big = b.submit_future("double", list(range(20)))  # larger than max_batch: one call, never split
        assert big.result(5) == [2 * i for i in range(20)]
        bad = b.submit_future("double", [-1])
        with pytest.raises(ValueError):
            bad.result(5)
        assert b.submit_future("double", [3]).result(5) == [6]
    finally:
        b.close()
    with pytest.raises(RuntimeError):
        b.submit_future("double", [1])


def test_micro_batcher_does_not_hold_a_lone_request() -> None:
    """After a batch of one request, the next lone request is answered without waiting out max_wait."""
    b = MicroBatcher({"echo": lambda items: items}, max_batch=8, max_wait_ms=3000)
    try:
        assert b.submit_future("echo", [1]).result(10) == [1]  # may wait: the batcher starts out expecting company
        t0 = time.monotonic()
        assert b.submit_future("echo", [2]).result(10) == [2]
        assert time.monotonic() - t0 < 2.0
    finally:
        b.close()


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_onnx_runtime_matches_torch(tmp_path, bundles, runtime) -> None:
    from xinfang.models.pipeline import ClassificationPipeline

    rows = [{"id": str(i), "title": p.get("title"), "text": p.get("text")} for i, p in enumerate(demo_petitions(24))]
    ref = ClassificationPipeline.from_paths(bundles).classify(rows)
    pipe = ClassificationPipeline.from_paths(bundles, backend=runtime, cache_dir=tmp_path / "onnx", threads=1)
    assert {b.backend for b in pipe.bundles.values()} == {runtime}
    encoders = [b for b in pipe.bundles.values() if not b.text_only]  # the channel bundle runs no encoder
    assert sorted(b.task for b in encoders) == ["department", "topic"] and pipe.bundles["channel"].stack is None
    assert len({id(b.stack) for b in encoders}) == 1  # one base stack for the encoder tasks
    # the cache holds the shared base layers once and one small top per encoder task
    assert len(list((tmp_path / "onnx").glob("base-*"))) == 1
    assert len(list((tmp_path / "onnx").glob("*/top*.onnx"))) == 2  # int8: the fp32 intermediate is removed
    got = pipe.classify(rows)
    tol = 1e-4 if runtime == "onnx" else 0.05
    agree = np.mean([a["topic"]["label"] == b["topic"]["label"] for a, b in zip(ref, got, strict=True)])
    assert agree >= (1.0 if runtime == "onnx" else 0.9)
    assert max(abs(a["topic"]["score"] - b["topic"]["score"]) for a, b in zip(ref, got, strict=True)) <= tol
    assert max(abs(a["channel"]["score"] - b["channel"]["score"]) for a, b in zip(ref, got, strict=True)) <= tol


def test_onnx_embedder_matches_torch(tmp_path, tiny_encoder_dir) -> None:
    from xinfang.models.embedder import Embedder

    texts = [p.get("title") or "" for p in demo_petitions(12)] + ["", "短"]
    ref = Embedder(str(tiny_encoder_dir), batch_size=4).encode(texts)
    emb = Embedder(str(tiny_encoder_dir), batch_size=4, backend="onnx", cache_dir=tmp_path, threads=1)
    assert list(tmp_path.glob("base-*/layers-0-2.onnx"))
    got = emb.encode(texts)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * ref).sum(1).min()) > 0.9999
    assert emb.fingerprint == Embedder(str(tiny_encoder_dir), batch_size=4).fingerprint  # same vectors, same index


def test_int8_embedder_has_its_own_fingerprint_and_index(tmp_path, bundles, tiny_encoder_dir, scorer) -> None:
    """An index built by the fp32 embedder is refused by the int8 one (and the reverse): rebuilt from the store."""
    from xinfang.models.embedder import Embedder

    texts = [p.get("title") or "" for p in demo_petitions(12)]
    ref = Embedder(str(tiny_encoder_dir), batch_size=4)
    emb = Embedder(str(tiny_encoder_dir), batch_size=4, backend="onnx-int8", cache_dir=tmp_path / "onnx", threads=1)
    assert emb.fingerprint != ref.fingerprint
    got = emb.encode(texts)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * ref.encode(texts)).sum(1).mean()) > 0.9
    again = Embedder(str(tiny_encoder_dir), batch_size=4, backend="onnx-int8", cache_dir=tmp_path / "onnx", threads=1)
    assert again.fingerprint == emb.fingerprint  # stable across restarts: the persisted index stays usable

    config = _config(tmp_path / "data", bundles, tiny_encoder_dir, scorer, embed_runtime="onnx")
    keys = create_keys(config)
    with running_app(config) as client:
        for i in range(4):
            assert client.post("/v1/petitions", json=_petition(i, id=f"q-{i}"),
                               headers=auth(keys["intake"])).status_code == 201
        fp32 = client.get("/v1/models", headers=auth(keys["intake"])).json()["embedder"]["fingerprint"]
    assert fp32 == ref.fingerprint and VectorIndex.load(config.index_path).fingerprint == fp32
    for runtime, expected in (("onnx-int8", emb.fingerprint), ("torch", fp32)):
        config = _config(tmp_path / "data", bundles, tiny_encoder_dir, scorer, embed_runtime=runtime)
        with running_app(config) as client:
            assert client.get("/v1/models", headers=auth(keys["intake"])).json()["embedder"]["fingerprint"] == expected
            assert sorted(client.service.keeper.index.ids()) == [f"q-{i}" for i in range(4)]
            rep = client.get("/v1/petitions/q-0/repeats", headers=auth(keys["caseworker"]))
            assert rep.status_code == 200
        saved = VectorIndex.load(config.index_path)
        assert saved.fingerprint == expected and sorted(saved.ids()) == [f"q-{i}" for i in range(4)]


def test_keys_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from xinfang.cli import app

    runner = CliRunner()
    dd = ["--data-dir", str(tmp_path)]
    r = runner.invoke(app, ["keys", "create", "--role", "caseworker", "--name", "wang", *dd])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("xf_")
    store = Store(f"sqlite:///{tmp_path / 'xinfang.db'}")
    assert store.authenticate(key) == ("wang", "caseworker")
    with store.session() as s:
        from sqlalchemy import text

        stored = s.execute(text("SELECT key_hash FROM api_keys")).scalar()
    assert key not in stored and len(stored) == 64
    r = runner.invoke(app, ["keys", "list", *dd])
    assert "wang\tcaseworker" in r.stdout and key not in r.stdout
    assert runner.invoke(app, ["keys", "create", "--role", "boss", "--name", "x", *dd]).exit_code != 0
    assert runner.invoke(app, ["keys", "revoke", "wang", *dd]).exit_code == 0
    assert store.authenticate(key) is None
    assert runner.invoke(app, ["keys", "revoke", "wang", *dd]).exit_code != 0
    store.close()


def test_intake_normalises_the_petition_once(env, monkeypatch) -> None:
    """Embedding, classification, repeat search, matter decision and the stored hash all read one normalised text."""
    import xinfang.models.normalize as nm
    import xinfang.models.petition as pm

    client, keys = env
    title, text = "独一无二的标题七七", "独一无二的正文：某小区门口的路灯坏了三个月无人修理七七。"
    seen: list[str] = []
    real = nm.normalize_text

    def counting(value, *args, **kwargs):
        if value in (title, text):
            seen.append(value)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(nm, "normalize_text", counting)
    monkeypatch.setattr(pm, "normalize_text", counting)
    pm._normalise.cache_clear()
    r = client.post("/v1/petitions", json={"title": title, "text": text}, headers=auth(keys["intake"]))
    assert r.status_code == 201, r.text
    assert sorted(seen) == sorted([title, text])  # each field once, for everything the intake does
