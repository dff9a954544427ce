"""Helpers for the service tests: tiny bundles trained on the demo data, an app on a temp data dir, keys."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from xinfang.settings import DEMO_DATA_DIR

ROLES = ("intake", "caseworker", "admin")


TOPICS = {"交通运输": ("公交车路线", "交通运输"), "教育文体": ("学校幼儿园收费", "教育"),
          "城乡建设": ("小区物业停车", "住房和城乡建设")}


def _generated_rows(n_per_class: int = 14) -> list[dict]:
    """Labelled rows in the demo data's shape, for when datasets/demo is not (yet) present."""
    rows = []
    for topic, (kw, dept) in TOPICS.items():
        for j in range(n_per_class):
            rows.append({"id": f"g{len(rows)}", "title": f"A{j % 4}区{kw}问题{j}",
                         "text": f"{kw}反映{j}，希望尽快解决处理", "topic": topic, "department": dept,
                         "channel": "依法履职" if j % 3 == 0 else "信访"})
    return rows


def training_records() -> list[dict]:
    from xinfang.records import load_records

    path = DEMO_DATA_DIR / "petitions.jsonl"
    return load_records(path) if path.exists() else _generated_rows()


def train_tiny_bundles(encoder_dir: Path, out: Path) -> list[Path]:
    """Topic and department bundles (tiny recipe) and the channel bundle (its default, text-only recipe) on the
    demo petitions, with the tiny test encoder."""
    from xinfang.training.classifier import train

    records = training_records()
    dirs = []
    for task in ("topic", "department", "channel"):
        rows = [r for r in records if r.get(task)]
        recipe = "auto" if task == "channel" else "tiny"  # keeps the suite fast
        train(rows, task=task, out_dir=out / task, base=str(encoder_dir), recipe=recipe,
              progress=False, seed=7)
        dirs.append(out / task)
    return dirs


def scorer_path(encoder_dir: Path, out: Path) -> Path | None:
    """None when the shipped default scorer exists; else a scorer fitted (real trainer) on generated pairs."""
    from xinfang.models.repeat_scorer import DEFAULT_SCORER_PATH

    if DEFAULT_SCORER_PATH.exists():
        return None
    from xinfang.models.embedder import Embedder
    from xinfang.training.repeats import fit_repeat_scorer

    rows = _generated_rows(6)
    by_id = {r["id"]: r for r in rows}
    for r in rows[:9]:  # near-copies: same matter, same petitioner
        by_id[r["id"] + "b"] = {**r, "id": r["id"] + "b", "text": r["text"] + "再次反映", "petitioner": "U1"}
        by_id[r["id"]]["petitioner"] = "U1"
    pairs = [{"a": r["id"], "b": r["id"] + "b", "label": 1} for r in rows[:9]]
    pairs += [{"a": rows[i]["id"], "b": rows[-1 - i]["id"], "label": 0} for i in range(9)]
    scorer = fit_repeat_scorer(pairs, by_id, Embedder(str(encoder_dir)), trained_on="generated")
    return scorer.save(out / "scorer.json")


def demo_petitions(n: int | None = None) -> list[dict]:
    rows = training_records()
    return rows[:n] if n else rows


def make_config(data_dir: Path, bundles: list[Path], encoder_dir: Path, **overrides):
    from xinfang.serving.config import ServiceConfig

    # torch keeps these API tests free of ONNX exports; the ONNX runtimes have their own tests in test_service.py
    kwargs = dict(data_dir=data_dir, model_dirs=bundles, embed_encoder=str(encoder_dir), threads=1, runtime="torch",
                  index_save_every=1000, index_save_seconds=60.0, batch_max_wait_ms=2.0,
                  registry_poll_seconds=0.0)  # tests that follow promotions set it
    kwargs.update(overrides)
    return ServiceConfig(**kwargs)


def create_keys(config) -> dict[str, str]:
    from xinfang.serving.store import Store

    store = Store(config.db_url)
    try:
        existing = {k["name"] for k in store.list_keys()}
        return {role: store.create_key(f"{role}-{len(existing)}", role) for role in ROLES}
    finally:
        store.close()


@contextmanager
def running_app(config):
    """A TestClient around create_app(config) with the lifespan (start-up reconcile, shutdown save) run."""
    from fastapi.testclient import TestClient

    from xinfang.serving.app import create_app

    app = create_app(config)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.service = app.state.service
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
