"""The replica harness itself: two replicas behind HAProxy on a fresh PostgreSQL database."""

from __future__ import annotations

import json
import urllib.request

import pytest
from replica_fixtures import PG_URL, HarnessError, ReplicaCluster, http_get, needs_cluster, tiny_setup

pytestmark = needs_cluster


def post(url: str, body: dict, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={**headers, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_cluster_round_robin_kill_restart(tmp_path, service_models, tiny_encoder_dir) -> None:
    with ReplicaCluster(PG_URL, tiny_setup(service_models, tiny_encoder_dir), n=2, workdir=tmp_path) as c:
        assert c.backend_status() == {0: "UP", 1: "UP"}
        text = "城东区某小区物业擅自上调停车费，业主多次反映无果。"
        status, body = post(c.url + "/v1/petitions", {"id": "h-1", "text": text}, c.auth("intake"))
        assert status == 201, body
        for u in c.replica_urls:  # both replicas read the one store
            code, raw = http_get(u + "/v1/petitions/h-1", headers=c.auth("caseworker"))
            assert code == 200 and json.loads(raw)["id"] == "h-1"
        c.kill(0)
        assert not c.replicas[0].alive
        for _ in range(4):  # HAProxy sends every request to the live replica
            assert post(c.url + "/v1/classify", {"petitions": [{"text": text}]}, c.auth("intake"))[0] == 200
        assert c.restart(0) > 0 and c.replicas[0].starts == 2
        assert c.backend_status()[0] == "UP"
        assert "--- start 2 ---" in c.logs(0)
        db = c.database_url
    from sqlalchemy import create_engine
    from sqlalchemy import text as sql

    engine = create_engine(PG_URL)
    with engine.connect() as conn:  # the cluster dropped its database
        name = db.rsplit("/", 1)[1]
        assert conn.execute(sql("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}).scalar() == 0
    engine.dispose()


def test_replica_that_cannot_start_names_its_log(tmp_path, service_models, tiny_encoder_dir) -> None:
    setup = tiny_setup(service_models, tiny_encoder_dir, XINFANG_RUNTIME="no-such-runtime")
    with pytest.raises(HarnessError, match="replica 0 exited.*log tail"):
        with ReplicaCluster(PG_URL, setup, n=1, workdir=tmp_path, ready_timeout=60):
            pass
