"""Coordinated model rollout: the registry lives in the store, every replica follows its promotions.

In one process on SQLite (each step driven by `Service.follow_registry`), and as two `xinfang serve` processes
with their own data dirs on one PostgreSQL database behind HAProxy (eval/replica_harness.py), polling it,
under load.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
from replica_fixtures import PG_URL, ReplicaCluster, needs_cluster, tiny_setup
from service_fixtures import auth, create_keys, make_config, running_app

from xinfang.models.classifier import write_manifest
from xinfang.serving.registry_db import open_registry

WRONG_BASE = "0" * 64
PROBE = {"petitions": [{"id": "q1", "title": "小区停车费", "text": "城东区某小区物业擅自上调停车费，业主多次反映无果。"}]}


def variant(src: Path, dst: Path, note: str | None = None, base_fingerprint: str | None = None) -> Path:
    """A copy of a bundle with another version (a note in its config), or one trained on another base."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text("utf-8"))
    if note:
        config["note"] = note
    if base_fingerprint:
        config["base"]["fingerprint"] = base_fingerprint
    (dst / "config.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    write_manifest(dst)
    return dst


def topic_versions(registry, bundles: list[Path], tmp: Path) -> None:
    """topic-v1 (promoted), topic-v2 (another version of it), topic-v3 (made on another base: cannot load)."""
    topic = next(b for b in bundles if b.name == "topic")
    registry.register(topic)
    registry.promote("topic-v1")
    registry.register(variant(topic, tmp / "topic-v2", note="second"))
    registry.register(variant(topic, tmp / "topic-bad", base_fingerprint=WRONG_BASE))


def test_one_service_follows_promotions_refuses_what_it_cannot_load_and_rolls_back(
        tmp_path, service_models, tiny_encoder_dir) -> None:
    bundles, scorer = service_models
    config = make_config(tmp_path / "data", [b for b in bundles if b.name != "topic"], tiny_encoder_dir,
                         repeat_scorer=scorer)
    keys = create_keys(config)
    registry = open_registry(config.registry_cache_dir, config.db_url, actor="ml-eng")
    topic_versions(registry, bundles, tmp_path)
    hi, ha = auth(keys["intake"]), auth(keys["admin"])
    with running_app(config) as client:
        svc = client.service

        def state() -> dict:
            return client.get("/v1/models", headers=hi).json()["registry"]

        def served_topic() -> str:
            r = client.post("/v1/classify", json=PROBE, headers=hi)
            assert r.status_code == 200, r.text
            return r.json()["models"]["topic"]["version"]

        assert state()["serving"]["topic"] == "topic-v1" and state()["refused"] is None
        v1_bundle = served_topic()
        assert svc.follow_registry() == "same"

        registry.promote("topic-v2")
        assert svc.follow_registry() == "loaded"
        assert state()["serving"]["topic"] == "topic-v2" and state()["promoted"]["topic"] == "topic-v2"
        v2_bundle = served_topic()
        assert v2_bundle == registry.get("topic-v2")["bundle_version"] != v1_bundle

        registry.promote("topic-v3", forced=True)
        assert svc.follow_registry() == "refused"
        st = state()
        assert st["serving"]["topic"] == "topic-v2" and st["promoted"]["topic"] == "topic-v3"
        assert st["refused"]["versions"] == {"topic": "topic-v3"} and "fingerprint" in st["refused"]["error"]
        assert str(tmp_path) not in st["refused"]["error"]  # no server paths for a non-admin key ...
        admin_error = client.get("/v1/models", headers=ha).json()["registry"]["refused"]["error"]
        assert str(config.registry_cache_dir) in admin_error  # ... the admin sees where
        assert served_topic() == v2_bundle  # the old model keeps serving
        metrics = client.get("/metrics", headers=hi).text
        assert 'xinfang_rollout_refused{task="topic",version="topic-v3"} 1.0' in metrics
        assert 'xinfang_registry_serving{task="topic",version="topic-v2"} 1.0' in metrics
        assert 'xinfang_rollouts_total{result="refused"} 1.0' in metrics
        assert svc.follow_registry() == "same"  # not retried until the promoted versions change

        assert registry.rollback("topic")["version"] == "topic-v2"
        assert svc.follow_registry() == "loaded"
        assert state()["refused"] is None and "xinfang_rollout_refused{" not in client.get("/metrics", headers=hi).text
        registry.rollback("topic")
        assert svc.follow_registry() == "loaded"
        assert state()["serving"]["topic"] == "topic-v1" and served_topic() == v1_bundle
        admin = client.get("/v1/models", headers=ha).json()
        assert any(Path(d).is_relative_to(config.registry_cache_dir) for d in admin["model_dirs"])
        actions = [a["action"] for a in svc.store.list_audit(limit=100)]
    assert "models.rollout.refused" in actions and actions.count("model.rollback") == 2


# ------------------------------------------------------------------------- two replicas, PostgreSQL, HAProxy
@needs_cluster
def test_two_replicas_follow_promotion_under_load_through_haproxy(tmp_path, service_models,
                                                                  tiny_encoder_dir) -> None:
    bundles, _ = service_models
    setup = tiny_setup(service_models, tiny_encoder_dir, XINFANG_REGISTRY_POLL_SECONDS="0.5")
    with ReplicaCluster(PG_URL, setup, n=2, workdir=tmp_path / "cluster") as c:
        registry = open_registry(tmp_path / "admin-cache", c.database_url, actor="ml-eng")
        topic_versions(registry, bundles, tmp_path)  # promotes topic-v1 after the replicas started
        hi = c.auth("intake")

        def state(url: str) -> dict:
            return httpx.get(url + "/v1/models", headers=hi, timeout=30).json()["registry"]

        def wait_all(version: str, field: str = "serving") -> None:
            deadline = time.monotonic() + 90
            while not all((state(u)[field] or {}).get("topic") == version for u in c.replica_urls):
                assert time.monotonic() < deadline, [state(u) for u in c.replica_urls]
                time.sleep(0.1)

        wait_all("topic-v1")
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:  # through HAProxy, round-robin over both replicas
            with httpx.Client(base_url=c.url, headers=hi, timeout=60) as client:
                while not stop.is_set():
                    statuses.append(client.post("/v1/classify", json=PROBE).status_code)

        workers = [threading.Thread(target=load) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.0)
            registry.promote("topic-v2")
            wait_all("topic-v2")
            time.sleep(0.5)
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert len(statuses) > 10 and set(statuses) == {200}, statuses  # 0 failed requests during the rollout

        registry.promote("topic-v3", forced=True)  # made on another base: no replica can load it
        wait_all("topic-v3", "promoted")
        for u in c.replica_urls:
            st = state(u)
            assert st["serving"]["topic"] == "topic-v2" and st["refused"]["versions"] == {"topic": "topic-v3"}
            assert "fingerprint" in st["refused"]["error"]
            assert httpx.post(u + "/v1/classify", json=PROBE, headers=hi, timeout=30).status_code == 200
            metrics = httpx.get(u + "/metrics", headers=hi, timeout=30).text
            assert 'xinfang_rollout_refused{task="topic",version="topic-v3"} 1.0' in metrics
        registry.rollback("topic")
        registry.rollback("topic")  # topic-v3 -> topic-v2 -> topic-v1
        wait_all("topic-v1")
        assert all(state(u)["refused"] is None for u in c.replica_urls)
        for i in range(2):  # the log says what was loaded or refused, with ids and timings
            records = c.log_records(i)
            loaded = [r for r in records if r.get("msg") == "promoted models loaded"]
            refused = [r for r in records if r.get("msg") == "promoted models refused, the served ones stay"]
            assert any(r["versions"] == {"topic": "topic-v2"} and r["seconds"] >= 0 for r in loaded), loaded
            assert refused and refused[0]["versions"] == {"topic": "topic-v3"}
