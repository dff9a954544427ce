"""The standing security suite: one regression test per defect an outside probe found (real requests against the
app, a real crafted bundle, a real pickle), and a short schemathesis run against a real server that fails on
any 5xx."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from service_fixtures import auth, copy_bundle, create_keys, demo_petitions, make_config, running_app

from xinfang.errors import ModelError

try:
    from playwright.sync_api import expect, sync_playwright
    from test_ui import CHROMIUM, CHROMIUM_ARGS, needs_browser
except ImportError:  # pragma: no cover - the test extra installs playwright
    needs_browser = pytest.mark.skip(reason="browser tests need playwright")


@pytest.fixture(scope="module")
def env(tmp_path_factory, service_models, tiny_encoder_dir):
    bundles, scorer = service_models
    config = make_config(tmp_path_factory.mktemp("sec"), bundles, tiny_encoder_dir, repeat_scorer=scorer,
                         index_save_seconds=0.5)
    keys = create_keys(config)
    with running_app(config) as client:
        yield client, keys


def _petition(i: int, **extra) -> dict:
    r = demo_petitions()[i % len(demo_petitions())]
    return {"title": r.get("title"), "text": r.get("text") or r.get("title"), **extra}


def _metric(client, keys, name: str) -> float:
    text = client.get("/metrics", headers=auth(keys["admin"])).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


class _Marker:
    """Unpickling this creates the marker file: proof that code from a bundle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# ------------------------------------------------------------------------------------------------ 1. dates
EXTREMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


@pytest.mark.parametrize("value", EXTREMES)
def test_dates_out_of_range_are_422_naming_the_field(env, value) -> None:
    client, keys = env
    for param in ("since", "until"):
        r = client.get("/v1/petitions", params={param: value}, headers=auth(keys["caseworker"]))
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0]["field"] == f"query.{param}" and "range" in r.json()["message"]
        assert r.headers["x-request-id"] == r.json()["request_id"]
    r = client.post("/v1/petitions", json={"text": "小区停车收费问题", "received_at": value},
                    headers=auth(keys["intake"]))
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "body.received_at", r.text
    assert r.headers["x-request-id"]


def test_dates_at_the_edges_of_the_range_are_stored(env) -> None:
    client, keys = env
    for i, value in enumerate(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]):
        r = client.post("/v1/petitions", json=_petition(i, id=f"edge-{i}", received_at=value),
                        headers=auth(keys["intake"]))
        assert r.status_code == 201, r.text
        got = client.get(f"/v1/petitions/edge-{i}", headers=auth(keys["caseworker"])).json()
        assert got["received_at"].startswith(value[:19])
    r = client.get("/v1/petitions", params={"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"},
                   headers=auth(keys["caseworker"]))
    assert r.status_code == 200 and r.json()["total"] >= 2


def test_unexpected_error_is_500_with_request_id_and_the_connection_survives(env, monkeypatch, caplog) -> None:
    """Through a real server and one keep-alive connection: the 500 carries the request id, the next request
    on the same connection is answered."""
    client, keys = env
    svc = client.service

    def boom(**_kw):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(svc.store, "list_petitions", boom)
    with _served(client.app) as url, httpx.Client(base_url=url, headers=auth(keys["caseworker"])) as http:
        r = http.get("/v1/petitions", headers={"x-request-id": "probe-500"})
        assert r.status_code == 500 and r.json() == {"error": "internal_error", "request_id": "probe-500",
                                                     "message": "internal error; see the server log"}
        assert r.headers["x-request-id"] == "probe-500"
        monkeypatch.undo()
        again = http.get("/v1/petitions")
        assert again.status_code == 200
    assert any("RuntimeError" in rec.getMessage() for rec in caplog.records if rec.name == "xinfang.serving")


