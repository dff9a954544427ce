"""Slim bundles: conversion of format-1 bundles, base fingerprint checks, export, shared base runs (tiny models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xinfang.cli import app
from xinfang.errors import ModelError
from xinfang.models.classifier import ClassifierBundle, bundle_logits
from xinfang.models.pipeline import ClassificationPipeline
from xinfang.records import load_records
from xinfang.settings import DEMO_DATA_DIR

V1 = Path(__file__).parent / "fixtures" / "bundle_v1"


def _cli(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output + (str(res.exception) if res.exception else "")


@pytest.fixture(scope="module")
def v1_copy(tmp_path_factory) -> Path:
    """The format-1 fixture copied out, with its config pointing at the copied base (as trained)."""
    root = tmp_path_factory.mktemp("v1")
    shutil.copytree(V1, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="module")
def converted(v1_copy: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("v2")
    dirs = {}
    for task in ("topic", "department"):
        code, text = _cli(["models", "convert", v1_copy / task, out / task, "--base", v1_copy / "base"])
        assert code == 0, text
        dirs[task] = out / task
    return dirs


def _demo_petitions() -> list[dict]:
    return [{"id": r["id"], "title": r.get("title"), "text": r.get("text")}
            for r in load_records(DEMO_DATA_DIR / "petitions.jsonl")]


def test_old_format_refused_with_the_convert_command(v1_copy: Path) -> None:
    with pytest.raises(ModelError, match=r"xinfang-classifier/1.*xinfang models convert .*topic NEW_DIR") as exc:
        ClassifierBundle.load(v1_copy / "topic")
    assert "\n" not in str(exc.value)
    code, out = _cli(["predict", "--model", v1_copy / "topic", "--input", DEMO_DATA_DIR / "petitions.jsonl",
                      "--output", v1_copy / "p.jsonl"])
    assert code != 0 and "xinfang models convert" in out


def test_converted_bundles_give_the_old_answers(converted: dict[str, Path]) -> None:
    """Predictions of the converted slim bundles equal those 5c8a9c8 gave with the fat ones on the demo data."""
    old = json.loads((V1 / "predictions.json").read_text(encoding="utf-8"))
    pipe = ClassificationPipeline.from_paths([converted["topic"], converted["department"]])
    new = pipe.classify(_demo_petitions())
    assert len(new) == len(old) == 212
    for a, b in zip(new, old, strict=True):
        assert a["id"] == b["id"] and a["needs_review"] == b["needs_review"]
        for task in ("topic", "department"):
            assert a[task]["label"] == b[task]["label"]
            assert [t["label"] for t in a[task]["top"]] == [t["label"] for t in b[task]["top"]]
            assert abs(a[task]["score"] - b[task]["score"]) < 1e-5
    cfg = json.loads((converted["topic"] / "config.json").read_text(encoding="utf-8"))
    assert cfg["format"] == "xinfang-classifier/2" and cfg["shared_layers"] == 1
    assert cfg["converted_from"]["format"] == "xinfang-classifier/1"
    assert not (converted["topic"] / "encoder").exists()
    size = sum(p.stat().st_size for p in converted["topic"].rglob("*") if p.is_file())
    old_size = sum(p.stat().st_size for p in (V1 / "topic").rglob("*") if p.is_file())
    assert size < old_size


def test_converter_refuses_a_base_it_was_not_trained_on(v1_copy: Path, tiny_encoder_dir: Path, tmp_path) -> None:
    other = tmp_path / "other-base"
    shutil.copytree(v1_copy / "base", other)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    key = next(k for k in weights if "word_embeddings" in k)
    weights[key] = weights[key] + 1.0
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    code, out = _cli(["models", "convert", v1_copy / "topic", tmp_path / "x", "--base", other])
    assert code != 0 and "embeddings differ from base" in out and not (tmp_path / "x").exists()


def test_base_fingerprint_mismatch_and_missing_base(converted: dict[str, Path], tmp_path: Path) -> None:
    good = ClassifierBundle.load(converted["topic"])
    other = tmp_path / "changed-base"
    shutil.copytree(good.base.path, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n", encoding="utf-8")
    with pytest.raises(ModelError, match="trained on base .* with fingerprint .* but .*changed-base has fingerprint"):
        ClassifierBundle.load(converted["topic"], base=other)
    with pytest.raises(ModelError, match="its base encoder .*nowhere cannot be loaded"):
        ClassifierBundle.load(converted["topic"], base=tmp_path / "nowhere")


def test_corrupted_slim_bundle_is_one_line_error(converted: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from xinfang.models.classifier import write_manifest

    bad = tmp_path / "bad"
    shutil.copytree(converted["topic"], bad)
    layers = load_file(str(bad / "encoder_layers.safetensors"))
    layers.pop(next(iter(layers)))
    save_file(layers, str(bad / "encoder_layers.safetensors"))
    write_manifest(bad)  # a consistent manifest over a layer file that lacks a tensor
    with pytest.raises(ModelError, match="encoder_layers.safetensors does not fit base") as exc:
        ClassifierBundle.load(bad)
    assert "\n" not in str(exc.value)
    (bad / "encoder_layers.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="encoder_layers.safetensors does not match its sha256"):
        ClassifierBundle.load(bad)


def test_export_is_a_plain_checkpoint(converted: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    b = ClassifierBundle.load(converted["topic"])
    code, out = _cli(["models", "export", converted["topic"], tmp_path / "hf"])
    assert code == 0, out
    model = AutoModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    texts = ["A3区公交车路线问题", "学校幼儿园收费反映，希望尽快解决处理"]
    enc = tok([b.prefix + t for t in texts], padding=True, truncation=True, max_length=b.max_length,
              return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    logits = ((hidden * m).sum(1) / m.sum(1)) @ b.head_w.T + b.head_b
    np.testing.assert_allclose(logits.numpy(), b.logits(texts), atol=1e-5)


def test_shared_run_equals_separate_runs(converted: dict[str, Path]) -> None:
    """One run of the base's layers for both bundles gives what each bundle computes alone."""
    topic, dept = (ClassifierBundle.load(converted[t]) for t in ("topic", "department"))
    assert topic.base is dept.base and topic.stack is dept.stack
    texts = [p["title"] or p["text"] for p in _demo_petitions()[:40]]
    both = bundle_logits([topic, dept], texts)
    np.testing.assert_allclose(both[0], topic.logits(texts), atol=1e-6)
    np.testing.assert_allclose(both[1], dept.logits(texts), atol=1e-6)
