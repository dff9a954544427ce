"""Legal channel (诉访分离): reply extractor, channel table, decision, `xinfang train --task channel`, the pipeline,
the API field, the list filter, channel corrections and their export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import auth, create_keys, make_config, running_app
from typer.testing import CliRunner

from xinfang.cli import app
from xinfang.errors import DataError, ModelError
from xinfang.models.channel import ChannelDecider, ChannelTable, channel_evidence, check_channel_labels
from xinfang.settings import CHANNEL_TABLE, DEMO_DATA_DIR
from xinfang.training.channel_replies import extract_channel, history_labels


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ extractor
@pytest.mark.parametrize("reply,channel,tier,evidence", [
    ("您好！经核实，双方属于买卖合同关系，建议您通过法律途径解决。", "诉讼仲裁复议", "high", "法律途径"),
    ("如对处理结果不服，可依法申请劳动人事争议仲裁。", "诉讼仲裁复议", "high", "仲裁"),
    ("可在六十日内依法申请行政复议。", "诉讼仲裁复议", "high", "行政复议"),
    ("公安机关已立案侦查，案件正在办理中。", "依法履职", "high", "立案侦查"),
    ("执法人员现场责令其立即停止施工并限期拆除。", "依法履职", "high", "责令"),
    ("您反映的问题已转县纪委调查处理。", "纪检监察", "high", "纪委"),
    ("根据相关政策规定，新生儿落户需提供出生医学证明。答复如下。", "信访", "low", "规定"),
])
def test_extractor_reads_the_channel_with_tier_and_evidence(reply, channel, tier, evidence) -> None:
    ans = extract_channel(reply)
    assert (ans.channel, ans.confidence) == (channel, tier)
    assert evidence in ans.evidence and evidence in ans.reason


def test_extractor_undecided_says_why() -> None:
    assert extract_channel(None).reason == "no reply text"
    assert extract_channel("谢谢您的留言。").channel is None
    assert "no channel" in extract_channel("谢谢您的留言。").reason
    both = extract_channel("已转纪委调查；同时建议通过法律途径解决。")
    assert both.channel is None and "conflicting" in both.reason
    # a weak enforcement sign is reported as low (not used for training) and blocks a 信访 reading
    low = extract_channel("执法人员到现场进行了检查。根据政策规定答复如下。")
    assert (low.channel, low.confidence) == ("依法履职", "low")


def test_history_labeller_is_registered_and_weighted(tmp_path: Path) -> None:
    from xinfang.training.history import HISTORY_WEIGHTS, history_records

    rows = [{"id": "h1", "title": "合同纠纷", "text": "开发商不退定金", "reply": "建议通过法律途径解决。"},
            {"id": "h2", "title": "咨询", "text": "落户政策", "reply": "根据相关文件规定，答复如下。"},
            {"id": "h3", "title": "噪音", "text": "工地夜间施工", "reply": "执法人员已到现场检查。"},
            {"id": "h4", "title": "感谢", "text": "感谢", "reply": "谢谢。"}]
    out, counts = history_records("channel", _write_jsonl(tmp_path / "h.jsonl", rows), None)
    assert {r["id"]: r["channel"] for r in out} == {"h1": "诉讼仲裁复议"}
    assert all(r["label_weight"] == HISTORY_WEIGHTS[r["label_confidence"]] and r["label_evidence"] for r in out)
    assert all("reply" not in r for r in out)
    assert counts["rows"] == 4 and counts["used"] == 1 and counts["low"] == 2 and counts["undecided"] == 1
    assert history_labels(rows[:1], tiers=("medium",))[0] == []
    assert [r["channel"] for r in history_labels(rows[:2], tiers=("high", "low"))[0]] == ["诉讼仲裁复议", "信访"]


# ------------------------------------------------------------------------------------------ table and decision
def test_shipped_table_and_errors_naming_the_key(tmp_path: Path) -> None:
    table = ChannelTable.load(CHANNEL_TABLE)
    assert set(table.entries) == {"信访", "依法履职", "诉讼仲裁复议", "纪检监察", "其他"}
    bad = {"channels:\n  信访: {procedure: a, body: b}\n  上访: {procedure: a, body: b}\n": "channels.上访",
           "channels:\n  信访: {procedure: a}\n": "channels.信访.body",
           "channels:\n  依法履职: {procedure: a, body: b}\n": "channels.信访 is required",
           "channels:\n  信访: {procedure: a, body: b, routes: [{pattern: '(', procedure: x, body: y}]}\n":
               "channels.信访.routes[0].pattern",
           "channels:\n  信访: {procedure: a, body: b, colour: red}\n": "colour",
           "keyword_boost: -1\nchannels:\n  信访: {procedure: a, body: b}\n": "keyword_boost",
           "keyword_weight: 1\nchannels:\n  信访: {procedure: a, body: b}\n": "keyword_weight",
           "- 信访\n": "channels"}
    for text, key in bad.items():
        with pytest.raises(DataError, match=key.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
            ChannelTable.parse(text, tmp_path / "t.yaml")
    small = ChannelTable.parse("channels:\n  信访: {procedure: a, body: b}\n", tmp_path / "t.yaml")
    with pytest.raises(ModelError, match="channels.依法履职"):
        ChannelDecider(small, ["信访", "依法履职"], 0.5)


def _without_review_thresholds(table: ChannelTable) -> dict:
    return {c: replace(e, review_threshold=None) for c, e in table.entries.items()}


def test_decision_fuses_keywords_and_names_procedure_and_body() -> None:
    shipped = ChannelTable.load(CHANNEL_TABLE)
    table = ChannelTable(_without_review_thresholds(shipped), 0.5, shipped.path, 0.0)  # keyword re-weighting alone
    labels = ["依法履职", "信访", "纪检监察", "诉讼仲裁复议"]
    dec = ChannelDecider(table, labels, threshold=0.55)
    probs = np.array([0.40, 0.45, 0.05, 0.10])
    plain = dec.decide(probs, "小区门口路灯不亮，希望修好。")
    assert plain["label"] == "信访" and plain["needs_review"]  # 0.45 < 0.55: unsure
    assert "需人工甄别" in plain["reason"]
    dept = {"label": "城市管理和综合执法", "display": "临江区 · 城市管理和综合执法"}
    fused = dec.decide(probs, "楼顶违章建筑，请依法查处。", dept)
    assert fused["label"] == "依法履职" and fused["score"] > 0.40
    assert "违章建筑" in fused["reason"] and fused["body"] == dept["display"]
    assert fused["procedure"] == table.entries["依法履职"].procedure
    assert sum(t["score"] for t in fused["top"]) == pytest.approx(1.0, abs=0.1)
    labour = dec.decide(np.array([0.1, 0.1, 0.05, 0.75]), "公司辞退我不给经济补偿。")
    assert labour["label"] == "诉讼仲裁复议" and labour["body"] == "劳动人事争议仲裁委员会"
    court = dec.decide(np.array([0.1, 0.1, 0.05, 0.75]), "开发商不按合同交房。")
    assert court["body"] == "人民法院"
    graft = dec.decide(np.array([0.1, 0.2, 0.6, 0.1]), "村支书贪污扶贫款。")
    assert graft["body"] == "纪检监察机关" and not graft["needs_review"]
    # the keyword rule's vote lets a clear keyword case reach a rare channel the model does not see
    voted = ChannelDecider(ChannelTable(_without_review_thresholds(shipped), 0.0, shipped.path, 0.6), labels,
                           threshold=0.55)
    ans = voted.decide(np.array([0.05, 0.9, 0.02, 0.03]), "举报村支书贪污受贿。")
    assert ans["label"] == "纪检监察" and "贪污" in ans["reason"]
    assert voted.decide(np.array([0.05, 0.9, 0.02, 0.03]), "路灯不亮。")["label"] == "信访"
    assert shipped.rule("举报村支书贪污受贿。") == "纪检监察" and shipped.rule("路灯不亮") == "信访"


def test_per_channel_review_thresholds_and_definitions(tmp_path: Path) -> None:
    shipped = ChannelTable.load(CHANNEL_TABLE)
    labels = ["依法履职", "信访", "纪检监察", "诉讼仲裁复议"]
    # the shipped table sends every non-信访 answer to review, however sure, and says so; 信访 keeps the bundle's
    dec = ChannelDecider(shipped, labels, threshold=0.55)
    graft = dec.decide(np.array([0.01, 0.01, 0.97, 0.01]), "村支书贪污扶贫款。")
    assert graft["label"] == "纪检监察" and graft["needs_review"] and "须人工甄别确认" in graft["reason"]
    assert graft["body"] == "纪检监察机关"
    assert not dec.decide(np.array([0.02, 0.95, 0.01, 0.02]), "路灯不亮，希望修好。")["needs_review"]
    unsure = dec.decide(np.array([0.1, 0.6, 0.1, 0.2]), "楼顶违章建筑。")  # 依法履职 under the bundle's 0.55 too
    assert unsure["label"] == "依法履职" and unsure["needs_review"] and "把握不足" in unsure["reason"]
    assert all(shipped.entries[c].definition for c in shipped.entries)
    text = ("channels:\n  信访: {procedure: a, body: b}\n"
            "  依法履职: {procedure: a, body: b, review_threshold: 0.8, definition: 查处违法行为}\n")
    own = ChannelTable.parse(text, tmp_path / "t.yaml")
    d = ChannelDecider(own, ["信访", "依法履职"], threshold=0.5)
    assert d.threshold_of("依法履职") == 0.8 and d.threshold_of("信访") == 0.5
    assert d.decide(np.array([0.3, 0.7]), "x")["needs_review"]
    assert not d.decide(np.array([0.1, 0.9]), "x")["needs_review"]
    for bad in ("1.5", "yes", "[1]"):
        with pytest.raises(DataError, match=r"channels\.依法履职\.review_threshold"):
            ChannelTable.parse(text.replace("0.8", bad), tmp_path / "t.yaml")
    with pytest.raises(DataError, match=r"channels\.依法履职\.definition"):
        ChannelTable.parse(text.replace("查处违法行为", "[a]"), tmp_path / "t.yaml")
    ev = channel_evidence(shipped, ["楼顶违章建筑违法", "路灯不亮"], np.eye(2, 3),
                          {"信访": np.array([0.0, 1.0, 0.0]), "依法履职": np.array([1.0, 0.0, 0.0])})
    assert ev["keywords"].tolist()[1] == [0, 0, 0] and ev["keywords"][0, 0] == 2  # capped at 2 hits
    assert ev["definition"][0, 1] > ev["definition"][0, 0] and ev["definition"][1, 0] > ev["definition"][1, 1]


def test_channel_labels_checked_naming_the_row() -> None:
    rows = [{"_row": 1, "channel": "信访"}, {"_row": 2, "channel": "上访"}]
    with pytest.raises(DataError, match="row 2.*'上访'"):
        check_channel_labels(rows, "channel", "f.jsonl")
    with pytest.raises(DataError, match="row 1: empty label"):
        check_channel_labels([{"_row": 1, "channel": " "}], "channel", "f.jsonl")
    with pytest.raises(DataError, match="row 1: no label column 'channel'"):
        check_channel_labels([{"_row": 1, "topic": "x"}], "channel", "f.jsonl")


# ------------------------------------------------------------------------------------------ train / predict
def test_train_and_predict_cli(tmp_path: Path, tiny_encoder_dir: Path, service_models) -> None:
    runner = CliRunner()
    rows = [json.loads(line) for line in (DEMO_DATA_DIR / "petitions.jsonl").read_text("utf-8").splitlines()]
    bad = _write_jsonl(tmp_path / "bad.jsonl", rows[:5] + [{**rows[5], "channel": "上访"}])
    res = runner.invoke(app, ["train", "--task", "channel", "--data", str(bad), "--label-column", "channel",
                              "--base", str(tiny_encoder_dir), "--recipe", "tiny", "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "row 6" in str(res.exception) + res.output
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{**r, "channel": ""} for r in rows[:5]])
    res = runner.invoke(app, ["train", "--task", "channel", "--data", str(empty), "--label-column", "channel",
                              "--base", str(tiny_encoder_dir), "--recipe", "tiny", "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "row 1: empty label" in str(res.exception) + res.output
    out = tmp_path / "channel"
    closed = _write_jsonl(tmp_path / "closed.jsonl", [
        {"id": "x1", "title": "装修公司拒不退还定金", "text": "签了合同交了定金却一直不开工", "reply": "建议您通过法律途径解决。"},
        {"id": "x2", "title": "举报村干部", "text": "村干部挪用扶贫资金", "reply": "已转县纪委调查处理。"},
        {"id": "x3", "title": "咨询政策", "text": "落户需要什么材料", "reply": "根据政策规定，答复如下。"}])
    # the owners' command with the default recipe: the text-only bundle (no encoder layer)
    res = runner.invoke(app, ["train", "--task", "channel", "--data", str(DEMO_DATA_DIR / "petitions.jsonl"),
                              "--label-column", "channel", "--base", str(tiny_encoder_dir),
                              "--history", str(closed), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 of 3 closed cases" in res.output
    cfg = json.loads((out / "config.json").read_text("utf-8"))
    assert cfg["task"] == "channel" and cfg["label_column"] == "channel"
    assert cfg["text_only"] and cfg["keyword_fusion"] is False and cfg["recipe"]["name"] == "channel-text"
    assert {"keyword_head.json", "keyword_head.safetensors", "tfidf.json", "tfidf_head.safetensors"} <= {
        p.name for p in out.iterdir()}
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in out.iterdir())
    assert cfg["history"]["used"] == 2 and cfg["history"]["class_counts"] == {"纪检监察": 1, "诉讼仲裁复议": 1}
    topic, dept, _ = service_models[0]
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"id": "t1", "title": "楼顶违章建筑请查处", "text": None},
                                                {"id": "t2", "title": "咨询落户", "text": "请问新生儿落户流程"}])
    res = runner.invoke(app, ["predict", "--model", str(topic), "--model", str(dept), "--model", str(out),
                              "--input", str(inp), "--output", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text("utf-8").splitlines()]
    assert [p["id"] for p in preds] == ["t1", "t2"]  # a title-only petition is classified too
    for p in preds:
        ch = p["channel"]
        assert set(ch) == {"label", "score", "top", "reason", "procedure", "body"}
        assert ch["procedure"] and ch["body"] and ch["reason"].startswith("模型")
        if ch["label"] == "依法履职":
            assert ch["body"] == p["department"]["display"]


def test_resolve_recipe_for_channel() -> None:
    from xinfang.training.recipes import RECIPES, resolve_recipe

    assert resolve_recipe("channel", "auto") == "channel-text" and RECIPES["channel-text"].text_only
    assert resolve_recipe("topic", "auto") == "default" and not RECIPES["default"].text_only
    assert RECIPES["channel"].val_fraction >= 0.2


def test_text_only_bundle_runs_no_encoder_and_keeps_its_keywords(service_models, tmp_path: Path) -> None:
    import shutil

    from safetensors.numpy import load_file

    from xinfang.models.classifier import ClassifierBundle, bundle_logits
    from xinfang.models.pipeline import ClassificationPipeline

    topic_dir, _, channel_dir = service_models[0]
    for backend in ("torch", "onnx-int8"):  # no encoder is built for it, whatever the runtime
        ch = ClassifierBundle.load(channel_dir, backend=backend, cache_dir=tmp_path / "onnx")
        assert ch.text_only and ch.stack is None and ch.top is None
    assert load_file(str(channel_dir / "encoder_layers.safetensors")) == {}
    topic = ClassifierBundle.load(topic_dir)
    texts = ["楼顶违章建筑请城管查处", "村干部挪用扶贫资金", "咨询新生儿落户需要什么材料"]
    lg = bundle_logits([topic, ch], texts)
    assert np.allclose(lg[1], 0) and np.allclose(lg[0], topic.logits(texts))
    direct = ch.text_head.proba(texts)
    assert np.allclose(direct.sum(1), 1) and np.allclose(ch.proba_texts(texts), direct)
    pipe = ClassificationPipeline({"topic": topic, "channel": ch})
    rows = pipe.classify([{"id": str(i), "text": t} for i, t in enumerate(texts)])
    for row, p in zip(rows, direct, strict=True):  # no keyword fusion on top: the model read the keywords
        assert set(row["channel"]) == {"label", "score", "top", "reason", "procedure", "body"}
        assert row["channel"]["label"] == ch.labels[int(p.argmax())]
        assert row["channel"]["score"] == pytest.approx(float(p.max()), abs=1e-6)
    assert ch.text_head.hits(["违章建筑违法", "路灯不亮"])[:, list(ch.text_head.keywords).index("依法履职")].tolist() \
        == [2, 0]
    with pytest.raises(ModelError, match="text-only"):
        ch.full_encoder()
    bad = tmp_path / "bad"
    shutil.copytree(channel_dir, bad)
    doc = json.loads((bad / "keyword_head.json").read_text("utf-8"))
    doc["channels"] = doc["channels"][:1]
    (bad / "keyword_head.json").write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    with pytest.raises(ModelError, match="keyword_head.json"):  # the manifest catches the edit
        ClassifierBundle.load(bad)
    with pytest.raises(ModelError, match="keyword_head.safetensors: coef has shape"):
        ClassifierBundle.load(bad, verify=False)


def test_text_only_training_checks_the_table(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    from xinfang.records import load_records
    from xinfang.training.channel_text import train_text_channel
    from xinfang.training.recipes import RECIPES

    rows = [r for r in load_records(DEMO_DATA_DIR / "petitions.jsonl") if r.get("channel")]
    small = ChannelTable.parse("channels:\n  信访: {procedure: a, body: b}\n", tmp_path / "t.yaml")
    with pytest.raises(ModelError, match="channels.依法履职"):
        train_text_channel(rows, out_dir=tmp_path / "b", label_column="channel", recipe=RECIPES["channel-text"],
                           base=str(tiny_encoder_dir), table=small)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------ service
@pytest.fixture(scope="module")
def svc(tmp_path_factory, service_models, tiny_encoder_dir):
    bundles, scorer = service_models
    config = make_config(tmp_path_factory.mktemp("svc-channel"), bundles, tiny_encoder_dir, repeat_scorer=scorer)
    keys = create_keys(config)
    with running_app(config) as client:
        yield client, keys


def test_api_carries_channel_filters_and_takes_corrections(svc, tmp_path: Path) -> None:
    client, keys = svc
    intake, cw = auth(keys["intake"]), auth(keys["caseworker"])
    models = client.get("/v1/models", headers=intake).json()
    assert "channel" in models["models"]
    res = client.post("/v1/classify", json={"petitions": [{"id": "c1", "title": "村支书贪污", "text": "举报村支书贪污"}]},
                      headers=intake)
    assert res.status_code == 200, res.text
    ch = res.json()["results"][0]["channel"]
    assert ch["label"] in models["models"]["channel"]["labels"] and ch["procedure"] and ch["body"]
    assert "channel" in res.json()["models"]
    made = {}
    for i, text in enumerate(["楼下烧烤店油烟扰民，请城管查处违法经营", "咨询新生儿落户需要什么材料"]):
        r = client.post("/v1/petitions", json={"id": f"ch-{i}", "text": text, "channel": "12345"}, headers=intake)
        assert r.status_code == 201, r.text
        made[f"ch-{i}"] = r.json()["labels"]["channel"]["label"]
    for label in set(made.values()):
        page = client.get("/v1/petitions", params={"legal_channel": label, "limit": 200}, headers=cw).json()
        ids = {p["id"] for p in page["items"]}
        assert {pid for pid, lab in made.items() if lab == label} <= ids
        assert all(p["labels"]["channel"]["label"] == label for p in page["items"])
    none = client.get("/v1/petitions", params={"legal_channel": "其他", "limit": 200}, headers=cw).json()
    assert all(p["labels"]["channel"]["label"] == "其他" for p in none["items"])
    bad = client.post("/v1/petitions/ch-0/feedback", json={"kind": "channel_correction", "label": "上访"}, headers=cw)
    assert bad.status_code == 422 and "label" in bad.text
    ok = client.post("/v1/petitions/ch-0/feedback", json={"kind": "channel_correction", "label": "诉讼仲裁复议"},
                     headers=cw)
    assert ok.status_code == 201, ok.text

    from xinfang.training.feedback_export import export_feedback

    out = export_feedback(client.service.store, tmp_path / "channel.jsonl", "channel")
    rows = [json.loads(x) for x in out.path.read_text("utf-8").splitlines()]
    assert [(r["id"], r["channel"], r["predicted"]) for r in rows] == [("ch-0", "诉讼仲裁复议", made["ch-0"])]