# ------------------------------------------------------------------------------------------------ 2. timed save
def test_timed_index_save_happens_without_more_writes(env) -> None:
    client, keys = env
    saves = _metric(client, keys, "xinfang_index_saves_total")
    r = client.post("/v1/petitions", json=_petition(5, id="timed-1"), headers=auth(keys["intake"]))
    assert r.status_code == 201
    from xinfang.models.vector_index import VectorIndex

    def saved() -> bool:
        return VectorIndex.load(client.service.config.index_path).contains("timed-1")

    deadline = time.monotonic() + 10  # index_save_seconds=0.5, save_every=1000: only the timer can save it
    while not saved() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved() and _metric(client, keys, "xinfang_index_saves_total") > saves


def test_index_keeper_saves_on_its_timer(tmp_path) -> None:
    import numpy as np

    from xinfang.serving.index_keeper import IndexKeeper
    from xinfang.serving.store import Store

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    saves: list[float] = []
    keeper = IndexKeeper(tmp_path / "index", 8, "fp", store, save_every=1000, save_seconds=0.3,
                         on_save=lambda: saves.append(time.monotonic()))
    try:
        keeper.open(lambda texts: np.zeros((len(texts), 8), dtype=np.float32))
        assert len(saves) == 1
        t0 = time.monotonic()
        keeper.add("a", np.ones(8, dtype=np.float32) / np.sqrt(8))
        deadline = t0 + 5
        while len(saves) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(saves) == 2 and 0.25 <= saves[1] - t0 < 5
    finally:
        keeper.close()
        store.close()


# ------------------------------------------------------------------------------------------------ 3. pickles
def _pickle_bundles(src: Path, tmp: Path, marker: Path) -> list[Path]:
    """A bundle whose encoder layers are a raw pickle (named encoder_layers.safetensors), and one whose head is a
    torch.save zip instead of safetensors; both with a manifest that vouches for them."""
    import torch

    from xinfang.models.classifier import write_manifest

    raw = copy_bundle(src, tmp / "pickle-raw")
    (raw / "encoder_layers.safetensors").write_bytes(pickle.dumps({"w": _Marker(marker)}))
    write_manifest(raw)
    zipped = copy_bundle(src, tmp / "pickle-zip")
    torch.save({"w": _Marker(marker)}, zipped / "head.safetensors")
    write_manifest(zipped)
    return [raw, zipped]


def test_pickled_encoder_weights_are_refused_and_audited(env, service_models, tmp_path) -> None:
    client, keys = env
    bundles, _ = service_models
    marker = tmp_path / "code-ran"
    h = auth(keys["admin"])
    before = client.get("/v1/models", headers=h).json()["generation"]
    for bundle in _pickle_bundles(bundles[0], tmp_path, marker):
        r = client.post("/v1/models/reload", json={"model_dirs": [str(bundle), str(bundles[1])]}, headers=h)
        assert r.status_code == 409 and r.json()["error"] == "model_refused", r.text
        assert r.headers["x-request-id"] == r.json()["request_id"]
        audit = client.service.store.list_audit(action="models.reload.refused", limit=1)[0]
        assert audit["object_ids"] == [str(bundle), str(bundles[1])]
        assert not marker.exists()
        assert client.post("/v1/classify", json={"petitions": [{"text": "学校收费"}]}, headers=h).status_code == 200
    assert client.get("/v1/models", headers=h).json()["generation"] == before


def test_refused_duty_list_reload_is_audited_with_its_path(env, tmp_path) -> None:
    client, keys = env
    duty = tmp_path / "duty.yaml"
    duty.write_text("not: [a, duty list", encoding="utf-8")
    r = client.post("/v1/models/reload", json={"duty_list": str(duty)}, headers=auth(keys["admin"]))
    assert r.status_code == 409, r.text
    audit = client.service.store.list_audit(action="models.reload.refused", limit=1)[0]
    assert audit["object_ids"] == ["configured", f"duty_list:{duty}"]


