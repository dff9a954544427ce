"""The settings object (xinfang.settings): every XINFANG_* variable read in one place, bad values named, the
generated table in docs/settings.md current, the service built from settings passed to it."""

from __future__ import annotations

import pickle
import re
from functools import partial
from pathlib import Path

import pytest

from xinfang.serving.config import ServiceConfig
from xinfang.settings import REPO_ROOT, SettingsError, load_settings, markdown_table, variables

# every variable the service, the CLI and the scripts read before the settings object existed
NAMES = """DATA_DIR DATABASE_URL MODEL_DIRS DUTY_LIST CHANNEL_TABLE EMBED_ENCODER REPEAT_SCORER INDEX_DIR RUNTIME
EMBED_RUNTIME THREADS INDEX_FACTORY INDEX_SEARCH INDEX_THREADS MAX_BATCH MAX_TEXT_CHARS MAX_BODY_BYTES
BATCH_MAX_SIZE BATCH_MAX_WAIT_MS INDEX_SAVE_EVERY INDEX_SAVE_SECONDS INDEX_SYNC_SECONDS REPEAT_K AUTH_FAIL_LIMIT
AUTH_FAIL_SECONDS DOCS PG_BIN REGISTRY ACTOR REGISTRY_POLL_SECONDS LOG_JSON FEED_GAP_SECONDS READY_MAX_LAG""".split()


def test_docs_settings_table_is_generated_from_the_class() -> None:
    committed = (REPO_ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert committed == markdown_table(), "docs/settings.md is stale: xinfang settings --markdown > docs/settings.md"
    assert {f"XINFANG_{n}" for n in NAMES} == {env for env, _, _ in variables()}
    for env, _, info in variables():
        assert info.description and f"`{env}`" in committed


def test_values_are_read_into_sections() -> None:
    s = load_settings({"XINFANG_DATA_DIR": "/srv/x", "XINFANG_MODEL_DIRS": " a , b,", "XINFANG_RUNTIME": "TORCH",
                       "XINFANG_BATCH_MAX_SIZE": "8", "XINFANG_INDEX_SEARCH": "nprobe=768", "XINFANG_DOCS": "off",
                       "XINFANG_REGISTRY": "off", "XINFANG_THREADS": "", "XINFANG_ACTOR": "wang"})
    assert s.data_dir == Path("/srv/x") and s.database_url == "sqlite:////srv/x/xinfang.db"
    assert s.models.model_dirs == [Path("a"), Path("b")] and s.runtime.runtime == "torch"
    assert s.batching.max_size == 8 and s.index.search == {"nprobe": 768} and s.runtime.threads == 2
    assert not s.runtime.docs and not s.registry.enabled and s.registry.actor == "wang"
    config = ServiceConfig.from_settings(s)
    assert (config.batch_max_size, config.index_search, config.docs, config.registry) == (8, {"nprobe": 768},
                                                                                          False, False)
    assert config.models == [Path("a"), Path("b")] and config.db_url == s.database_url
    # overrides (the CLI's flags) win over the environment, section by section
    o = load_settings({"XINFANG_THREADS": "3", "XINFANG_RUNTIME": "onnx"}, runtime={"runtime": "torch"})
    assert (o.runtime.runtime, o.runtime.threads) == ("torch", 3)
    assert o.with_changes(index={"sync_seconds": 2}).index.sync_seconds == 2.0


def test_defaults_of_service_config_are_the_settings_defaults(tmp_path) -> None:
    from_settings = ServiceConfig.from_settings(load_settings({}, data_dir=tmp_path))
    assert ServiceConfig(data_dir=tmp_path) == from_settings


@pytest.mark.parametrize("env, named", [
    ({"XINFANG_THREADS": "0"}, "XINFANG_THREADS='0'"),
    ({"XINFANG_BATCH_MAX_SIZE": "many"}, "XINFANG_BATCH_MAX_SIZE='many'"),
    ({"XINFANG_RUNTIME": "gpu"}, "XINFANG_RUNTIME='gpu'"),
    ({"XINFANG_DOCS": "maybe"}, "XINFANG_DOCS='maybe'"),
    ({"XINFANG_MAX_BODY_BYTES": "10"}, "XINFANG_MAX_BODY_BYTES='10'"),
    ({"XINFANG_INDEX_SEARCH": "nprobe"}, "XINFANG_INDEX_SEARCH='nprobe'"),
    ({"XINFANG_EMBED_RUNTIME": "tpu", "XINFANG_AUTH_FAIL_SECONDS": "-1"}, "XINFANG_AUTH_FAIL_SECONDS='-1'"),
])
def test_a_bad_value_is_one_error_naming_the_variable(env, named) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert all(f"{k}=" in str(err.value) for k in env)


def test_no_module_reads_the_environment_but_the_settings_module() -> None:
    reads = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[|environ\.get\(\"XINFANG")
    found = []
    for folder in ("xinfang", "models", "training", "serving"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path == REPO_ROOT / "xinfang" / "settings.py":
                continue
            found += [f"{path.relative_to(REPO_ROOT)}:{i}" for i, line in
                      enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if reads.search(line)]
    assert found == []


def test_create_app_uses_the_settings_it_is_given(tmp_path, monkeypatch) -> None:
    """No environment is read when settings are passed; the factory argument survives pickling (workers)."""
    from fastapi.testclient import TestClient

    from xinfang.serving.app import create_app

    monkeypatch.setenv("XINFANG_DOCS", "not a switch")  # would be an error if anything read it
    settings = load_settings({}, data_dir=tmp_path / "data", runtime={"docs": False, "runtime": "torch"})
    factory = pickle.loads(pickle.dumps(partial(create_app, settings)))
    app = factory()
    assert app.state.service.config.data_dir == tmp_path / "data"
    assert TestClient(app).get("/docs").status_code == 404
    with pytest.raises(Exception, match="XINFANG_MAX_BATCH"):
        create_app(settings.with_changes(limits={"max_batch": 3}))
