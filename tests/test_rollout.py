"""Coordinated model rollout: the registry lives in the store, every replica follows its promotions.

In one process on SQLite (each step driven by `Service.follow_registry`), and as two `xinfang serve` processes
with their own data dirs on one PostgreSQL database (XINFANG_TEST_POSTGRES_URL), polling it, under load.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from service_fixtures import auth, create_keys, make_config, running_app

from xinfang.models.classifier import write_manifest
from xinfang.serving.registry_db import open_registry

PG_URL = os.environ.get("XINFANG_TEST_POSTGRES_URL")
XINFANG = str(Path(sys.executable).with_name("xinfang"))
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


# ------------------------------------------------------------------------------------ two replicas, PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def pg_database():
    """A database of its own on the test server (dropped afterwards)."""
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: XINFANG_TEST_POSTGRES_URL is not set")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base, name = make_url(PG_URL), f"xf_rollout_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def replicas(n: int, env: dict[str, str], root: Path):
    """`n` `xinfang serve` processes, each with its own data dir, ready; yields their base URLs."""
    procs, urls, logs = [], [], []
    try:
        for i in range(n):
            data_dir = root / f"replica-{i}"
            data_dir.mkdir(parents=True)
            port = _free_port()
            log = open(data_dir / "serve.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen([XINFANG, "serve", "--host", "127.0.0.1", "--port", str(port),
                                           "--data-dir", str(data_dir), "--runtime", "torch"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 180
        for i, url in enumerate(urls):
            while True:
                assert procs[i].poll() is None, (root / f"replica-{i}" / "serve.log").read_text()[-3000:]
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "xinfang serve did not become ready in 180 s"
                time.sleep(0.3)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:  # pragma: no cover
                p.kill()
        for log in logs:
            log.close()


def test_two_replicas_on_postgres_follow_promotion_under_load(tmp_path, pg_database, service_models,
                                                              tiny_encoder_dir) -> None:
    bundles, scorer = service_models
    config = make_config(tmp_path / "admin", [], tiny_encoder_dir, database_url=pg_database)
    keys = create_keys(config)  # creates the shared store at the migrations' head
    registry = open_registry(tmp_path / "admin" / "registry", pg_database, actor="ml-eng")
    topic_versions(registry, bundles, tmp_path)
    env = {**os.environ, "XINFANG_DATABASE_URL": pg_database, "XINFANG_EMBED_ENCODER": str(tiny_encoder_dir),
           "XINFANG_MODEL_DIRS": ",".join(str(b) for b in bundles if b.name != "topic"), "XINFANG_THREADS": "1",
           "XINFANG_REGISTRY_POLL_SECONDS": "0.5", **({"XINFANG_REPEAT_SCORER": str(scorer)} if scorer else {})}
    hi = auth(keys["intake"])
    with replicas(2, env, tmp_path) as urls:
        def serving(url: str) -> dict:
            return httpx.get(url + "/v1/models", headers=hi, timeout=30).json()["registry"]

        def wait_all(version: str, field: str = "serving") -> float:
            t0, deadline = time.monotonic(), time.monotonic() + 90
            while not all((serving(u)[field] or {}).get("topic") == version for u in urls):
                assert time.monotonic() < deadline, [serving(u) for u in urls]
                time.sleep(0.1)
            return time.monotonic() - t0

        assert [serving(u)["serving"]["topic"] for u in urls] == ["topic-v1", "topic-v1"]
        statuses: list[int] = []
        stop = threading.Event()

        def load(url: str) -> None:
            with httpx.Client(base_url=url, headers=hi, timeout=60) as c:
                while not stop.is_set():
                    statuses.append(c.post("/v1/classify", json=PROBE).status_code)

        workers = [threading.Thread(target=load, args=(u,)) for u in urls]
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

        registry.promote("topic-v3", forced=True)  # another base: no replica can load it
        wait_all("topic-v3", "promoted")
        for u in urls:
            st = serving(u)
            assert st["serving"]["topic"] == "topic-v2" and st["refused"]["versions"] == {"topic": "topic-v3"}
            assert "fingerprint" in st["refused"]["error"]
            assert httpx.post(u + "/v1/classify", json=PROBE, headers=hi, timeout=30).status_code == 200
            assert 'xinfang_rollout_refused{task="topic",version="topic-v3"} 1.0' in httpx.get(u + "/metrics", headers=hi).text
        registry.rollback("topic")
        registry.rollback("topic")  # topic-v3 -> topic-v2 -> topic-v1
        wait_all("topic-v1")
        assert all(serving(u)["refused"] is None for u in urls)
    logs = [(tmp_path / f"replica-{i}" / "serve.log").read_text() for i in range(2)]
    for text in logs:  # the log says what was loaded or refused, with ids and timings
        events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        loaded = [e for e in events if e.get("msg") == "promoted models loaded"]
        refused = [e for e in events if e.get("msg") == "promoted models refused, the served ones stay"]
        assert any(e["versions"] == {"topic": "topic-v2"} and e["seconds"] >= 0 for e in loaded), text[-2000:]
        assert refused and refused[0]["versions"] == {"topic": "topic-v3"}