# ------------------------------------------------------------------------------------------------ 4. manifest trust
def _rewrite_manifest(bundle: Path, **changes) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def test_manifest_entries_outside_the_bundle_and_forged_versions_are_refused(env, service_models, tmp_path) -> None:
    from xinfang.hashing import sha256_file

    def manifest_version(files: dict) -> str:  # what a crafter writes: the version a consistent manifest has
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]

    client, keys = env
    bundles, _ = service_models
    h = auth(keys["admin"])
    outside = tmp_path / "outside.txt"
    outside.write_text("host\n", encoding="utf-8")
    depth = "../" * len(tmp_path.resolve().parts)
    escape = copy_bundle(bundles[0], tmp_path / "escape")
    files = json.loads((escape / "manifest.json").read_text(encoding="utf-8"))["files"]
    files[depth + str(outside.resolve()).lstrip("/")] = sha256_file(outside)
    _rewrite_manifest(escape, files=files, version=manifest_version(files))
    link = copy_bundle(bundles[0], tmp_path / "symlink")
    (link / "notes.txt").symlink_to(outside)
    files = json.loads((link / "manifest.json").read_text(encoding="utf-8"))["files"]
    files["notes.txt"] = sha256_file(outside)
    _rewrite_manifest(link, files=files, version=manifest_version(files))
    forged = copy_bundle(bundles[0], tmp_path / "forged")
    _rewrite_manifest(forged, version="../../../../../../outside")
    cases = [(escape, "not a relative path inside the bundle"), (link, "not a relative path inside the bundle"),
             (forged, "manifest version")]
    for bundle, why in cases:
        r = client.post("/v1/models/reload", json={"model_dirs": [str(bundle), str(bundles[1])]}, headers=h)
        assert r.status_code == 409 and why in r.json()["message"], r.text
    served = client.get("/v1/models", headers=h).json()["models"]["topic"]["version"]
    assert len(served) == 16 and set(served) <= set("0123456789abcdef")
    assert not (client.service.config.onnx_cache_dir.parent / "outside").exists()


def test_registry_and_onnx_cache_do_not_trust_the_version(service_models, tmp_path) -> None:
    from xinfang.models.onnx_runtime import cache_folder
    from xinfang.models.registry import inspect_bundle

    bundles, _ = service_models
    good = inspect_bundle(bundles[0])
    assert len(good.bundle_version) == 16
    forged = copy_bundle(bundles[0], tmp_path / "forged")
    _rewrite_manifest(forged, version="../../../../../../outside")
    with pytest.raises(ModelError, match="manifest version"):
        inspect_bundle(forged)
    cache = tmp_path / "onnx"
    assert cache_folder(cache, "topic", good.bundle_version) == (cache / f"topic-{good.bundle_version}").resolve()
    for task, version in (("topic", "../../../../outside"), ("..", good.bundle_version), ("topic", "")):
        with pytest.raises(ModelError, match="ONNX cache"):
            cache_folder(cache, task, version)
    assert not cache.exists()


# ------------------------------------------------------------------------------------------------ 5. logs
def test_store_errors_never_carry_petition_text(tmp_path) -> None:
    from xinfang.serving.store import Store

    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    secret, name = "这段信访内容不能出现在错误里", "王五"
    row = {"id": "p-1", "title": "标题" + secret, "text": secret, "petitioner": name,
           "received_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), "channel": None,
           "text_hash": "0" * 64, "request_hash": "0" * 64, "labels": {}, "topic": None, "department": None,
           "needs_review": False, "repeat_count": 0, "models": {}, "response": {}, "created_at": datetime.now(UTC)}
    with pytest.raises(Exception) as caught:
        store.insert_petition(row)
    assert secret not in str(caught.value) and name not in str(caught.value)
    assert store.count_petitions() == 0
    store.close()


