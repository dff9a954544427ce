"""The hand-written demo data set: loads cleanly, label counts, repeat groups, pairs and duty list agree."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from xinfang.models.normalize import normalize_text, petition_text
from xinfang.records import load_records
from xinfang.settings import DEMO_DATA_DIR

TOPICS = {"城乡建设", "劳动和社会保障", "教育文体", "商贸旅游", "环境保护", "卫生计生", "交通运输"}


@pytest.fixture(scope="module")
def records(demo_data_path: Path) -> list[dict]:
    return load_records(demo_data_path, label_column="topic")


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return load_records(DEMO_DATA_DIR / "repeat_pairs.jsonl", require_text=False)


def test_loads_with_expected_fields(records: list[dict]) -> None:
    assert 180 <= len(records) <= 240
    for r in records:
        assert set(r) == {"id", "title", "text", "petitioner", "time", "topic", "department", "repeat_group", "channel",
                          "_row"}
        assert re.fullmatch(r"demo-\d{4}", r["id"])
        assert re.fullmatch(r"2024-\d\d-\d\d \d\d:\d\d:\d\d", r["time"])
        assert r["title"]
        assert r["text"] is None or 60 <= len(r["text"]) <= 250
    assert 3 <= sum(r["text"] is None for r in records) <= 10
    share = sum(r["petitioner"] is not None for r in records) / len(records)
    assert 0.3 <= share <= 0.5


def test_text_is_already_clean(records: list[dict]) -> None:
    for r in records:
        assert normalize_text(r["title"]) == r["title"]
        assert r["text"] is None or normalize_text(r["text"]) == r["text"]


def test_class_counts(records: list[dict]) -> None:
    topics = Counter(r["topic"] for r in records)
    assert set(topics) == TOPICS
    assert min(topics.values()) >= 20
    departments = Counter(r["department"] for r in records)
    assert sum(n >= 8 for n in departments.values()) >= 10


def test_channels(records: list[dict]) -> None:
    from xinfang.models.channel import CHANNELS

    channels = Counter(r["channel"] for r in records)
    assert set(channels) <= set(CHANNELS)
    assert {"信访", "依法履职", "诉讼仲裁复议", "纪检监察"} <= set(channels)
    assert min(channels.values()) >= 2  # every class can be trained and validated (tiny recipe)


def test_repeat_groups(records: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r["repeat_group"]:
            groups.setdefault(r["repeat_group"], []).append(r)
    assert len(groups) >= 15
    assert all(2 <= len(m) <= 4 for m in groups.values())
    # a group is one matter: one topic and one department
    assert all(len({(r["topic"], r["department"]) for r in m}) == 1 for m in groups.values())


def test_no_accidental_duplicates(records: list[dict]) -> None:
    texts = [petition_text(r["title"], r["text"]) for r in records]
    assert len(set(texts)) == len(texts)


def test_pairs_refer_to_existing_ids_and_match_groups(records: list[dict], pairs: list[dict]) -> None:
    by_id = {r["id"]: r for r in records}
    seen = set()
    for p in pairs:
        a, b = by_id[p["a"]], by_id[p["b"]]
        assert p["a"] < p["b"] and (p["a"], p["b"]) not in seen
        seen.add((p["a"], p["b"]))
        same = a["repeat_group"] is not None and a["repeat_group"] == b["repeat_group"]
        assert p["label"] == int(same)
    groups: dict[str, list[str]] = {}
    for r in records:
        if r["repeat_group"]:
            groups.setdefault(r["repeat_group"], []).append(r["id"])
    positives = {tuple(sorted(c)) for m in groups.values() for c in itertools.combinations(m, 2)}
    assert positives == {(p["a"], p["b"]) for p in pairs if p["label"] == 1}
    n_neg = sum(p["label"] == 0 for p in pairs)
    assert 1.2 * len(positives) <= n_neg <= 2 * len(positives)


def test_duty_list_covers_departments_and_agrees_with_labels(records: list[dict]) -> None:
    rules = yaml.safe_load((DEMO_DATA_DIR / "duty_list.yaml").read_text(encoding="utf-8"))
    generic = [r for r in rules if r["department"] == "通用"]  # generic bodies: units only, no department
    assert len(generic) == 1 and generic[0]["units"] and set(generic[0]) == {"department", "units"}
    rules = [r for r in rules if r["department"] != "通用"]
    assert {r["department"] for r in rules} == {r["department"] for r in records}
    assert all(r["remit"] and r["units"] for r in rules)
    compiled = []
    for rule in rules:
        assert rule["keywords"] and rule["patterns"] and set(rule["topics"]) <= TOPICS
        compiled.append((rule["department"], [re.compile(p) for p in rule["patterns"]]))
    hits = agree = 0
    for r in records:
        text = petition_text(r["title"], r["text"])
        first = next((d for d, pats in compiled if any(p.search(text) for p in pats)), None)
        if first is not None:
            hits += 1
            agree += first == r["department"]
    assert hits >= len(records) // 3
    assert agree >= 0.9 * hits


def test_repeat_pairs_file_is_json_lines() -> None:
    lines = (DEMO_DATA_DIR / "repeat_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(set(json.loads(line)) == {"a", "b", "label"} for line in lines)
