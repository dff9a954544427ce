"""Topic/department classification: training, bundles, calibration, routing, CLI, bad input (tiny encoder)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xinfang.cli import app
from xinfang.errors import DataError, ModelError
from xinfang.models import calibration as cal
from xinfang.models.classifier import ClassifierBundle
from xinfang.models.duty_list import DutyList
from xinfang.models.pipeline import ClassificationPipeline
from xinfang.models.router import Router, extract_jurisdiction, jurisdiction_levels
from xinfang.records import load_records
from xinfang.training.classifier import train
from xinfang.training.data import group_ids, group_split, prepare_examples
from xinfang.training.recipes import recipe_with

TOPICS = {
    "交通运输": ("公交车路线", "交通"),
    "教育文体": ("学校幼儿园收费", "教育"),
    "城乡建设": ("小区物业停车", "房屋"),
}
DEPTS = {"交通运输": "交通运输", "教育文体": "教育", "城乡建设": "住房和城乡建设"}
PLACES = ["A市", "A3区", "K8县", "B5县"]


def _rows(n_per_class: int = 14) -> list[dict]:
    rows, i = [], 0
    for topic, (kw, kw2) in TOPICS.items():
        for j in range(n_per_class):
            place = PLACES[j % len(PLACES)]
            title = f"{place}{kw}问题{j}"
            text = None if j % 3 == 0 else f"{kw2}{kw}反映{j}，希望尽快解决处理"
            rows.append({"id": f"p{i}", "title": title, "text": text, "topic": topic, "department": DEPTS[topic]})
            i += 1
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", _rows())


@pytest.fixture(scope="module")
def topic_bundle(tmp_path_factory, tiny_encoder_dir, data_file) -> Path:
    out = tmp_path_factory.mktemp("models") / "topic"
    result = _invoke(["train", "--task", "topic", "--data", data_file, "--base", tiny_encoder_dir, "--out", out,
                      "--recipe", "tiny", "--epochs", "6", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def dept_bundle(tmp_path_factory, tiny_encoder_dir, data_file) -> Path:
    out = tmp_path_factory.mktemp("models") / "department"
    recs = load_records(data_file, label_column="department")
    train(recs, task="department", out_dir=out, base=tiny_encoder_dir, recipe="tiny", seed=3, progress=False)
    return out


# ------------------------------------------------------------------------------------------ bundle
def test_bundle_files_config_and_card(topic_bundle: Path) -> None:
    for name in ("encoder_layers.safetensors", "head.safetensors", "labels.json",
                 "config.json", "metrics.json", "MODEL_CARD.md", "confusion_matrix.png", "manifest.json"):
        assert (topic_bundle / name).is_file(), name
    assert not list(topic_bundle.rglob("*.bin")) and not list(topic_bundle.rglob("*.pkl"))
    assert not (topic_bundle / "encoder").exists()  # slim: only the trained layers, the base is found at load
    cfg = json.loads((topic_bundle / "config.json").read_text())
    assert cfg["task"] == "topic" and cfg["recipe"]["name"] == "tiny" and cfg["seed"] == 3
    assert len(cfg["data_fingerprint"]) == 64 and cfg["temperature"] > 0
    assert {"threshold", "target_precision", "attainable"} <= set(cfg["review"])
    assert sorted(json.loads((topic_bundle / "labels.json").read_text())) == sorted(TOPICS)
    manifest = json.loads((topic_bundle / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"head.safetensors", "config.json", "encoder_layers.safetensors"}
    assert cfg["format"] == "xinfang-classifier/2" and cfg["shared_layers"] == 1 and len(cfg["base"]["fingerprint"]) == 64
    card = (topic_bundle / "MODEL_CARD.md").read_text()
    assert "confusion_matrix.png" in card and "ECE" in card and "needs_review" in card
    b = ClassifierBundle.load(topic_bundle)
    assert b.task == "topic" and b.version == manifest["version"] and b.labels == sorted(TOPICS)


@pytest.mark.parametrize("victim", ["head.safetensors", "labels.json", "encoder_layers.safetensors",
                                    "tfidf.json", "tfidf_head.safetensors"])
def test_manifest_tamper_detected(topic_bundle: Path, tmp_path: Path, victim: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(topic_bundle, copy)
    with open(copy / victim, "r+b") as fh:
        fh.seek(-2, 2)
        last = fh.read(1)
        fh.seek(-2, 2)
        fh.write(bytes([last[0] ^ 0x01]))
    with pytest.raises(ModelError, match=victim.replace(".", r"\.")):
        ClassifierBundle.load(copy)
    (copy / victim).unlink()
    with pytest.raises(ModelError, match="missing"):
        ClassifierBundle.load(copy)


def test_training_is_seeded(tmp_path: Path, tiny_encoder_dir: Path, data_file: Path, topic_bundle: Path) -> None:
    out = tmp_path / "again"
    _invoke(["train", "--task", "topic", "--data", data_file, "--base", tiny_encoder_dir, "--out", out,
             "--recipe", "tiny", "--epochs", "6", "--seed", "3"])
    a = json.loads((topic_bundle / "manifest.json").read_text())["files"]
    b = json.loads((out / "manifest.json").read_text())["files"]
    assert a["head.safetensors"] == b["head.safetensors"]
    assert a["encoder_layers.safetensors"] == b["encoder_layers.safetensors"]


def test_cached_training_path_matches_full_forward(topic_bundle: Path, tiny_encoder_dir: Path) -> None:
    """The model trained on cached lower-layer states must give the same logits through a plain forward pass."""
    from transformers import AutoTokenizer

    from xinfang.models.encoder import encoder_layers
    from xinfang.training.frozen_cache import FrozenCache, top_logits

    b = ClassifierBundle.load(topic_bundle)
    texts = ["A3区公交车路线问题", "学校幼儿园收费反映，希望尽快解决处理" * 3]
    full = b.logits(texts)
    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = b.full_encoder()
    plain = model(**tok([b.prefix + t for t in texts], padding=True, truncation=True, max_length=b.max_length,
                        return_tensors="pt")).last_hidden_state
    n_frozen = len(b.config["frozen"]["layers"])
    cache = FrozenCache(tiny_encoder_dir, n_frozen, b.max_length, b.config["text_prefix"])
    cache.fill(model, tok, texts, progress=False)
    import torch

    cached = top_logits(model, encoder_layers(model)[n_frozen:], b.head_w, b.head_b, cache, texts,
                        torch.device("cpu"))
    np.testing.assert_allclose(full, cached, atol=1e-2)
    enc = tok([b.prefix + t for t in texts], padding=True, truncation=True, max_length=b.max_length,
              return_tensors="pt")
    m = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (plain * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(full, (pooled @ b.head_w.T + b.head_b).detach().numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------ predict
def test_predict_shape_and_order(topic_bundle: Path) -> None:
    b = ClassifierBundle.load(topic_bundle)
    pets = [{"title": "K8县公交车路线问题"}, {"text": "学校幼儿园收费"}, {"title": "小区物业停车", "text": "  "}]
    out = b.predict(pets, top_k=2)
    assert len(out) == 3
    for row in out:
        assert set(row) == {"label", "score", "top"} and len(row["top"]) == 2
        assert row["top"][0] == {"label": row["label"], "score": row["score"]}
        assert row["top"][0]["score"] >= row["top"][1]["score"]
    one_by_one = [b.predict([p])[0]["label"] for p in pets]
    assert [r["label"] for r in out] == one_by_one  # batching/padding does not change answers
    probs = b.predict_proba(pets)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_predict_cli_in_order(tmp_path: Path, topic_bundle: Path, dept_bundle: Path) -> None:
    rows = [{"id": f"x{i}", "title": t, "text": None} for i, t in
            enumerate(["A3区公交车路线问题", "学校幼儿园收费", "K8县小区物业停车问题", "B5县学校收费"] * 3)]
    inp = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = _invoke(["predict", "--model", topic_bundle, "--model", dept_bundle, "--input", inp, "--output", out,
                   "--batch-size", "5", "--chunk", "7"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [r["id"] for r in rows]
    r0 = lines[0]
    assert set(r0) == {"id", "topic", "department", "needs_review"}
    assert set(r0["department"]) == {"label", "score", "top", "jurisdiction", "display"}
    assert r0["department"]["jurisdiction"] == "A3区"
    assert r0["department"]["display"] == f"A3区 · {r0['department']['label']}"
    # topic only: no department key
    res = _invoke(["predict", "--model", topic_bundle, "--input", inp, "--output", out])
    assert res.exit_code == 0, res.output
    assert "department" not in json.loads(out.read_text().splitlines()[0])


def test_pipeline_thread_safe_and_info(topic_bundle: Path, dept_bundle: Path) -> None:
    pipe = ClassificationPipeline.from_paths([topic_bundle, dept_bundle])
    pets = [{"id": str(i), "title": t} for i, t in enumerate(["A3区公交车路线问题", "学校幼儿园收费反映"] * 4)]
    expected = pipe.classify(pets)
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(pipe.classify(pets))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12 and all(r == expected for r in results)
    info = pipe.info()
    assert set(info) == {"topic", "department"} and info["topic"]["version"]


def test_needs_review_follows_threshold(topic_bundle: Path) -> None:
    pipe = ClassificationPipeline.from_paths([topic_bundle])
    b = pipe.bundles["topic"]
    pets = [{"id": "1", "title": "A3区公交车路线问题"}, {"id": "2", "text": "学校幼儿园收费"}]
    b.config["review"]["threshold"] = 0.0
    assert not any(r["needs_review"] for r in pipe.classify(pets))
    b.config["review"]["threshold"] = 1.01
    assert all(r["needs_review"] for r in pipe.classify(pets))
    rows = pipe.classify(pets)
    b.config["review"]["threshold"] = (rows[0]["topic"]["score"] + rows[1]["topic"]["score"]) / 2
    flags = [r["needs_review"] for r in pipe.classify(pets)]
    assert flags == [r["topic"]["score"] < b.threshold for r in rows] and flags[0] != flags[1] \
        or rows[0]["topic"]["score"] == rows[1]["topic"]["score"]


# ------------------------------------------------------------------------------------------ eval
def test_eval_cli_json(tmp_path: Path, topic_bundle: Path, data_file: Path) -> None:
    test = _write_jsonl(tmp_path / "test.jsonl", [
        {"id": f"t{i}", "title": t, "topic": lab} for i, (t, lab) in enumerate(
            [("B5县公交车路线", "交通运输"), ("学校幼儿园收费高", "教育文体"), ("小区物业停车难", "城乡建设")] * 4)])
    res = _invoke(["eval", "--model", topic_bundle, "--data", test, "--train-data", data_file, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{"):])
    assert rep["train_data_fingerprint_matches"] and rep["train_split_fingerprint_matches"]
    assert set(rep["metrics"]) == {"model", "char TF-IDF SVM", "ensemble (mean)"}
    m = rep["metrics"]["model"]
    for key in ("accuracy", "macro_f1", "top3_accuracy", "ece", "coverage", "per_class", "confusion_matrix"):
        assert key in m
    assert sum(map(sum, m["confusion_matrix"])) == 12
    res = _invoke(["eval", "--model", topic_bundle, "--data", data_file])
    assert res.exit_code == 0, res.output
    assert "macro-F1" in res.stdout and "char TF-IDF SVM (CV)" in res.stdout


# ------------------------------------------------------------------------------------------ calibration
def test_temperature_scaling_reduces_ece() -> None:
    rng = np.random.default_rng(0)
    n, c = 2000, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 1.0
    over = logits * 6  # overconfident
    t = cal.fit_temperature(over, y)
    assert 3 < t < 12
    assert cal.expected_calibration_error(cal.softmax(over, t), y) < cal.expected_calibration_error(cal.softmax(over), y) / 2


def test_choose_threshold_meets_target_precision() -> None:
    rng = np.random.default_rng(1)
    n = 1000
    conf = rng.uniform(0.34, 1.0, n)
    y = np.where(rng.uniform(size=n) < conf, 0, 1)  # correct with probability = confidence
    probs = np.stack([conf, 1 - conf], axis=1)
    r = cal.choose_threshold(probs, y, 0.9)
    accepted = conf >= r["threshold"]
    assert r["attainable"] and (y[accepted] == 0).mean() >= 0.9 and 0.1 < accepted.mean() < 0.9
    bad = cal.choose_threshold(np.full((50, 2), 0.5) + [0.01, -0.01], np.ones(50, dtype=int), 0.9)
    assert not bad["attainable"] and bad["threshold"] > 1.0


def test_department_trained_on_top_of_a_topic_bundle(tmp_path: Path, topic_bundle: Path, data_file: Path) -> None:
    """--base may name a bundle: its fine-tuned encoder (and text prefix) is the starting point; the new bundle
    keeps every layer that differs from the root base (here the topic's trained top layer, retrained)."""
    from xinfang.models.encoder import resolve_encoder
    from xinfang.training.bundle_writer import default_prefix

    with pytest.raises(ModelError, match="classifier bundle, not an encoder checkpoint"):
        resolve_encoder(topic_bundle)
    prefix = json.loads((topic_bundle / "config.json").read_text())["text_prefix"]
    assert default_prefix(topic_bundle) == prefix
    out = tmp_path / "dept"
    res = _invoke(["train", "--task", "department", "--data", data_file, "--base", topic_bundle, "--out", out,
                   "--recipe", "tiny", "--seed", "3"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    topic_cfg = json.loads((topic_bundle / "config.json").read_text())
    assert cfg["base_bundle"]["path"] == str(topic_bundle) and cfg["text_prefix"] == prefix
    assert cfg["base"] == topic_cfg["base"] and cfg["shared_layers"] == topic_cfg["shared_layers"]
    dept = ClassifierBundle.load(out)
    assert dept.predict([{"id": "x", "title": "学校幼儿园收费"}])[0]["label"]
    assert dept.base is ClassifierBundle.load(topic_bundle).base  # one base per process


# ------------------------------------------------------------------------------------------ router
def _duty(tmp_path: Path) -> DutyList:
    p = tmp_path / "duty.yaml"
    p.write_text(
        "- department: 公安\n  keywords: [报警, 派出所]\n  patterns: ['(户口|户籍).{0,4}(迁|办)']\n  topics: []\n"
        "- department: 交通运输\n  keywords: [公交, 客运]\n  topics: [交通运输]\n"
        "- department: 教育\n  keywords: [学校]\n  topics: [教育文体]\n"
        "- department: 住房和城乡建设\n  keywords: [物业]\n  topics: [城乡建设]\n"
        "- department: 城市管理和综合执法\n  keywords: [违建]\n  topics: [城乡建设]\n", encoding="utf-8")
    return DutyList.load(p)


def test_router_precedence(tmp_path: Path) -> None:
    duty = _duty(tmp_path)
    labels = ["交通运输", "住房和城乡建设", "公安", "教育"]
    r = Router(duty, labels)
    # 1. a pattern overrides a confident model
    a = r.route("K8县户口迁入办不了", np.array([0.9, 0.05, 0.02, 0.03]))
    assert a["label"] == "公安" and a["score"] == 1.0 and a["display"] == "K8县 · 公安"
    # 2. a keyword promotes a close runner-up ...
    a = r.route("小区物业问题", np.array([0.45, 0.40, 0.1, 0.05]))
    assert a["label"] == "住房和城乡建设"
    # ... but not against a confident model
    a = r.route("小区物业问题", np.array([0.8, 0.15, 0.03, 0.02]))
    assert a["label"] == "交通运输"
    # 3. no department model: topic prior (split between departments sharing a topic) + keywords
    r2 = Router(duty)
    a = r2.route("A3区违建问题", None, {"城乡建设": 0.9, "交通运输": 0.1})
    assert a["label"] == "城市管理和综合执法" and a["jurisdiction"] == "A3区"
    a = r2.route("A3区某问题", None, {"交通运输": 0.7, "城乡建设": 0.3})
    assert a["label"] == "交通运输" and abs(sum(t["score"] for t in a["top"]) - 1.0) < 1e-6
    # 4. nothing to go on
    assert Router(None, None).route("text", None, None) is None


def test_routed_probs_follow_route_order(tmp_path: Path) -> None:
    labels = ["交通运输", "住房和城乡建设", "公安", "教育"]
    r = Router(_duty(tmp_path), labels)
    texts = ["K8县户口迁入办不了", "小区物业问题", "小区物业问题", "没有关键词"]
    probs = np.array([[0.9, 0.05, 0.02, 0.03], [0.45, 0.40, 0.1, 0.05], [0.8, 0.15, 0.03, 0.02],
                      [0.1, 0.2, 0.3, 0.4]])
    routed = r.routed_probs(texts, probs)
    assert routed.shape == probs.shape and np.allclose(routed.sum(1), 1.0)
    for text, p, row in zip(texts, probs, routed, strict=True):
        order = [t["label"] for t in r.route(text, p, top_k=len(labels))["top"]]
        assert [labels[j] for j in np.argsort(-row, kind="stable")] == order
    assert labels[routed[0].argmax()] == "公安" and labels[routed[1].argmax()] == "住房和城乡建设"
    assert np.allclose(routed[3], probs[3])  # no keyword, no pattern: the model's probabilities


def test_shipped_province_duty_list_covers_the_24_labels() -> None:
    duty = DutyList.load(Path(__file__).resolve().parents[1] / "datasets" / "duty_lists" / "province_24.yaml")
    assert len(duty.departments) == 24 and "街道乡镇" in duty.departments
    assert not any(e.patterns for e in duty.entries)  # keywords only: see the file's header
    assert duty.keyword_hits("我市公积金提取难")["住房和城乡建设"] == 1


def test_eval_cli_with_duty_list(tmp_path: Path, dept_bundle: Path, data_file: Path) -> None:
    p = tmp_path / "duty.yaml"
    p.write_text("- department: 教育\n  keywords: [学校, 幼儿园]\n", encoding="utf-8")
    res = _invoke(["eval", "--model", dept_bundle, "--data", data_file, "--duty-list", p, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{"):])
    assert rep["duty_list"] == str(p) and "model + duty list" in rep["metrics"]
    routed = rep["metrics"]["model + duty list"]
    assert 0.0 <= routed["accuracy"] <= 1.0 and routed["top3_accuracy"] >= routed["accuracy"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- keywords: [x]\n", encoding="utf-8")
    res = _invoke(["eval", "--model", dept_bundle, "--data", data_file, "--duty-list", bad])
    assert res.exit_code != 0 and "department" in res.output


def test_pipeline_duty_list_without_department_model(tmp_path: Path, topic_bundle: Path) -> None:
    p = tmp_path / "duty.yaml"
    p.write_text("- department: 公安\n  patterns: ['户口']\n- department: 交通运输\n  topics: [交通运输]\n"
                 "- department: 教育\n  topics: [教育文体]\n- department: 住房和城乡建设\n  topics: [城乡建设]\n",
                 encoding="utf-8")
    pipe = ClassificationPipeline.from_paths([topic_bundle], duty_list=p)
    rows = pipe.classify([{"id": "a", "title": "K8县户口问题"}, {"id": "b", "title": "A3区公交车路线问题"}])
    assert rows[0]["department"]["label"] == "公安" and rows[0]["department"]["display"] == "K8县 · 公安"
    assert rows[1]["department"]["label"] in {"交通运输", "教育", "住房和城乡建设"}
    assert set(rows[1]) == {"id", "topic", "department", "needs_review"}


@pytest.mark.parametrize("text,expected,levels", [
    ("A市A2区桂花坪街道的景蓉华苑小区物业", "A2区", {"city": "A市", "county": "A2区", "township": "桂花坪街道"}),
    ("K8县桃源镇村道破损严重", "K8县", {"county": "K8县", "township": "桃源镇"}),
    ("我住在临江区东湖街道，楼下超市噪音", "临江区", {"county": "临江区", "township": "东湖街道"}),
    ("J3县方元镇燕塘乡枫山村有个选矿厂", "J3县", {"county": "J3县", "township": "方元镇"}),
    ("希望取缔A市金帆路停车场", "A市", {"city": "A市"}),
    ("桃源镇卫生院", "桃源镇", {"township": "桃源镇"}),
    ("金帆小区业主反映城乡公交和社区问题", None, {}),
    ("", None, {}),
])
def test_jurisdiction_extraction(text: str, expected: str | None, levels: dict) -> None:
    assert extract_jurisdiction(text) == expected
    assert jurisdiction_levels(text) == levels


def test_duty_list_errors(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    p.write_text("- department: 公安\n  patterns: ['(unclosed']\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 \(公安\): key 'patterns': bad regex"):
        DutyList.load(p)
    p.write_text("- department: 公安\n- department: 教育\n- department: 公安\n  keywords: [派出所]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: department '公安' is listed twice \(first at line 1\)"):
        DutyList.load(p)
    p.write_text("- department: 公安\n  keyword: [派出所]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1 \(公安\): unknown key\(s\) \['keyword'\]"):
        DutyList.load(p)
    p.write_text("- keywords: [a]\n", encoding="utf-8")
    with pytest.raises(DataError, match="department"):
        DutyList.load(p)
    p.write_text("a: [\n", encoding="utf-8")
    with pytest.raises(DataError, match="YAML"):
        DutyList.load(p)


# ------------------------------------------------------------------------------------------ bad input
def test_no_title_no_text_names_row(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    rows = _rows(4)
    rows[5] = {**rows[5], "title": None, "text": None}
    f = _write_jsonl(tmp_path / "bad.jsonl", rows)
    res = _invoke(["train", "--task", "topic", "--data", f, "--base", tiny_encoder_dir, "--out", tmp_path / "m",
                   "--recipe", "tiny"])
    assert res.exit_code != 0 and "row 6" in str(res.exception) + res.output


def test_whitespace_only_fields(tmp_path: Path) -> None:
    rows = _rows(4)
    rows[2] = {**rows[2], "title": "   ", "text": "\u3000 \t"}
    with pytest.raises(DataError, match="row 3"):
        prepare_examples([{**r, "_row": i + 1} for i, r in enumerate(rows)], "topic", "f.jsonl")
    rows[2] = {**rows[2], "title": "学校收费", "text": "   "}  # title only: valid
    ex = prepare_examples([{**r, "_row": i + 1} for i, r in enumerate(rows)], "topic", "f.jsonl")
    assert ex.texts[2] == "学校收费"
    from xinfang.models.classifier import petition_input

    with pytest.raises(DataError, match=r"id z.*title and text are both empty"):
        petition_input({"id": "z", "title": " ", "text": None})


def test_unknown_label_column(tmp_path: Path, tiny_encoder_dir: Path, data_file: Path) -> None:
    res = _invoke(["train", "--task", "topic", "--data", data_file, "--label-column", "nope", "--base",
                   tiny_encoder_dir, "--out", tmp_path / "m", "--recipe", "tiny"])
    assert res.exit_code != 0 and "nope" in str(res.exception)
    with pytest.raises(DataError, match="label column 'nope'"):
        prepare_examples(_rows(2), "nope")


def test_single_class_rejected(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    rows = [r for r in _rows(6) if r["topic"] == "交通运输"]
    with pytest.raises(DataError, match="at least 2 classes"):
        train(rows, task="topic", out_dir=tmp_path / "m", base=tiny_encoder_dir, recipe="tiny")
    assert not (tmp_path / "m").exists()


def test_class_with_one_example_dropped_with_warning(tmp_path: Path, tiny_encoder_dir: Path, caplog) -> None:
    rows = _rows(6) + [{"id": "solo", "title": "退役军人安置问题", "text": None, "topic": "退役军人"}]
    with caplog.at_level(logging.WARNING):
        train(rows, task="topic", out_dir=tmp_path / "m", base=tiny_encoder_dir,
                         recipe=recipe_with("tiny", epochs=1), progress=False)
    assert any("退役军人" in r.message and "dropped" in r.message for r in caplog.records)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["dropped_classes"] == {"退役军人": 1}
    assert "退役军人" not in json.loads((tmp_path / "m" / "labels.json").read_text())
    assert "dropped classes" in (tmp_path / "m" / "MODEL_CARD.md").read_text()


def test_huge_text_is_bounded(topic_bundle: Path) -> None:
    b = ClassifierBundle.load(topic_bundle)
    out = b.predict([{"title": "公交车路线", "text": "交通" * 50_000}])
    assert out[0]["label"] in TOPICS


def test_duplicate_ids(tmp_path: Path, topic_bundle: Path) -> None:
    inp = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "1", "title": "公交"}, {"id": "1", "title": "学校"}])
    res = _invoke(["predict", "--model", topic_bundle, "--input", inp, "--output", tmp_path / "o.jsonl"])
    assert res.exit_code != 0 and "duplicate id" in str(res.exception)
    pipe = ClassificationPipeline.from_paths([topic_bundle])
    with pytest.raises(DataError, match="duplicate"):
        pipe.classify([{"id": "1", "title": "公交"}, {"id": "1", "title": "学校"}])


def test_group_split_never_straddles() -> None:
    titles = ["公交车路线问题"] * 3 + ["学校收费"] * 3 + [f"小区物业{i}" for i in range(12)]
    texts = ["a", "b", "c", "d", "e", "f"] + [f"x{i}" for i in range(10)] + ["a", "d"]  # last two join groups
    labels = ["交通"] * 3 + ["教育"] * 3 + ["城建", "交通", "教育"] * 4
    g = group_ids(titles, texts)
    assert g[0] == g[1] == g[2] == g[16] and g[3] == g[4] == g[5] == g[17]
    for seed in range(5):
        tr, va = group_split(labels, g, 0.25, seed)
        assert not {g[i] for i in tr} & {g[i] for i in va}
        assert set(labels) == {labels[i] for i in tr}


@pytest.mark.realdata
def test_real_topic_groups(shared_data_dir: Path) -> None:
    recs = load_records(shared_data_dir / "topic_train.jsonl", label_column="topic")
    ex = prepare_examples(recs, "topic", "topic_train.jsonl")
    assert len(ex.texts) == len(recs) and len(set(ex.labels)) == 7
    g = group_ids(ex.titles, ex.texts)
    by_dup: dict = {}
    for rec, gid in zip(recs, g, strict=True):
        if rec.get("dup_title_group") is not None:
            by_dup.setdefault(rec["dup_title_group"], set()).add(gid)
    assert by_dup and all(len(s) == 1 for s in by_dup.values())  # exact-title repeats share a group
    tr, va = group_split(ex.labels, g, 0.1, 13)
    assert not {g[i] for i in tr} & {g[i] for i in va} and 0.07 < len(va) / len(g) < 0.13


# ------------------------------------------------------------------------------------------ TF-IDF ensemble
def test_ensemble_files_in_manifest_and_weight_recorded(topic_bundle: Path) -> None:
    from xinfang.training.bundle_writer import ENSEMBLE_WEIGHTS

    manifest = json.loads((topic_bundle / "manifest.json").read_text())
    assert {"tfidf.json", "tfidf_head.safetensors"} <= set(manifest["files"])
    cfg = json.loads((topic_bundle / "config.json").read_text())
    ens = cfg["ensemble"]
    assert ens["weight"] in ENSEMBLE_WEIGHTS and ens["components"] == ["encoder", "tfidf"] and ens["temperature"] > 0
    f1 = ens["validation_macro_f1"]
    assert f1["encoder"] == f1["by_weight"]["1.0"] and f1["tfidf"] == f1["by_weight"]["0.0"]
    assert f1["by_weight"][str(ens["weight"])] == max(f1["by_weight"].values())
    metrics = json.loads((topic_bundle / "metrics.json").read_text())
    assert metrics["ensemble"]["weight"] == ens["weight"] and "ensemble" in metrics["ensemble"]
    assert "TF-IDF" in (topic_bundle / "MODEL_CARD.md").read_text()
    tf = json.loads((topic_bundle / "tfidf.json").read_text())
    assert tf["analyzer"] == "char" and tf["ngram_range"] == [1, 3] and tf["vocabulary"]


def test_tfidf_head_round_trip_equals_in_memory(tmp_path: Path) -> None:
    from xinfang.models.tfidf_head import TfidfHead

    rows = _rows(8)
    labels = sorted(TOPICS) + ["unseen"]
    texts = [f"{r['title']}\n{r['text'] or ''}" for r in rows]
    y = [labels.index(r["topic"]) for r in rows]
    head = TfidfHead.fit(texts, y, len(labels), seed=1)
    head.calibrate(texts[::2], y[::2])
    head.save(tmp_path)
    loaded = TfidfHead.load(tmp_path, len(labels))
    query = ["K8县公交车路线问题", "学校收费 ABC", "完全无关的内容", "小区物业停车"]
    diff = loaded.transform(query) - head.vectorizer.transform(query)  # our tf-idf == sklearn's
    assert abs(diff).max() < 1e-9 if diff.nnz else True
    sk = head.svm.decision_function(head.vectorizer.transform(query))
    np.testing.assert_allclose(loaded.scores(query)[:, :3], sk, atol=1e-5)
    np.testing.assert_allclose(loaded.proba(query), head.proba(query), atol=1e-6)
    assert loaded.temperature == head.temperature and loaded.proba(query)[:, 3].max() < 1e-6
    with pytest.raises(ModelError, match="shapes"):
        TfidfHead.load(tmp_path, len(labels) + 1)


def test_bundle_uses_ensemble(topic_bundle: Path) -> None:
    from xinfang.models.calibration import ensemble_proba

    b = ClassifierBundle.load(topic_bundle)
    texts = ["K8县公交车路线问题", "学校幼儿园收费"]
    expected = ensemble_proba(cal.softmax(b.logits(texts), b.temperature), b.tfidf.proba(texts),
                              b.ensemble["weight"], b.ensemble["temperature"])
    np.testing.assert_allclose(b.proba_texts(texts), expected, atol=1e-9)
    pipe = ClassificationPipeline(bundles={"topic": b})
    row = pipe.classify([{"id": "1", "title": texts[0]}])[0]
    assert row["topic"]["score"] == round(float(expected[0].max()), 6)


def test_no_tfidf_bundle_still_predicts(tmp_path: Path, tiny_encoder_dir: Path, data_file: Path) -> None:
    out = tmp_path / "plain"
    res = _invoke(["train", "--task", "topic", "--data", data_file, "--base", tiny_encoder_dir, "--out", out,
                   "--recipe", "tiny", "--epochs", "2", "--seed", "3", "--no-tfidf"])
    assert res.exit_code == 0, res.output
    assert not (out / "tfidf.json").exists() and not (out / "tfidf_head.safetensors").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ensemble"] is None and cfg["recipe"]["tfidf"] is False
    b = ClassifierBundle.load(out)
    assert b.tfidf is None and b.ensemble is None
    texts = ["K8县公交车路线问题"]
    np.testing.assert_allclose(b.proba_texts(texts), cal.softmax(b.logits(texts), b.temperature), atol=1e-9)
    assert b.predict([{"title": texts[0]}])[0]["label"] in TOPICS


def test_ensemble_files_cannot_be_dropped_from_manifest(topic_bundle: Path, tmp_path: Path) -> None:
    from xinfang.models.classifier import write_manifest

    copy = tmp_path / "b"
    shutil.copytree(topic_bundle, copy)
    (copy / "tfidf.json").unlink()
    (copy / "tfidf_head.safetensors").unlink()
    write_manifest(copy)  # a consistent manifest, but config.json still declares the ensemble
    with pytest.raises(ModelError, match="tfidf"):
        ClassifierBundle.load(copy)


def test_incremental_refits_tfidf_head(topic_bundle: Path, tmp_path: Path) -> None:
    more = _rows(6) + [{"id": f"n{i}", "title": f"退役军人安置{i}", "text": "退役军人安置问题", "topic": "退役"}
                       for i in range(6)]
    res = train(more, init=topic_bundle, out_dir=tmp_path / "inc", recipe="tiny", seed=5, progress=False)
    b = ClassifierBundle.load(res.out_dir)
    assert b.labels[-1] == "退役" and b.tfidf is not None and b.tfidf.coef.shape[0] == len(b.labels)
    parent_vocab = json.loads((topic_bundle / "tfidf.json").read_text())["vocabulary"]
    assert "退役" in b.tfidf.vocabulary and "退役" not in parent_vocab  # refitted on the new data
    assert b.config["ensemble"]["weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert b.predict([{"title": "退役军人安置问题"}])[0]["label"] in b.labels