# ------------------------------------------------------------------------------------------------ 6. throttling
def test_failed_authentication_is_throttled_per_address(env) -> None:
    from xinfang.serving.auth import AuthThrottle

    client, keys = env
    svc = client.service
    saved, svc.auth_throttle = svc.auth_throttle, AuthThrottle(limit=5, window=1.5)
    try:
        guesser = TestClient(client.app, client=("203.0.113.7", 40000))
        throttled = _metric(client, keys, "xinfang_auth_throttled_total")
        codes = [guesser.get("/v1/petitions", headers=auth(f"xf_guess-{i}")).status_code for i in range(5)]
        assert codes == [401] * 5
        r = guesser.get("/v1/petitions", headers=auth("xf_guess-6"))
        assert r.status_code == 429 and r.json()["error"] == "too_many_requests"
        assert 1 <= int(r.headers["retry-after"]) <= 2 and r.headers["x-request-id"] == r.json()["request_id"]
        # a right key from that address waits too (it is not even looked up); other addresses are not affected
        assert guesser.get("/v1/petitions", headers=auth(keys["caseworker"])).status_code == 429
        assert client.get("/v1/petitions", headers=auth(keys["caseworker"])).status_code == 200
        assert _metric(client, keys, "xinfang_auth_throttled_total") == throttled + 2
        time.sleep(1.6)
        assert guesser.get("/v1/petitions", headers=auth(keys["caseworker"])).status_code == 200
    finally:
        svc.auth_throttle = saved


def test_default_throttle_allows_the_configured_guesses(env) -> None:
    client, keys = env
    guesser = TestClient(client.app, client=("203.0.113.8", 40000))
    limit = client.service.config.auth_fail_limit
    codes = [guesser.get("/metrics", headers=auth(f"xf_g{i}")).status_code for i in range(limit + 3)]
    assert codes == [401] * limit + [429] * 3


