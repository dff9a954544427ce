"""Two `xinfang serve` replicas on one PostgreSQL database behind HAProxy (eval/replica_harness.py): a petition
ingested by one is a repeat candidate on the other, the same client id posted to both at once is one row, a
kill -9 under intake load loses no acknowledged petition and stores none twice, and the restarted replica
catches up from its saved high-water mark. Needs XINFANG_TEST_POSTGRES_URL and HAProxy (.ci/run has both)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from replica_fixtures import PG_URL, ReplicaCluster, http_get, needs_cluster, tiny_setup

pytestmark = needs_cluster
TEXT = "城东区某小区物业擅自上调停车费，业主多次反映无果，请求调查处理。"


def post(url: str, body: dict, headers: dict, timeout: float = 30) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={**headers, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:  # HAProxy's own 502/503 pages are not JSON
        raw = exc.read()
        return exc.code, (json.loads(raw) if raw.startswith(b"{") else {"raw": raw[:200].decode()}), dict(exc.headers)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, service_models, tiny_encoder_dir):
    setup = tiny_setup(service_models, tiny_encoder_dir, XINFANG_INDEX_SAVE_SECONDS="0.3",
                       XINFANG_INDEX_SYNC_SECONDS="0.2")
    with ReplicaCluster(PG_URL, setup, n=2, workdir=tmp_path_factory.mktemp("cluster")) as c:
        assert c.backend_status() == {0: "UP", 1: "UP"}
        yield c
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL)  # the cluster dropped its database
    with engine.connect() as conn:
        name = c.database_url.rsplit("/", 1)[1]
        assert conn.execute(text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}).scalar() == 0
    engine.dispose()


def stored_ids(c: ReplicaCluster) -> list[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(c.database_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT id FROM petitions"))]
    finally:
        engine.dispose()


def test_a_petition_from_one_replica_is_a_repeat_candidate_on_the_other(cluster) -> None:
    a, b = cluster.replica_urls
    status, created, headers = post(a + "/v1/petitions", {"id": "vis-1", "text": TEXT, "petitioner": "U1"},
                                    cluster.auth("intake"))
    assert status == 201 and int(headers["x-xinfang-index-version"]) == created["index_version"]
    deadline, found = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        _, res, hb = post(b + "/v1/repeats/search", {"text": TEXT + "再次反映"}, cluster.auth("caseworker"))
        if any(c["id"] == "vis-1" for c in res["candidates"]):
            found = (time.monotonic(), res["index_version"], int(hb["x-xinfang-index-version"]))
            break
        time.sleep(0.05)
    assert found, "replica B never found the petition ingested by replica A"
    assert found[1] == found[2] > created["index_version"]
    code, raw = http_get(b + "/metrics", headers=cluster.auth("caseworker"))
    text = raw.decode()
    assert code == 200 and "xinfang_feed_lag_changes 0.0" in text and "xinfang_index_version" in text
    assert json.loads(http_get(b + "/readyz")[1])["checks"]["index_caught_up"] is True


def test_same_client_id_on_both_replicas_at_once_is_one_row(cluster) -> None:
    body = {"id": "idem-x", "text": TEXT + "（同时提交）", "petitioner": "U2"}
    barrier = threading.Barrier(2)

    def send(url: str):
        barrier.wait()
        return post(url + "/v1/petitions", body, cluster.auth("intake"))

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, cluster.replica_urls))
    assert sorted(a[0] for a in answers) == [200, 201], [a[:2] for a in answers]
    assert answers[0][1] == answers[1][1]  # the loser replays the winner's answer
    assert stored_ids(cluster).count("idem-x") == 1
    conflict = post(cluster.url + "/v1/petitions", {**body, "text": "别的内容"}, cluster.auth("intake"))
    assert conflict[0] == 409


def test_kill_9_under_intake_then_restart_catches_up_from_its_mark(cluster) -> None:
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            pid = f"load-{n}-{i}"
            for _ in range(20):  # retry the same id until answered: intake is idempotent
                try:
                    status, _, _ = post(cluster.url + "/v1/petitions", {"id": pid, "text": f"{TEXT}{n}号楼{i}"},
                                        cluster.auth("intake"), timeout=20)
                except OSError as exc:
                    errors.append(type(exc).__name__)
                    time.sleep(0.1)
                    continue
                if status in (200, 201):
                    acked.append(pid)
                    break
                errors.append(str(status))
                time.sleep(0.1)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(4)
    before_kill = len(acked)
    cluster.kill(0)
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(60)
    assert before_kill > 0 and len(acked) > before_kill  # intake went on through the other replica
    ids = stored_ids(cluster)
    assert set(acked) <= set(ids), "acknowledged petitions lost"
    assert len(ids) == len(set(ids)) and len(set(acked)) == len(acked)
    assert cluster.restart(0) > 0 and cluster.replicas[0].starts == 2 and cluster.backend_status()[0] == "UP"
    starts = [r for r in cluster.log_records(0) if r.get("msg") == "index caught up from its high-water mark"]
    last = starts[-1]
    assert last["from_change"] > 0 and last["changes_applied"] > 0  # from its saved mark, not from zero
    code, raw = http_get(cluster.replica_urls[0] + "/metrics", headers=cluster.auth("caseworker"))
    size = [ln for ln in raw.decode().splitlines() if ln.startswith("xinfang_index_size ")]
    assert float(size[0].split()[1]) == len(stored_ids(cluster))
