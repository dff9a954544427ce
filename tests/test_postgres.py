"""The whole API on a real PostgreSQL server (XINFANG_TEST_POSTGRES_URL; CI starts one with
scripts/start-postgres.sh). The store-level tests for both backends are in tests/test_store.py."""

from __future__ import annotations

import os

import pytest
from service_fixtures import auth, create_keys, make_config, running_app

from xinfang.serving.schema import drop_everything
from xinfang.serving.store import Store

PG_URL = os.environ.get("XINFANG_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="PostgreSQL tests skipped: XINFANG_TEST_POSTGRES_URL is not set "
                       "(export XINFANG_TEST_POSTGRES_URL=$(bash scripts/start-postgres.sh))")


@pytest.fixture()
def pg_config(tmp_path, service_models, tiny_encoder_dir):
    store = Store(PG_URL, create=False)
    drop_everything(store.engine)  # the service creates it at the migrations' head
    store.close()
    bundles, scorer = service_models
    return make_config(tmp_path / "data", bundles, tiny_encoder_dir, database_url=PG_URL, repeat_scorer=scorer)


def test_api_on_postgres(pg_config) -> None:
    keys = create_keys(pg_config)
    text = "K8县某小区物业违规收取停车费，业主多次反映无果，请求调查处理。"
    with running_app(pg_config) as client:
        assert client.service.store.dialect == "postgresql"
        assert client.get("/readyz").json()["checks"]["store"] is True
        hi, hc, ha = auth(keys["intake"]), auth(keys["caseworker"]), auth(keys["admin"])
        a = client.post("/v1/petitions", json={"id": "pg-a", "text": text, "petitioner": "U9"}, headers=hi)
        assert a.status_code == 201, a.text
        assert client.post("/v1/petitions", json={"id": "pg-a", "text": text, "petitioner": "U9"},
                           headers=hi).json() == a.json()
        assert client.post("/v1/petitions", json={"id": "pg-a", "text": "别的"}, headers=hi).status_code == 409
        b = client.post("/v1/petitions", json={"id": "pg-b", "text": text + "再次反映", "petitioner": "U9"},
                        headers=hi).json()
        assert b["repeats"][0]["id"] == "pg-a"
        page = client.get("/v1/petitions", headers=hc).json()
        assert page["total"] == 2 and page["items"][0]["id"] == "pg-b"
        fb = client.post("/v1/petitions/pg-b/feedback", json={"kind": "repeat_confirm", "target_id": "pg-a"},
                         headers=hc)
        assert fb.status_code == 201
        assert client.delete("/v1/petitions/pg-a", headers=ha).status_code == 200
        assert not client.service.keeper.index.contains("pg-a")
        assert client.get("/v1/petitions/pg-b/feedback", headers=hc).json()["items"] == []
    # restart: the index is rebuilt consistent with the PostgreSQL store
    with running_app(pg_config) as client:
        assert client.service.keeper.index.ids() == ["pg-b"]
        actions = {a["action"] for a in client.service.store.list_audit()}
        assert {"petition.delete", "feedback.repeat_confirm", "key.create"} <= actions


def test_database_going_away_and_coming_back(tmp_path, service_models, tiny_encoder_dir) -> None:
    """Writes answer 503 store_unavailable while the database refuses connections, classification keeps
    working for keys verified before, /readyz says not ready; all of it recovers without a restart."""
    import time
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"xf_away_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    def connections(allow: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                             {"n": name})

    bundles, scorer = service_models
    config = make_config(tmp_path / "data", bundles, tiny_encoder_dir, database_url=url, repeat_scorer=scorer,
                         index_sync_seconds=0.1)
    keys = create_keys(config)
    hi = auth(keys["intake"])
    text_ = "K8县某小区物业违规收取停车费，业主多次反映无果，请求调查处理。"
    try:
        with running_app(config) as client:
            assert client.post("/v1/petitions", json={"id": "away-1", "text": text_}, headers=hi).status_code == 201
            connections(False)
            down = client.post("/v1/petitions", json={"id": "away-2", "text": text_ + "二"}, headers=hi)
            assert down.status_code == 503 and down.json()["error"] == "store_unavailable", down.text
            assert "unreachable" in down.json()["message"] and down.headers["retry-after"]
            assert client.post("/v1/classify", json={"petitions": [{"text": text_}]}, headers=hi).status_code == 200
            assert client.get("/readyz").status_code == 503
            connections(True)
            deadline = time.monotonic() + 15
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get("/readyz").status_code == 200
            again = client.post("/v1/petitions", json={"id": "away-2", "text": text_ + "二"}, headers=hi)
            assert again.status_code == 201
            assert sorted(client.service.store.iter_ids()) == ["away-1", "away-2"]
    finally:
        connections(True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