# ------------------------------------------------------------------------------------------------ 7. headers, docs
def test_html_responses_carry_security_headers(env) -> None:
    client, _ = env
    for path in ("/ui/", "/docs"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-eval" not in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    api = client.get("/healthz")
    assert api.headers["x-content-type-options"] == "nosniff" and "frame-ancestors" in api.headers[
        "content-security-policy"]


@needs_browser
def test_page_in_chromium_refuses_framing_and_runs_under_its_csp(env) -> None:
    """Real Chromium: the caseworker page works under its CSP (no violation reported while a petition and its
    candidates are shown), and a foreign page cannot frame it."""
    client, keys = env
    hi = auth(keys["intake"])
    text = "B5区某小区物业违规收取停车费，业主多次反映无果，请求调查处理。"
    for pid, extra in (("frame-a", ""), ("frame-b", "再次反映。")):
        client.post("/v1/petitions", json={"id": pid, "text": text + extra, "petitioner": "U7"}, headers=hi)
    violations: list[str] = []
    with _served(client.app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(url + "/ui/")
            page.fill("#key-input", keys["caseworker"])
            page.click("#login-btn")
            expect(page.locator("#view-queue")).to_be_visible()
            page.goto(url + "/ui/#/p/frame-b")
            expect(page.locator("#cand-list > li").first).to_be_visible()
            page.reload()  # revalidated from the cache (304): the page keeps its policy
            expect(page.locator("#cand-list > li").first).to_be_visible()
            assert not violations, violations
            framer = browser.new_page()
            framer.set_content(f'<iframe id="f" src="{url}/ui/" width="600" height="400"></iframe>')
            framer.wait_for_timeout(1500)
            inner = framer.frames[1] if len(framer.frames) > 1 else None
            assert inner is None or inner.locator("#key-input").count() == 0
        finally:
            browser.close()


def test_swagger_ui_is_served_from_the_package_never_a_cdn(env) -> None:
    import re

    client, _ = env
    page = client.get("/docs").text
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    for asset in re.findall(r"(?:src|href)=\"(/docs/[^\"]+)\"", page):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text


def test_docs_can_be_turned_off(service_models, tiny_encoder_dir, tmp_path) -> None:
    from xinfang.serving.app import create_app

    bundles, scorer = service_models
    app = create_app(make_config(tmp_path, bundles, tiny_encoder_dir, repeat_scorer=scorer, docs=False))
    client = TestClient(app)  # no lifespan: only the routes are looked at
    assert client.get("/docs").status_code == 404 and client.get("/docs/assets/swagger-ui.css").status_code == 404
    app.state.service.store.close()


# ------------------------------------------------------------------------------------------------ 8. smaller ones
def test_models_shows_server_paths_to_admin_keys_only(env) -> None:
    client, keys = env
    admin = client.get("/v1/models", headers=auth(keys["admin"])).json()
    assert admin["model_dirs"] and admin["embedder"]["encoder"]
    paths = [*admin["model_dirs"], admin["embedder"]["encoder"], str(client.service.config.data_dir)]
    for role in ("intake", "caseworker"):
        r = client.get("/v1/models", headers=auth(keys[role]))
        assert r.status_code == 200 and r.json()["models"]["topic"]["version"]
        assert r.json()["model_dirs"] == [] and "encoder" not in r.json()["embedder"]
        assert all(p not in r.text for p in paths), role


def test_idempotency_compares_the_normalised_body(env) -> None:
    client, keys = env
    h = auth(keys["intake"])
    first = client.post("/v1/petitions", json=_petition(7, id="norm-1", received_at="2024-05-01T08:00:00+08:00",
                                                         title="小区停车费"), headers=h)
    assert first.status_code == 201, first.text
    for variant in ({"received_at": "2024-05-01T00:00:00Z"}, {"received_at": "2024-05-01T00:00:00"},
                    {"title": "小区停车费  "}, {"title": " 小区停车费"}):
        body = {**_petition(7, id="norm-1", received_at="2024-05-01T08:00:00+08:00", title="小区停车费"), **variant}
        r = client.post("/v1/petitions", json=body, headers=h)
        assert r.status_code == 200 and r.json() == first.json(), (variant, r.text)
    other = {**_petition(7, id="norm-1", received_at="2024-05-01T08:00:01+08:00", title="小区停车费")}
    assert client.post("/v1/petitions", json=other, headers=h).status_code == 409


@pytest.mark.parametrize("body,words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"petitions": [{"text": "x", "id": ' + b"7" * 5000 + b"}]}", "too many digits"),
    (b'{"petitions": [{"text": "\xff\xfe"}]}', "not valid UTF-8"),
])
def test_unreadable_json_is_named_for_what_it_is(env, body, words) -> None:
    client, keys = env
    r = client.post("/v1/classify", content=body, headers={**auth(keys["intake"]), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "body", r.text
    assert words in r.json()["message"] and "not valid JSON" not in r.json()["message"], r.text


# ------------------------------------------------------------------------------------------------ fuzzing
class _served:
    """A real uvicorn server around an app whose lifespan already ran (port chosen by the OS)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                                    log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_schemathesis_finds_no_server_error(env, tmp_path) -> None:
    """A bounded schemathesis run (every operation, an admin key) against a real server: no 5xx, counted both by
    schemathesis and by the server's own request metrics."""
    pytest.importorskip("schemathesis")
    client, keys = env

    def counts() -> tuple[float, float]:
        lines = [line for line in client.get("/metrics", headers=auth(keys["admin"])).text.splitlines()
                 if line.startswith("xinfang_requests_total{")]
        return (sum(float(line.rsplit(" ", 1)[1]) for line in lines),
                sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'status="5' in line))

    sent, five = counts()
    with _served(client.app) as url:
        cmd = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
               "run", url + "/openapi.json", "-H", f"Authorization: Bearer {keys['admin']}", "--checks",
               "not_a_server_error", "--max-examples", "15", "--max-time", "20", "--seed", "17",
               "--request-timeout", "30", "--suppress-health-check", "all", "--generation-allow-x00", "true"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
    sent_after, five_after = counts()
    assert five_after == five, tail
    assert proc.returncode == 0, tail
    assert sent_after - sent >= 100, tail  # the run really exercised the API

