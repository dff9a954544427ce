"""Handling history (replies -> handling unit -> department) and the duty list's knowledge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xinfang.cli import app
from xinfang.models.duty_list import DutyList
from xinfang.models.routing import EVIDENCE
from xinfang.settings import PROVINCE_DUTY_LIST
from xinfang.training.reply_units import extract_unit, history_labels

DUTY = DutyList.load(PROVINCE_DUTY_LIST)


@pytest.mark.parametrize("reply, department, confidence, role", [
    ("您好！关于户口迁移，请携带材料到派出所办理。如有疑问可咨询。A7县公安局 2013年9月11日", "公安", "high", "signature"),
    ("您好！来信收悉。我局执法人员到现场核查，已责令商户整改。感谢您对A5区城管局工作的支持。", "城市管理和综合执法",
     "high", "self"),
    ("网友您好！经A5区教育局核实，该校未违规收费。感谢您的监督！", "教育", "medium", "handled"),
    ("您好！您反映的问题已转市人社局调查处理。", "人力资源和社会保障", "medium", "forwarded"),
])
def test_unit_roles(reply: str, department: str, confidence: str, role: str) -> None:
    ans = extract_unit(reply, DUTY)
    assert (ans.department, ans.confidence, ans.role) == (department, confidence, role)
    assert ans.evidence and ans.unit and ans.unit in ans.evidence


def test_unit_includes_its_place() -> None:
    ans = extract_unit("您好！经A5区教育局核实，情况属实。", DUTY)
    assert ans.unit == "A5区教育局"


@pytest.mark.parametrize("reply, reason", [
    ("感谢您的留言，我们会认真研究。", "names no known unit"),  # a reply in no known pattern
    ("您好！您反映的问题已转区信访办。", "generic body only"),
    ("您好！经市住建局和市教育局联合调查核实，已整改。", "two units named"),
    ("", "no reply text"),
    (None, "no reply text"),
])
def test_undecided_replies_say_why(reply: str | None, reason: str) -> None:
    ans = extract_unit(reply, DUTY)
    assert ans.department is None and ans.confidence is None and reason in ans.reason


def test_a_unit_the_duty_list_cannot_map_is_not_guessed() -> None:
    ans = extract_unit("您好！经县粮油储备公司核实，情况如下。", DUTY)
    assert ans.department is None and "names no known unit" in ans.reason


def test_street_office_counts_only_without_a_functional_department() -> None:
    both = extract_unit("您好！东湖街道高度重视，经区城管局核实，已拆除违建。", DUTY)
    assert both.department == "城市管理和综合执法"
    alone = extract_unit("您好！东湖街道高度重视，组织人员进行了调查。", DUTY)
    assert alone.department == "街道乡镇" and alone.confidence == "low"
    assert extract_unit("您好！东湖街道高度重视，组织人员进行了调查。", DUTY, local_department=False).department is None


def test_history_labels_keep_confident_rows_only() -> None:
    rows = [{"id": "1", "title": "户口", "text": "户口迁移", "reply": "请到派出所办理。A7县公安局 2013年9月11日"},
            {"id": "2", "title": "噪音", "text": "夜间施工", "reply": "感谢您的留言。"}]
    out, counts = history_labels(rows, DUTY)
    assert [r["id"] for r in out] == ["1"] and out[0]["department"] == "公安" and "reply" not in out[0]
    assert counts == {"rows": 2, "high": 1, "medium": 0, "low": 0, "undecided": 1, "used": 1}


def test_from_replies_cli(tmp_path: Path) -> None:
    src = tmp_path / "closed.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "a", "title": "路灯", "text": "路灯不亮", "reply": "经区城管局核实，已修复。"},
        {"id": "b", "title": "问题", "text": "咨询", "reply": "已转相关部门。"}]), encoding="utf-8")
    out = tmp_path / "labels.jsonl"
    r = CliRunner().invoke(app, ["departments", "from-replies", "--input", str(src), "--output", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in rows] == ["a", "b"]
    assert rows[0]["department"] == "城市管理和综合执法" and rows[1]["department"] is None
    r = CliRunner().invoke(app, ["departments", "from-replies", "--input", str(src), "--output", str(out),
                                 "--reply-column", "答复"])
    assert r.exit_code != 0 and "no '答复' column" in str(r.exception)


def test_shipped_duty_list_carries_remits_and_units() -> None:
    assert all(e.remit and e.units for e in DUTY.entries)
    assert "信访办" in DUTY.generic_units


def test_definitions_duty_list_differs_from_the_shipped_one_only_in_remits_and_keywords() -> None:
    """eval/duty_list_from_definitions.yaml (a measured alternative) keeps the shipped list's departments, units,
    topics and level, so its rows in eval/explore_departments.py compare knowledge, not coverage."""
    alt = DutyList.load(PROVINCE_DUTY_LIST.parents[2] / "eval" / "duty_list_from_definitions.yaml")
    assert alt.departments == DUTY.departments and alt.generic_units == DUTY.generic_units
    for a, b in zip(alt.entries, DUTY.entries, strict=True):
        assert (a.units, a.topics, a.level) == (b.units, b.topics, b.level)
        assert set(b.keywords) <= set(a.keywords) and a.remit and a.remit != b.remit

# ------------------------------------------------------------------------------------------ training with history
DEMO = Path(__file__).resolve().parents[1] / "datasets" / "demo"


def test_train_with_history_uses_confident_replies(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    out = tmp_path / "dept"
    r = CliRunner().invoke(app, ["train", "--task", "department", "--data", str(DEMO / "petitions.jsonl"),
                                 "--history", str(DEMO / "replies.jsonl"), "--base", str(tiny_encoder_dir),
                                 "--recipe", "tiny", "--epochs", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    closed = [json.loads(line) for line in (DEMO / "replies.jsonl").read_text(encoding="utf-8").splitlines()]
    h = cfg["history"]
    assert h["file"] == "replies.jsonl" and h["rows"] == len(closed)
    assert h["used"] == h["high"] + h["medium"] > 0 and h["undecided"] >= 2
    assert 0 < h["weight_sum"] < h["used"]  # medium-confidence labels weigh less than hand labels
    # the bundle keeps the duty list it was trained with (the demo list: it covers the demo labels)
    assert cfg["duty_list"]["source"] == "duty_list.yaml" and (out / "duty_list.yaml").is_file()
    from xinfang.models.classifier import ClassifierBundle

    bundle = ClassifierBundle.load(out)
    assert bundle.duty_list is not None and len(bundle.duty_list.entries) == 12


def test_history_labels_for_departments_the_hand_labels_lack(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    from xinfang.records import load_records
    from xinfang.training.classifier import train
    from xinfang.training.history import history_records

    hand = [r for r in load_records(DEMO / "petitions.jsonl") if r["department"] != "医疗保障"]
    weak, info = history_records("department", DEMO / "replies.jsonl", DutyList.load(DEMO / "duty_list.yaml"))
    assert all(0 < w["label_weight"] <= 1 for w in weak)
    res = train(hand, task="department", out_dir=tmp_path / "m", base=tiny_encoder_dir, recipe="tiny",
                progress=False, history=weak, history_info=info)
    cfg = json.loads((res.out_dir / "config.json").read_text(encoding="utf-8"))
    assert cfg["history"]["dropped_unknown_labels"] == {"医疗保障": 3}
    assert "医疗保障" not in json.loads((res.out_dir / "labels.json").read_text(encoding="utf-8"))


def test_history_rows_repeating_a_hand_labelled_petition_are_dropped(tmp_path: Path) -> None:
    from xinfang.training.data import prepare_examples, weak_examples

    hand = prepare_examples([{"id": "1", "title": "路灯不亮", "text": "科创大道路灯坏了", "department": "城管"},
                             {"id": "2", "title": "欠薪", "text": "工地欠薪", "department": "人社"}], "department",
                            min_class_count=1)
    weak = [{"id": "w1", "title": "路灯不亮！", "text": "另一段话", "department": "城管", "label_weight": 0.7},
            {"id": "w2", "title": "公交改线", "text": "公交车改线", "department": "城管", "label_weight": 0.7}]
    texts, y, w, report = weak_examples(weak, "department", ["人社", "城管"], hand)
    assert len(texts) == 1 and y == [1] and w == [0.7] and report["dropped_same_as_hand_labelled"] == 1


def test_history_needs_a_reply_column_and_a_supported_task(tmp_path: Path) -> None:
    from xinfang.errors import DataError
    from xinfang.training.history import history_records

    with pytest.raises(DataError, match="needs a 'reply' column"):
        history_records("department", DEMO / "petitions.jsonl", DUTY)
    with pytest.raises(DataError, match="not supported for task 'topic'"):
        history_records("topic", DEMO / "replies.jsonl", DUTY)


# ------------------------------------------------------------------------------------------ one routing decision
@pytest.fixture(scope="module")
def routed_bundle(tmp_path_factory, tiny_encoder_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("routed") / "dept"
    r = CliRunner().invoke(app, ["train", "--task", "department", "--data", str(DEMO / "petitions.jsonl"),
                                 "--base", str(tiny_encoder_dir), "--recipe", "tiny", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_routed_answer_is_one_distribution_naming_its_evidence(routed_bundle: Path) -> None:
    from xinfang.models.pipeline import ClassificationPipeline

    cfg = json.loads((routed_bundle / "config.json").read_text(encoding="utf-8"))
    assert cfg["routing"]["file"] == "routing.json" and set(cfg["routing"]["weights"]) == set(EVIDENCE)
    pipe = ClassificationPipeline.from_paths([routed_bundle])  # the bundle's own duty list
    [row] = pipe.classify([{"id": "1", "title": "违章建筑", "text": "东湖街道有人私搭乱建，占道经营，城管不管。"}],
                          top_k=12)
    dept = row["department"]
    assert abs(sum(t["score"] for t in dept["top"]) - 1.0) < 1e-4  # probabilities, no 1.0 override
    assert dept["evidence"]["decided_by"] in EVIDENCE
    assert set(dept["evidence"]["margin"]) == set(EVIDENCE)


def test_duty_list_edit_changes_routing_without_retraining(routed_bundle: Path, tmp_path: Path) -> None:
    from xinfang.models.pipeline import ClassificationPipeline

    text = {"id": "1", "title": "咨询", "text": "请问瑶光事项归哪个部门管？"}
    before = ClassificationPipeline.from_paths([routed_bundle]).classify([text], top_k=12)[0]["department"]
    target = next(t["label"] for t in reversed(before["top"]) if t["label"] != before["label"])
    edited = (routed_bundle / "duty_list.yaml").read_text(encoding="utf-8").replace(
        f"- department: {target}\n", f"- department: {target}\n  patterns: [瑶光事项]\n", 1)
    path = tmp_path / "edited.yaml"
    path.write_text(edited.replace(f"- department: {target}\n  patterns: [瑶光事项]\n  remit:",
                                   f"- department: {target}\n  patterns: [瑶光事项]\n  remit: 瑶光事项 瑶光事项", 1),
                    encoding="utf-8")
    after = ClassificationPipeline.from_paths([routed_bundle], duty_list=path).classify([text], top_k=12)[0]
    score = {t["label"]: t["score"] for t in after["department"]["top"]}
    assert score[target] > {t["label"]: t["score"] for t in before["top"]}[target]


def test_bundle_keeps_neighbours_as_evidence(routed_bundle: Path, tmp_path: Path) -> None:
    from scipy.sparse import csr_matrix

    from xinfang.errors import ModelError
    from xinfang.models.classifier import ClassifierBundle
    from xinfang.models.neighbours import NEIGHBOURS_FILE, Neighbours

    cfg = json.loads((routed_bundle / "config.json").read_text(encoding="utf-8"))
    assert cfg["neighbours"]["file"] == NEIGHBOURS_FILE and cfg["neighbours"]["examples"] > 0
    bundle = ClassifierBundle.load(routed_bundle)
    shares = bundle.neighbour_shares(["东湖街道有人私搭乱建，占道经营", "☃"])
    assert shares.shape == (2, len(bundle.labels))
    assert abs(shares[0].sum() - 1.0) < 1e-6 and shares[1].sum() == 0.0  # nothing shared: no evidence
    x = csr_matrix(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    n = Neighbours(x, np.array([0, 1, 1]), np.array([1.0, 1.0, 0.5]), 2, k=2)
    n.save(tmp_path / "n.safetensors")
    again = Neighbours.load(tmp_path / "n.safetensors")
    np.testing.assert_allclose(again.shares(csr_matrix(np.array([[1.0, 0.0]]))), [[1 / 1.6, 0.6 / 1.6]], rtol=1e-5)
    with pytest.raises(ModelError, match="do not fit"):
        Neighbours(x, np.array([0, 1, 2]), np.ones(3), 2)
