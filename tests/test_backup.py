"""`xinfang backup` / `xinfang restore`: ingest, back up while writes go on, restore elsewhere -- same
petitions, same feedback, same repeat answers -- on SQLite and (XINFANG_TEST_POSTGRES_URL) PostgreSQL; corrupted
snapshots and non-empty targets are refused, naming the file."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from service_fixtures import auth, create_keys, demo_petitions, make_config, running_app
from typer.testing import CliRunner

from xinfang.cli import app as cli

PG_URL = os.environ.get("XINFANG_TEST_POSTGRES_URL")
BASE = 10


def _body(i: int, pid: str, **extra) -> dict:
    r = demo_petitions()[i % len(demo_petitions())]
    return {"id": pid, "title": r.get("title"), "text": r.get("text") or r.get("title"), **extra}


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@pytest.fixture()
def pg_databases():
    """Two fresh databases (source, target) on the test server, dropped afterwards."""
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: XINFANG_TEST_POSTGRES_URL is not set")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL)
    names = [f"xf_backup_{tag}_{uuid.uuid4().hex[:8]}" for tag in ("src", "dst")]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for n in names:
            conn.execute(text(f'CREATE DATABASE "{n}"'))
    try:
        yield [base.set(database=n).render_as_string(hide_password=False) for n in names]
    finally:
        with admin.connect() as conn:
            for n in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()


def _state(client, keys, ids: list[str], base_ids: list[str]) -> dict:
    hc = auth(keys["caseworker"])
    store = client.service.store
    return {"petitions": {pid: store.get_petition(pid) for pid in ids},
            "feedback": {pid: [{k: v for k, v in f.items() if k != "id"} for f in store.list_feedback(pid)]
                         for pid in base_ids},
            "repeats": {pid: client.get(f"/v1/petitions/{pid}/repeats", params={"k": 50}, headers=hc).json()
                        ["candidates"] for pid in base_ids}}


def _round_trip(tmp_path: Path, service_models, encoder: Path, src_url: str | None, dst_url: str | None) -> None:
    from xinfang.serving.registry_db import open_registry

    bundles, scorer = service_models
    a_dir, b_dir, snap = tmp_path / "a", tmp_path / "b", tmp_path / "snap"
    a_cfg = make_config(a_dir, bundles, encoder, repeat_scorer=scorer, database_url=src_url, index_save_every=3)
    keys = create_keys(a_cfg)
    registry = open_registry(a_dir / "registry", a_cfg.db_url, actor="test")
    registry.register(bundles[0])
    (a_dir / "models").mkdir()
    (a_dir / "models" / "NOTE.txt").write_text("configured bundles live here\n", encoding="utf-8")
    db = ["--database-url", src_url] if src_url else []
    base_ids = [f"base-{i}" for i in range(BASE)]
    with running_app(a_cfg) as client:
        hi, hc = auth(keys["intake"]), auth(keys["caseworker"])
        for i, pid in enumerate(base_ids):  # pairs about the same matter: base-0/base-1 share a text
            body = _body(i // 2, pid, petitioner=f"U{i // 2}")
            if i % 2:
                body["text"] += "再次反映。"
            assert client.post("/v1/petitions", json=body, headers=hi).status_code == 201
        assert client.post("/v1/petitions/base-1/feedback", json={"kind": "repeat_confirm", "target_id": "base-0"},
                           headers=hc).status_code == 201
        assert client.post("/v1/petitions/base-2/feedback", json={"kind": "topic_correction", "label": "城乡建设"},
                           headers=hc).status_code == 201
        written: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            for n in range(20):
                if stop.is_set():
                    return
                pid = f"live-{n}"
                if client.post("/v1/petitions", json=_body(BASE + n, pid), headers=hi).status_code == 201:
                    written.append(pid)

        t = threading.Thread(target=writer)
        t.start()
        while len(written) < 3 and t.is_alive():
            time.sleep(0.01)
        before = len(written)
        try:
            out = _invoke("backup", "--to", str(snap), "--data-dir", str(a_dir), *db)
        finally:
            t.join(60)  # the writer goes on to its 20th petition
            stop.set()
        assert before >= 3 and len(written) == 20
        a_ids = sorted(client.service.store.iter_ids())
        a_state = _state(client, keys, a_ids, base_ids)
    assert '"dialect"' in out and (snap / "SHA256SUMS").is_file() and (snap / "index" / "manifest.json").is_file()
    assert (snap / "models" / "NOTE.txt").is_file() and not (snap / "registry").exists()  # the registry: in the store

    b_db = ["--database-url", dst_url] if dst_url else []
    _invoke("restore", "--from", str(snap), "--data-dir", str(b_dir), *b_db)
    b_cfg = make_config(b_dir, bundles, encoder, repeat_scorer=scorer, database_url=dst_url)
    with running_app(b_cfg) as client:
        b_ids = sorted(client.service.store.iter_ids())
        assert set(base_ids) <= set(b_ids) <= set(a_ids) and len(b_ids) >= BASE + before
        b_state = _state(client, keys, b_ids, base_ids)
        assert client.get("/v1/petitions", headers=auth(keys["caseworker"])).json()["total"] == len(b_ids)
        assert client.service.keeper.index.ids() and sorted(client.service.keeper.index.ids()) == b_ids
    assert b_state["petitions"] == {pid: a_state["petitions"][pid] for pid in b_ids}
    assert b_state["feedback"] == a_state["feedback"] and a_state["feedback"]["base-1"]
    for pid in base_ids:  # A's answers may also name petitions written after the snapshot
        expected = [c for c in a_state["repeats"][pid] if c["id"] in set(b_ids)]
        assert b_state["repeats"][pid] == expected, pid
    assert a_state["repeats"]["base-0"][0]["id"] == "base-1"
    restored = open_registry(b_dir / "registry", b_cfg.db_url)
    assert [v["version"] for v in restored.versions()] == ["topic-v1"]
    assert (restored.bundle_path("topic-v1") / "manifest.json").is_file()  # the bundle came with the store


def test_round_trip_sqlite(tmp_path, service_models, tiny_encoder_dir) -> None:
    _round_trip(tmp_path, service_models, tiny_encoder_dir, None, None)


def test_round_trip_postgres(tmp_path, service_models, tiny_encoder_dir, pg_databases) -> None:
    src, dst = pg_databases
    _round_trip(tmp_path, service_models, tiny_encoder_dir, src, dst)
    # the target database now has the tables: a second restore into it is refused
    result = CliRunner().invoke(cli, ["restore", "--from", str(tmp_path / "snap"), "--data-dir",
                                      str(tmp_path / "c"), "--database-url", dst])
    assert result.exit_code != 0 and "empty database" in str(result.exception)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, service_models, tiny_encoder_dir) -> Path:
    """A snapshot of a small SQLite service (three petitions)."""
    bundles, scorer = service_models
    root = tmp_path_factory.mktemp("snapshot")
    cfg = make_config(root / "data", bundles, tiny_encoder_dir, repeat_scorer=scorer)
    keys = create_keys(cfg)
    with running_app(cfg) as client:
        for i in range(3):
            client.post("/v1/petitions", json=_body(i, f"s-{i}"), headers=auth(keys["intake"]))
    _invoke("backup", "--to", str(root / "snap"), "--data-dir", str(root / "data"))
    return root / "snap"


def _corrupt_copy(snapshot: Path, dest: Path, how: str) -> str:
    """A copy of the snapshot with one file damaged; returns the name the refusal must give."""
    shutil.copytree(snapshot, dest)
    index_file = next(p for p in (dest / "index").iterdir() if p.name.endswith(".faiss"))
    if how == "store":
        data = bytearray((dest / "store.sqlite").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (dest / "store.sqlite").write_bytes(bytes(data))
        return "store.sqlite"
    if how == "index":
        with open(index_file, "ab") as fh:
            fh.write(b"\0")
        return index_file.name
    if how == "missing":
        index_file.unlink()
        return index_file.name
    (dest / "index" / "extra.bin").write_bytes(b"x")
    return "extra.bin"


@pytest.mark.parametrize("how", ["store", "index", "missing", "extra"])
def test_corrupted_snapshot_is_refused_naming_the_file(snapshot, tmp_path, how) -> None:
    bad = tmp_path / "bad"
    name = _corrupt_copy(snapshot, bad, how)
    target = tmp_path / "target"
    result = CliRunner().invoke(cli, ["restore", "--from", str(bad), "--data-dir", str(target)])
    assert result.exit_code != 0 and name in str(result.exception), result.exception
    assert not target.exists() or not any(target.iterdir())  # nothing written


def test_restore_refuses_a_non_empty_data_dir_and_backup_a_used_directory(snapshot, tmp_path) -> None:
    target = tmp_path / "used"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    result = CliRunner().invoke(cli, ["restore", "--from", str(snapshot), "--data-dir", str(target)])
    assert result.exit_code != 0 and "not empty" in str(result.exception)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    result = CliRunner().invoke(cli, ["backup", "--to", str(target), "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "not an empty directory" in str(result.exception)
    fresh = tmp_path / "fresh"
    out = _invoke("restore", "--from", str(snapshot), "--data-dir", str(fresh))
    assert '"petitions": 3' in out
