"""End-to-end tests of the caseworker review page (/ui/) in a real headless Chromium (Debian's, via Playwright).

A real `xinfang serve` runs in a subprocess on a free port with a temporary data dir and tiny demo models; demo
petitions are ingested through the API with an intake key; the browser signs in with a caseworker key.
Screenshots go to test-artifacts/ (gitignored). Skipped when /usr/bin/chromium is missing
(install it with `bash scripts/install-browser.sh`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from xinfang.settings import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO_ROOT / "test-artifacts"
XINFANG = str(Path(sys.executable).with_name("xinfang"))

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists() or sync_playwright is None,
    reason="browser tests need /usr/bin/chromium (run `bash scripts/install-browser.sh`) and playwright "
           "(pip install -e '.[test]')")


@dataclass
class Server:
    url: str
    env: dict
    data_dir: Path
    keys: dict[str, str]
    records: dict[str, dict] = field(default_factory=dict)

    def get(self, path: str, role: str = "caseworker", **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=30, **kw)

    def add_key(self, role: str, name: str) -> str:
        from xinfang.serving.store import Store

        store = Store(f"sqlite:///{self.data_dir / 'xinfang.db'}")
        try:
            return store.create_key(name, role)
        finally:
            store.close()

    def cli(self, *args: str) -> str:
        out = subprocess.run([XINFANG, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, service_models: tuple[list[Path], Path | None],
           tiny_encoder_dir: Path, demo_data_path: Path):
    # the same tiny demo bundles and repeat scorer as the service tests (conftest.py: service_models)
    data_dir = tmp_path_factory.mktemp("ui-serve")
    model_dirs, scorer = service_models
    env = {**os.environ, "XINFANG_DATA_DIR": str(data_dir), "XINFANG_EMBED_ENCODER": str(tiny_encoder_dir),
           "XINFANG_MODEL_DIRS": ",".join(map(str, model_dirs)), "XINFANG_THREADS": "1"}
    if scorer is not None:
        env["XINFANG_REPEAT_SCORER"] = str(scorer)
    srv = Server(url="", env=env, data_dir=data_dir, keys={})
    # the caseworker key the way an administrator makes one; the others directly in the store (faster)
    srv.keys["caseworker"] = srv.cli("keys", "create", "--role", "caseworker", "--name", "caseworker-ui")
    for role in ("intake", "admin"):
        srv.keys[role] = srv.add_key(role, f"{role}-ui")
    port = _free_port()
    srv.url = f"http://127.0.0.1:{port}"
    log = open(data_dir / "serve.log", "w")
    proc = subprocess.Popen([XINFANG, "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (data_dir / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(srv.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "xinfang serve did not become ready in 120 s"
            time.sleep(0.3)
        intake = {"Authorization": f"Bearer {srv.keys['intake']}"}
        with httpx.Client(base_url=srv.url, headers=intake, timeout=60) as client:
            for line in demo_data_path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                body = {"id": rec["id"], "title": rec.get("title"), "text": rec.get("text") or rec["title"],
                        "petitioner": rec.get("petitioner"), "received_at": rec.get("received_at") or rec.get("time"),
                        "channel": "网上留言"}  # the intake channel; the demo's `channel` is the legal one
                r = client.post("/v1/petitions", json={k: v for k, v in body.items() if v not in (None, "")})
                assert r.status_code == 201, r.text
                srv.records[str(rec["id"])] = {**rec, **body}
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(15_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _sign_in(page: Page, server: Server, key: str | None = None) -> None:
    page.goto(server.url + "/ui/")
    page.fill("#key-input", key or server.keys["caseworker"])
    page.click("#login-btn")
    expect(page.locator("#view-queue")).to_be_visible()


def _pick_target(server: Server) -> tuple[str, str, str]:
    """A stored petition whose suggested repeats include one of its demo repeat group and one from outside it."""
    groups: dict[str, set[str]] = defaultdict(set)
    for pid, rec in server.records.items():
        if rec.get("repeat_group") not in (None, ""):
            groups[str(rec["repeat_group"])].add(pid)
    assert groups, "the demo data has no repeat_group"
    # newest first, like the queue: the later members of a group are the re-submissions
    order = list(server.records)[::-1]
    for pid in order:
        g = server.records[pid].get("repeat_group")
        if g in (None, "") or len(groups[str(g)]) < 2:
            continue
        r = server.get(f"/v1/petitions/{pid}/repeats?k=10")
        assert r.status_code == 200, r.text
        cands = [c["id"] for c in r.json()["candidates"]]
        same = [c for c in cands if c in groups[str(g)]]
        other = [c for c in cands if c not in groups[str(g)]]
        if same and other:
            return pid, same[0], other[0]
    raise AssertionError("no demo petition has a same-group repeat among its suggested repeats")


def _go_to_candidate(page: Page, cid: str) -> None:
    """Press j until the candidate open side by side is `cid` (keyboard only)."""
    expect(page.locator("#cand-list > li").first).to_be_visible()
    n = page.locator("#cand-list > li").count()
    selected = "() => { const li = document.querySelector('#cand-list > li.sel'); return li && li.dataset.id; }"
    for _ in range(n + 1):
        if page.evaluate(selected) == cid:
            return
        before = page.evaluate(selected)
        page.keyboard.press("j")
        page.wait_for_function(f"() => ({selected})() !== {json.dumps(before)}", timeout=5000)
    raise AssertionError(f"candidate {cid} not reachable with j")


@needs_browser
def test_review_flow_keyboard(page: Page, server: Server) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pid, same, other = _pick_target(server)
    target = server.records[pid]

    _sign_in(page, server)
    expect(page.locator("#queue-list")).to_have_attribute("aria-busy", "false")
    rows = page.locator("#queue-list > li")
    expect(rows.first).to_be_visible()
    # newest first: the first row is the last petition ingested
    assert rows.first.get_attribute("data-id") == list(server.records)[-1]
    expect(page.locator("#queue-status")).to_contain_text(f"共 {len(server.records)} 件")
    expect(rows.first.locator(".chip.topic")).to_contain_text("%")
    page.screenshot(path=str(ARTIFACTS / "queue.png"))

    # the "has likely repeats" filter shows exactly the petitions the API counts as having them, each with a badge
    page.check("#f-repeats")
    expect(page).to_have_url(f"{server.url}/ui/#/queue?has_repeats=1")
    expect(page.locator("#queue-list")).to_have_attribute("aria-busy", "false")
    with_repeats = server.get("/v1/petitions?has_repeats=true&limit=1").json()["total"]
    shown = page.locator("#queue-list > li").count()
    assert shown == min(with_repeats, 25)
    assert page.locator("#queue-list .badge.repeat").count() == shown
    page.uncheck("#f-repeats")
    expect(page).to_have_url(f"{server.url}/ui/#/queue")

    # "/" focuses the topic filter: filter by the target's topic, then open it from the queue
    topic = server.get(f"/v1/petitions/{pid}").json()["labels"]["topic"]["label"]
    page.keyboard.press("/")
    expect(page.locator("#f-topic")).to_be_focused()
    page.keyboard.type(topic)
    page.keyboard.press("Enter")
    expect(page.locator("#queue-list")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#queue-list .chip.topic").first).to_contain_text(topic)
    row = page.locator(f'#queue-list > li[data-id="{pid}"]')
    page_no = 0
    while row.count() == 0 and page.locator("#pg-next").is_enabled():
        page.click("#pg-next")
        page_no += 1
        # wait for the new page itself, not the previous page's idle list
        expect(page).to_have_url(re.compile(rf"page={page_no}$"))
        expect(page.locator("#pg-info")).to_contain_text(f"第 {page_no * 25 + 1}–")
        expect(page.locator("#queue-list")).to_have_attribute("aria-busy", "false")
    # keyboard only: "/" then Esc leaves the filter box, j moves down the rows, Enter opens the selected one
    page.keyboard.press("/")
    page.keyboard.press("Escape")
    expect(page.locator("#f-topic")).not_to_be_focused()
    ids = page.eval_on_selector_all("#queue-list > li", "els => els.map(e => e.dataset.id)")
    for _ in range(ids.index(pid)):
        page.keyboard.press("j")
    expect(row).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/ui/#/p/{pid}")
    expect(page.locator("#p-title")).to_have_text(target.get("title") or "（无标题）")
    expect(page.locator("#a-text")).to_contain_text(target["text"][:20])
    expect(page.locator("#lb-topic .lb-value")).to_be_visible()
    expect(page.locator("#lb-topic")).to_contain_text("置信度")

    # the known repeat, side by side with highlighted shared passages and reasons
    _go_to_candidate(page, same)
    expect(page.locator("#col-b")).to_be_visible()
    expect(page.locator("#b-text")).to_contain_text(server.records[same]["text"][:20])
    expect(page.locator("#b-text mark").first).to_be_visible()
    marks_a = page.locator("#a-text mark").all_inner_texts()
    marks_b = page.locator("#b-text mark").all_inner_texts()
    assert marks_a and marks_b
    a_full = page.locator("#a-text").inner_text()
    b_full = page.locator("#b-text").inner_text()
    longest = max(marks_b, key=len)
    assert len(longest) >= 4 and longest in a_full and longest in b_full
    assert all(len(m) >= 4 for m in marks_a + marks_b)
    expect(page.locator("#cmp-reasons .reason").first).to_be_visible()
    expect(page.locator("#cmp-reasons")).to_contain_text("相似度")

    page.keyboard.press("y")
    expect(page.locator("#cmp-decision")).to_contain_text("已确认：是重复")
    expect(page.locator(f'#cand-list > li[data-id="{same}"] .decision')).to_have_text("已确认：是重复")
    page.screenshot(path=str(ARTIFACTS / "side-by-side.png"))

    _go_to_candidate(page, other)
    page.keyboard.press("n")
    expect(page.locator("#cmp-decision")).to_contain_text("已判定：不是重复")

    # correct the topic with the keyboard: e, type, Enter
    topics = sorted({r["topic"] for r in server.records.values() if r.get("topic")})
    current = page.locator("#lb-topic .lb-value").inner_text()
    new_topic = next(t for t in topics if t != current)
    page.keyboard.press("e")
    expect(page.locator("#input-topic")).to_be_focused()
    page.fill("#input-topic", new_topic)
    page.keyboard.press("Enter")
    expect(page.locator('[data-testid="topic-corrected"]')).to_have_text(new_topic)

    # all three decisions survive a reload
    page.reload()
    expect(page.locator(f'#cand-list > li[data-id="{same}"] .decision')).to_have_text("已确认：是重复")
    expect(page.locator(f'#cand-list > li[data-id="{other}"] .decision')).to_have_text("已判定：不是重复")
    expect(page.locator('[data-testid="topic-corrected"]')).to_have_text(new_topic)
    expect(page.locator("#cmp-decision")).to_contain_text("已判定：不是重复")

    # ... and reached the API, with who gave them
    fb = server.get(f"/v1/petitions/{pid}/feedback")
    assert fb.status_code == 200, fb.text
    got = {(f["kind"], f["target_id"], f["label"], f["who"]) for f in fb.json()["items"] if f["petition_id"] == pid}
    assert ("repeat_confirm", same, None, "caseworker-ui") in got
    assert ("repeat_reject", other, None, "caseworker-ui") in got
    assert ("topic_correction", None, new_topic, "caseworker-ui") in got

    # help overlay documents the shortcuts; Esc closes it, Esc again goes back to the queue
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    for k in ("j", "k", "y", "n", "e", "Esc", "/"):
        expect(page.locator("#help kbd", has_text=k).first).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()
    page.keyboard.press("Escape")
    expect(page.locator("#view-queue")).to_be_visible()

    # narrow screen: still readable (no horizontal scrolling)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/ui/#/p/{pid}/c/{same}")
    expect(page.locator("#b-text mark").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "side-by-side-narrow.png"), full_page=True)


@needs_browser
def test_channel_badge_reason_filter_and_correction(page: Page, server: Server) -> None:
    """诉访分离 on the page: a non-信访 channel shows as a badge in the queue (reason in its tooltip), the petition
    shows the channel with its reason, procedure and body, the list filters by channel, and `c` corrects it."""
    non_petition = [p for p in server.get("/v1/petitions?limit=200").json()["items"]
                    if p["labels"].get("channel") and p["labels"]["channel"]["label"] != "信访"]
    _sign_in(page, server)
    if non_petition:  # the tiny demo model may answer 信访 everywhere; the badge then has nothing to show
        target = non_petition[0]
        label = target["labels"]["channel"]["label"]
        total = server.get("/v1/petitions", params={"legal_channel": label, "limit": 1}).json()["total"]
        page.select_option("#f-channel", label)
        page.click("#filters button[type=submit]")
        expect(page.locator("#queue-status")).to_contain_text(f"共 {total} 件")
        badges = page.locator('#queue-list [data-testid="channel-badge"]')
        expect(badges).to_have_count(min(total, 25))
        expect(badges.first).to_have_text(label)
        assert badges.first.get_attribute("title").startswith("模型")
        assert "legal_channel=" in page.url
    pid = next(iter(server.records))
    page.goto(f"{server.url}/ui/#/p/{pid}")
    stored = server.get(f"/v1/petitions/{pid}").json()["labels"]["channel"]
    expect(page.locator("#lb-channel .lb-value")).to_have_text(stored["label"])
    expect(page.locator('[data-testid="channel-reason"]')).to_have_text(stored["reason"])
    expect(page.locator('[data-testid="channel-procedure"]')).to_contain_text(stored["body"])
    new = "纪检监察" if stored["label"] != "纪检监察" else "信访"
    page.keyboard.press("c")
    expect(page.locator("#input-channel")).to_be_focused()
    page.fill("#input-channel", new)
    page.keyboard.press("Enter")
    expect(page.locator('[data-testid="channel-corrected"]')).to_have_text(new)
    fb = server.get(f"/v1/petitions/{pid}/feedback").json()["items"]
    assert ("channel_correction", new, "caseworker-ui") in {(f["kind"], f["label"], f["who"]) for f in fb}
    # a label outside the five is refused with the API's message, nothing stored
    page.keyboard.press("c")
    page.fill("#input-channel", "上访")
    page.keyboard.press("Enter")
    expect(page.locator("#banner-text")).to_contain_text("label")
    assert len(server.get(f"/v1/petitions/{pid}/feedback").json()["items"]) == len(fb)


@needs_browser
def test_errors_are_actionable(page: Page, server: Server) -> None:
    # a wrong key is refused in Chinese and nothing is stored
    page.goto(server.url + "/ui/")
    page.fill("#key-input", "xf_not-a-key")
    page.click("#login-btn")
    expect(page.locator("#login-error")).to_contain_text("密钥无效或已被吊销")
    assert page.evaluate("sessionStorage.getItem('xinfang.key')") is None
    # an intake key is not a caseworker key
    page.fill("#key-input", server.keys["intake"])
    page.click("#login-btn")
    expect(page.locator("#login-error")).to_contain_text("没有办案人员")

    # a deleted petition: a message and a way back, not a blank panel
    victim = list(server.records)[0]
    key = server.add_key("caseworker", "caseworker-revoked")
    _sign_in(page, server, key)
    r = httpx.delete(f"{server.url}/v1/petitions/{victim}", timeout=30,
                     headers={"Authorization": f"Bearer {server.keys['admin']}"})
    assert r.status_code == 200, r.text
    page.goto(f"{server.url}/ui/#/p/{victim}")
    expect(page.locator("#petition-error")).to_contain_text("不存在或已被删除")
    expect(page.locator("#petition-error a")).to_have_text("返回列表")

    # network down: a banner with a retry button
    page.route("**/v1/**", lambda route: route.abort())
    page.goto(f"{server.url}/ui/#/queue?needs_review=1")
    expect(page.locator("#banner")).to_contain_text("无法连接")
    expect(page.locator("#banner-retry")).to_be_visible()
    page.unroute("**/v1/**")
    page.click("#banner-retry")
    expect(page.locator("#banner")).to_be_hidden()

    # the key is revoked while signed in: back to sign-in, with the reason
    server.cli("keys", "revoke", "caseworker-revoked")
    page.goto(f"{server.url}/ui/#/queue?page=0")
    page.reload()
    expect(page.locator("#view-login")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("已被吊销")


@needs_browser
def test_shared_passages_in_page(page: Page, server: Server) -> None:
    """The highlighter itself (match.js) as the page runs it: maximal shared runs of >= 4 characters."""
    page.goto(server.url + "/ui/")
    res = page.evaluate("""() => {
        const a = "我们小区物业乱收停车费，每月三百元，请求尽快解决处理。";
        const b = "物业乱收停车费的问题：小区物业乱收停车费，每月三百元，已经反映多次，请求尽快解决。";
        return XfMatch.sharedPassages(a, b, 4).map(m => [a.substr(m.a, m.len), b.substr(m.b, m.len)]);
    }""")
    pairs = [tuple(p) for p in res]
    assert all(x == y and len(x) >= 4 for x, y in pairs)
    texts = [x for x, _ in pairs]
    assert "小区物业乱收停车费，每月三百元，" in texts
    assert "请求尽快解决" in texts
    assert "物业乱收停车费" in texts  # b's title, found by the second pass
    assert not any("三" == t or "，" == t for t in texts)
    none = page.evaluate("() => XfMatch.sharedPassages('今天天气很好', '明日有雨', 4)")
    assert none == []


@needs_browser
def test_hot_issues_page_and_matter_box(page: Page, server: Server) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    api = server.get("/v1/hot-issues?limit=20")
    assert api.status_code == 200, api.text
    items = api.json()["items"]
    assert items
    _sign_in(page, server)
    page.click("#nav-hot")
    expect(page.locator("#view-hot")).to_be_visible()
    cards = page.locator("#hot-list > li")
    expect(cards.first).to_be_visible()
    assert cards.count() == len(items)
    first = cards.first
    expect(first.locator(".heat")).to_have_text(f"热度 {items[0]['heat']:.1f}")
    expect(first.locator(".desc")).to_have_text(items[0]["description"])
    assert first.locator("svg.timeline circle").count() == sum(1 for m in items[0]["members"] if m["time"])
    assert first.locator(".heat-terms li").count() == 5
    page.screenshot(path=str(ARTIFACTS / "hot-issues.png"), full_page=True)
    # a member opens the petition, which shows its matter
    member = items[0]["members"][0]["id"]
    first.locator(".hot-members a").first.click()
    expect(page.locator("#p-matter")).to_contain_text("所属事项 " + items[0]["matter"])
    expect(page.locator("#p-matter")).to_contain_text(f"{items[0]['size']} 件")
    assert member in page.url
    # an empty window says so
    page.goto(server.url + "/ui/#/hot?since=2031-01-01")
    expect(page.locator("#hot-status")).to_contain_text("没有信访事项")


def test_ui_is_packaged_and_offline() -> None:
    """Every file is shipped with xinfang.serving and loads nothing from outside the server."""
    ui = REPO_ROOT / "serving" / "ui"
    names = {p.name for p in ui.iterdir()}
    assert {"index.html", "app.js", "app.css", "match.js"} <= names
    for p in ui.iterdir():
        text = p.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")  # a namespace, not a fetch
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, p.name
    assert "Noto Sans CJK SC" in (ui / "app.css").read_text(encoding="utf-8")
    assert shutil.which("xinfang") or Path(XINFANG).exists()
