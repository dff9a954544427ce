/* 信访件复核 — caseworker review page. Plain JS, no build step, no external resources.
 * Talks to the xinfang API (/v1/...) with the caseworker's key as a Bearer token (kept in sessionStorage).
 * Routes (location.hash): #/login, #/queue?topic=&department=&legal_channel=&needs_review=1&has_repeats=1&page=0,
 * #/p/<id>, #/p/<id>/c/<candidate id>, #/hot?since=&until=&jurisdiction= (hot issues).
 */
(function () {
  "use strict";

  var KEY_STORE = "xinfang.key";
  var NAME_STORE = "xinfang.who";
  var MSG_STORE = "xinfang.signout";
  var PAGE_SIZE = 25;
  var REPEAT_K = 10;
  var $ = function (id) { return document.getElementById(id); };

  var state = {
    queue: { items: [], total: 0, page: 0, sel: 0, filters: {}, seq: 0 },
    petition: null,        // the open petition (API object)
    pid: null,
    cands: [],             // suggested repeats [{id, probability, similarity, reasons, is_repeat}]
    cur: -1,               // index of the candidate open side by side
    feedback: [],          // feedback rows touching the open petition
    others: {},            // id -> petition (candidates' texts)
    knownTopics: new Set(),
    knownDepts: new Set(),
    lastAction: null,
  };

  /* ------------------------------------------------------------------ API */
  function ApiError(status, message, detail) {
    this.status = status; this.message = message; this.detail = detail;
  }

  function getKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

  function detailText(body) {
    if (!body) return "";
    if (Array.isArray(body.fields) && body.fields.length) {
      return body.fields.map(function (f) { return f.field + "：" + f.message; }).join("；");
    }
    if (typeof body.message === "string") return body.message;
    var d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map(function (e) { return (e.loc ? e.loc.join(".") + "：" : "") + (e.msg || JSON.stringify(e)); }).join("；");
    }
    return typeof body.error === "string" ? body.error : "";
  }

  async function api(path, opts) {
    opts = opts || {};
    var headers = { "Accept": "application/json" };
    var key = opts.key !== undefined ? opts.key : getKey();
    if (key) headers["Authorization"] = "Bearer " + key;
    var init = { method: opts.method || "GET", headers: headers, cache: "no-store" };
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    var res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "无法连接信访服务：网络已断开或服务未运行。请检查网络连接后点“重试”。");
    }
    var body = null;
    var text = await res.text().catch(function () { return ""; });
    if (text) { try { body = JSON.parse(text); } catch (e) { body = null; } }
    if (res.ok) return body;
    var detail = detailText(body);
    var msg;
    if (res.status === 401) msg = "API 密钥无效或已被吊销，请重新登录（如需新密钥请联系管理员）。";
    else if (res.status === 403) msg = "此密钥没有办案人员（caseworker）权限，请使用办案人员密钥登录。";
    else if (res.status === 404) msg = "未找到：该信访件不存在或已被删除。";
    else if (res.status === 409) msg = "操作冲突：" + (detail || "数据已被修改，请刷新后重试。");
    else if (res.status === 422 || res.status === 400) msg = "提交的内容有误：" + (detail || res.statusText);
    else if (res.status === 429) msg = "请求过于频繁，请稍候再试。";
    else if (res.status >= 500) msg = "服务器出错（" + res.status + "），请稍后点“重试”；如持续出现请联系管理员。";
    else msg = "请求失败（" + res.status + "）" + (detail ? "：" + detail : "");
    var rid = res.headers.get("x-request-id") || (body && body.request_id);
    if (rid && res.status >= 500) msg += "（请求编号 " + rid + "）";
    throw new ApiError(res.status, msg, detail);
  }

  /* Session-wide handling: 401 -> sign-in with a message; network/5xx -> banner with retry. */
  function handleError(err, retry) {
    if (!(err instanceof ApiError)) { console.error(err); err = new ApiError(-1, "页面出错：" + err); }
    if (err.status === 401 || err.status === 403) {
      signOut(err.message);
      return true;
    }
    showBanner(err.message, retry);
    return false;
  }

  /* ------------------------------------------------------------------ data shapes (API -> view) */

  // One task's answer of `labels` (schemas.py TopicPrediction / DepartmentPrediction / ChannelPrediction), or null.
  function labelOf(p, task) { return (p.labels && p.labels[task]) || null; }

  function labelText(l) {
    if (l.display) return l.display;
    return l.label + (l.jurisdiction ? "（" + l.jurisdiction + "）" : "");
  }

  function needsReview(p) { return !!(p.labels && p.labels.needs_review); }

  function repeatCount(p) { return p.repeat_count || 0; }

  function whenOf(p) { return p.received_at || null; }

  function fmtTime(t) {
    if (!t) return "时间未知";
    var d = new Date(t);
    if (isNaN(d)) return String(t);
    var pad = function (n) { return String(n).padStart(2, "0"); };
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function pct(x) { return x === null || x === undefined ? "—" : Math.round(x * 100) + "%"; }

  // RepeatsResponse.candidates, most likely first.
  function candidatesOf(body) {
    return body.candidates.slice().sort(function (a, b) { return b.probability - a.probability; });
  }

  // FeedbackList.items
  function feedbackOf(body) { return body.items; }

  /* Latest repeat decision between the open petition and a candidate (either direction). */
  function decisionFor(cid) {
    var pid = state.pid, found = null;
    state.feedback.forEach(function (f) {
      var pair = (f.petition_id === pid && f.target_id === cid) || (f.petition_id === cid && f.target_id === pid);
      if (pair && (f.kind === "repeat_confirm" || f.kind === "repeat_reject")) found = f;
    });
    return found;
  }

  function correctionFor(task) {
    var kind = task + "_correction", found = null;
    state.feedback.forEach(function (f) { if (f.petition_id === state.pid && f.kind === kind) found = f; });
    return found;
  }

  /* ------------------------------------------------------------------ small DOM helpers */
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "class") e.className = attrs[k];
      else if (k === "text") e.textContent = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else if (k === "width") e.style.width = attrs[k];  // CSSOM: allowed by the page's CSP, a style attribute is not
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function showBanner(msg, retry) {
    $("banner-text").textContent = msg;
    $("banner").hidden = false;
    var btn = $("banner-retry");
    btn.hidden = !retry;
    btn.onclick = retry ? function () { hideBanner(); retry(); } : null;
  }
  function hideBanner() { $("banner").hidden = true; }

  function showView(name) {
    ["login", "queue", "petition", "hot"].forEach(function (v) { $("view-" + v).hidden = v !== name; });
    document.body.dataset.view = name;
    var signedIn = !!getKey();
    $("logout-btn").hidden = !signedIn;
    $("who").hidden = !signedIn;
    var name = sessionStorage.getItem(NAME_STORE);
    $("who").textContent = signedIn ? "已登录（办案人员" + (name ? "：" + name : "") + "）" : "";
  }

  /* ------------------------------------------------------------------ sign-in */
  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    sessionStorage.removeItem(NAME_STORE);
    hideBanner();
    // kept for this tab until the next sign-in, so a reload still says why the key was refused
    if (message) sessionStorage.setItem(MSG_STORE, message); else sessionStorage.removeItem(MSG_STORE);
    location.hash = "#/login";
    route();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    var key = $("key-input").value.trim();
    var errBox = $("login-error");
    errBox.hidden = true;
    if (!key) { errBox.textContent = "请输入 API 密钥。"; errBox.hidden = false; return; }
    $("login-btn").disabled = true;
    try {
      // Any caseworker route validates the key; a page of one petition is the cheapest.
      await api("/v1/petitions?limit=1", { key: key });
      sessionStorage.setItem(KEY_STORE, key);
      sessionStorage.removeItem(MSG_STORE);
      $("key-input").value = "";
      var next = sessionStorage.getItem("xinfang.next") || "#/queue";
      sessionStorage.removeItem("xinfang.next");
      location.hash = next;
      route();
    } catch (err) {
      sessionStorage.removeItem(MSG_STORE);
      errBox.textContent = err instanceof ApiError ? err.message : String(err);
      errBox.hidden = false;
    } finally {
      $("login-btn").disabled = false;
    }
  }

  /* ------------------------------------------------------------------ queue */
  function parseQuery(q) {
    var out = {};
    new URLSearchParams(q || "").forEach(function (v, k) { out[k] = v; });
    return out;
  }

  function queueHash(f) {
    var p = new URLSearchParams();
    ["topic", "department", "legal_channel"].forEach(function (k) { if (f[k]) p.set(k, f[k]); });
    if (f.needs_review) p.set("needs_review", "1");
    if (f.has_repeats) p.set("has_repeats", "1");
    if (f.page) p.set("page", String(f.page));
    var s = p.toString();
    return "#/queue" + (s ? "?" + s : "");
  }

  function readFilters() {
    return {
      topic: $("f-topic").value.trim(), department: $("f-dept").value.trim(), legal_channel: $("f-channel").value,
      needs_review: $("f-review").checked, has_repeats: $("f-repeats").checked, page: 0,
    };
  }

  async function loadQueue(q) {
    var f = {
      topic: q.topic || "", department: q.department || "", legal_channel: q.legal_channel || "",
      needs_review: q.needs_review === "1", has_repeats: q.has_repeats === "1", page: Number(q.page) || 0,
    };
    state.queue.filters = f;
    $("f-topic").value = f.topic; $("f-dept").value = f.department; $("f-channel").value = f.legal_channel;
    $("f-review").checked = f.needs_review; $("f-repeats").checked = f.has_repeats;
    var params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(f.page * PAGE_SIZE) });
    if (f.topic) params.set("topic", f.topic);
    if (f.department) params.set("department", f.department);
    if (f.legal_channel) params.set("legal_channel", f.legal_channel);
    if (f.needs_review) params.set("needs_review", "true");
    if (f.has_repeats) params.set("has_repeats", "true");
    $("queue-status").textContent = "正在加载…";
    var seq = ++state.queue.seq;
    $("queue-list").setAttribute("aria-busy", "true");
    try {
      var body = await api("/v1/petitions?" + params.toString());
      if (seq !== state.queue.seq) return;  // a newer filter was applied meanwhile
      var items = Array.isArray(body) ? body : (body.items || body.petitions || []);
      state.queue.items = items;
      state.queue.total = body.total !== undefined ? body.total : items.length;
      state.queue.page = f.page;
      if (state.queue.sel >= items.length) state.queue.sel = Math.max(0, items.length - 1);
      hideBanner();
      renderQueue();
      $("queue-list").setAttribute("aria-busy", "false");
    } catch (err) {
      if (seq !== state.queue.seq) return;
      $("queue-status").textContent = "列表未能加载。";
      handleError(err, function () { loadQueue(q); });
    }
  }

  function labelChip(l, cls) {
    if (!l) return el("span", { class: "chip " + cls + " none", text: "未分类" });
    var low = l.score !== null && l.score < 0.5;
    return el("span", { class: "chip " + cls + (low ? " low" : ""), title: "置信度 " + pct(l.score) }, [
      labelText(l), el("span", { class: "conf", text: pct(l.score) }),
    ]);
  }

  function renderQueue() {
    var q = state.queue, list = clear($("queue-list"));
    q.items.forEach(function (p, i) {
      var t = labelOf(p, "topic"), d = labelOf(p, "department");
      if (t) state.knownTopics.add(t.label);
      if (d) state.knownDepts.add(d.label);
      var n = repeatCount(p);
      var li = el("li", { class: "row" + (i === q.sel ? " sel" : ""), "data-id": p.id, "aria-selected": i === q.sel ? "true" : "false" }, [
        el("a", { class: "row-title", href: "#/p/" + encodeURIComponent(p.id), text: p.title || firstWords(p.text) }),
        el("div", { class: "row-meta" }, [
          el("time", { class: "muted", datetime: whenOf(p) || "", text: fmtTime(whenOf(p)) }),
          el("span", { class: "muted small", text: "编号 " + p.id }),
          labelChip(t, "topic"), labelChip(d, "dept"), channelBadge(labelOf(p, "channel")),
          needsReview(p) ? el("span", { class: "badge review", text: "待人工复核" }) : null,
          n > 0 ? el("span", { class: "badge repeat", title: "系统发现 " + n + " 件疑似重复", text: "疑似重复 " + n }) : null,
        ]),
      ]);
      li.addEventListener("click", function (ev) {
        q.sel = i;
        if (ev.target.tagName !== "A") openPetition(p.id);
      });
      list.appendChild(li);
    });
    fillDatalist("dl-topics", state.knownTopics);
    fillDatalist("dl-depts", state.knownDepts);
    var from = q.total ? q.page * PAGE_SIZE + 1 : 0, to = q.page * PAGE_SIZE + q.items.length;
    $("queue-status").textContent = q.total ? "共 " + q.total + " 件，最新的在前" :
      (hasFilter(q.filters) ? "没有符合筛选条件的信访件。" : "暂无信访件。");
    $("pg-info").textContent = q.total ? "第 " + from + "–" + to + " 件" : "";
    $("pg-prev").disabled = q.page <= 0;
    $("pg-next").disabled = to >= q.total;
  }

  function hasFilter(f) { return !!(f.topic || f.department || f.legal_channel || f.needs_review || f.has_repeats); }

  // 诉访分离: a channel other than 信访 is always shown, with its reason and the body it points to.
  function channelBadge(c) {
    if (!c || c.label === "信访") return null;
    return el("span", { class: "badge channel", "data-testid": "channel-badge",
      title: (c.reason || "") + (c.body ? "；" + c.body : ""), text: c.label });
  }

  function firstWords(t) { t = (t || "").replace(/\s+/g, " "); return t.length > 40 ? t.slice(0, 40) + "…" : t || "（无标题）"; }

  function fillDatalist(id, set) {
    var dl = clear($(id));
    Array.from(set).sort().forEach(function (v) { dl.appendChild(el("option", { value: v })); });
  }

  function moveQueueSel(delta) {
    var q = state.queue;
    if (!q.items.length) return;
    var f = Object.assign({}, q.filters);
    // j on the last row / k on the first one turn the page
    if (delta > 0 && q.sel === q.items.length - 1 && !$("pg-next").disabled) {
      q.sel = 0; f.page = (f.page || 0) + 1; location.hash = queueHash(f); return;
    }
    if (delta < 0 && q.sel === 0 && (f.page || 0) > 0) {
      q.sel = PAGE_SIZE - 1; f.page -= 1; location.hash = queueHash(f); return;
    }
    q.sel = Math.max(0, Math.min(q.items.length - 1, q.sel + delta));
    Array.from($("queue-list").children).forEach(function (li, i) {
      li.classList.toggle("sel", i === q.sel);
      li.setAttribute("aria-selected", i === q.sel ? "true" : "false");
      if (i === q.sel) {
        // focus follows the selection, so Enter opens it even after a button had the focus
        li.querySelector("a.row-title").focus({ preventScroll: true });
        li.scrollIntoView({ block: "nearest" });
      }
    });
  }

  function openPetition(id) { location.hash = "#/p/" + encodeURIComponent(id); }

  /* ------------------------------------------------------------------ petition view */
  async function loadPetition(pid, cid) {
    var same = state.pid === pid && state.petition;
    showView("petition");
    if (!same) {
      state.pid = pid; state.petition = null; state.cands = []; state.cur = -1; state.feedback = [];
      $("petition-body").hidden = true; $("petition-error").hidden = true;
      try {
        var results = await Promise.all([
          api("/v1/petitions/" + encodeURIComponent(pid)),
          api("/v1/petitions/" + encodeURIComponent(pid) + "/repeats?k=" + REPEAT_K).catch(function (e) { return e; }),
          loadFeedback(pid),
        ]);
        if (state.pid !== pid) return;
        state.petition = results[0];
        if (results[1] instanceof ApiError) {
          if (results[1].status === 401 || results[1].status === 403) throw results[1];
          state.cands = []; $("cand-status").textContent = "疑似重复件未能加载：" + results[1].message;
        } else {
          state.cands = candidatesOf(results[1]);
          $("cand-status").textContent = state.cands.length ? "" : "系统未发现疑似重复件。";
        }
        hideBanner();
      } catch (err) {
        if (state.pid !== pid) return;
        if (err instanceof ApiError && err.status === 404) {
          showPetitionError("该信访件（编号 " + pid + "）不存在或已被删除（可能已按数据保留要求删除）。");
          return;
        }
        if (!handleError(err, function () { state.pid = null; loadPetition(pid, cid); })) {
          showPetitionError(err.message || "信访件未能加载。");
        }
        return;
      }
      renderPetition();
      loadMatter(pid);
    }
    var idx = cid ? state.cands.findIndex(function (c) { return c.id === cid; }) : -1;
    if (cid && idx < 0) {
      // A candidate linked directly (e.g. after reload) that the current list does not hold.
      state.cands.push({ id: cid, probability: null, similarity: null, reasons: [], is_repeat: null });
      idx = state.cands.length - 1;
      renderCands();
    }
    selectCand(idx);
  }

  /* ------------------------------------------------------------------ matters and hot issues */
  function day(t) { return t ? String(t).slice(0, 10) : "—"; }

  async function loadMatter(pid) {
    var box = $("p-matter");
    box.hidden = true; clear(box);
    var m;
    try { m = await api("/v1/petitions/" + encodeURIComponent(pid) + "/matter"); } catch (e) { return; }
    if (state.pid !== pid) return;
    box.appendChild(el("strong", { text: "所属事项 " + m.id }));
    box.appendChild(document.createTextNode("：" + m.size + " 件，" + m.petitioners + " 位信访人，" +
      day(m.first) + " 至 " + day(m.last) + (m.status === "resolved" ? "（已化解）" : "")));
    var others = m.members.filter(function (x) { return x.id !== pid; }).slice(0, 8);
    if (others.length) {
      var ul = el("ul", { class: "matter-members" });
      others.forEach(function (x) {
        ul.appendChild(el("li", {}, [el("a", { href: "#/p/" + encodeURIComponent(pid) + "/c/" + encodeURIComponent(x.id),
          text: firstWords(x.title) }), " " + day(x.received_at)]));
      });
      box.appendChild(ul);
    }
    box.hidden = false;
  }

  /* One SVG row: a dot per member petition on the window's time axis. */
  function timeline(members, lo, hi) {
    var NS = "http://www.w3.org/2000/svg", W = 320, H = 24;
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H); svg.setAttribute("class", "timeline");
    svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "留言时间分布");
    var axis = document.createElementNS(NS, "line");
    axis.setAttribute("x1", 4); axis.setAttribute("x2", W - 4); axis.setAttribute("y1", H / 2); axis.setAttribute("y2", H / 2);
    svg.appendChild(axis);
    var span = Math.max(hi - lo, 1);
    members.forEach(function (x) {
      var t = Date.parse(String(x.time || "").replace(" ", "T"));
      if (!isFinite(t)) return;
      var c = document.createElementNS(NS, "circle");
      c.setAttribute("cx", 4 + (W - 8) * (t - lo) / span); c.setAttribute("cy", H / 2); c.setAttribute("r", 3);
      var title = document.createElementNS(NS, "title"); title.textContent = x.time; c.appendChild(title);
      svg.appendChild(c);
    });
    return svg;
  }

  async function loadHot(f) {
    showView("hot");
    $("h-since").value = f.since || ""; $("h-until").value = f.until || ""; $("h-juris").value = f.jurisdiction || "";
    var p = new URLSearchParams({ limit: "20" });
    if (f.since) p.set("since", f.since + "T00:00:00");
    if (f.until) p.set("until", f.until + "T23:59:59");
    if (f.jurisdiction) p.set("jurisdiction", f.jurisdiction);
    $("hot-status").textContent = "加载中…";
    var list = clear($("hot-list"));
    var body;
    try { body = await api("/v1/hot-issues?" + p.toString()); } catch (err) {
      $("hot-status").textContent = "";
      handleError(err, function () { loadHot(f); });
      return;
    }
    $("hot-status").textContent = body.items.length ? "" : "该时间范围内没有信访事项。";
    var times = [];
    body.items.forEach(function (i) { i.members.forEach(function (x) { var t = Date.parse(String(x.time || "").replace(" ", "T")); if (isFinite(t)) times.push(t); }); });
    var lo = Math.min.apply(null, times.length ? times : [0]), hi = Math.max.apply(null, times.length ? times : [1]);
    body.items.forEach(function (i) {
      var terms = el("ul", { class: "heat-terms" });
      Object.keys(i.terms).forEach(function (k) {
        var t = i.terms[k];
        terms.appendChild(el("li", { title: "权重 " + t.weight }, [el("b", { text: t.points.toFixed(1) }), " " + t.reason]));
      });
      var members = el("ol", { class: "hot-members" });
      i.members.slice(0, 10).forEach(function (x) {
        members.appendChild(el("li", {}, [el("a", { href: "#/p/" + encodeURIComponent(x.id), text: firstWords(x.title) }),
          " " + day(x.time)]));
      });
      list.appendChild(el("li", { class: "card hot-issue", "data-matter": i.matter }, [
        el("div", { class: "hot-head" }, [el("span", { class: "rank", text: "#" + i.rank }),
          el("span", { class: "heat", text: "热度 " + i.heat.toFixed(1) }),
          el("span", { class: "desc", text: i.description || "（无标题）" })]),
        el("div", { class: "meta muted", text: i.place + " · " + i.size + " 件 · " + day(i.first) + " 至 " + day(i.last) }),
        timeline(i.members, lo, hi), terms, members]));
    });
  }

  async function loadFeedback(pid) {
    try {
      var body = await api("/v1/petitions/" + encodeURIComponent(pid) + "/feedback");
      state.feedback = feedbackOf(body);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) throw err;
      if (!(err instanceof ApiError && err.status === 404)) {
        showBanner("已记录的判断未能加载：" + err.message, function () { loadFeedback(pid).then(renderAll); });
      }
    }
  }

  function renderAll() { if (state.petition) { renderLabels(); renderCands(); renderCompare(); } }

  function showPetitionError(msg) {
    $("petition-body").hidden = true;
    var box = clear($("petition-error"));
    box.appendChild(el("p", { text: msg }));
    box.appendChild(el("a", { class: "button primary", href: "#/queue", text: "返回列表" }));
    box.hidden = false;
  }

  function renderPetition() {
    var p = state.petition;
    $("petition-error").hidden = true;
    $("petition-body").hidden = false;
    $("p-title").textContent = p.title || "（无标题）";
    var meta = clear($("p-meta"));
    meta.appendChild(el("span", { text: "编号 " + p.id }));
    meta.appendChild(el("span", { text: "收件时间 " + fmtTime(whenOf(p)) }));
    if (p.petitioner) meta.appendChild(el("span", { text: "信访人 " + p.petitioner }));
    if (p.channel) meta.appendChild(el("span", { text: "渠道 " + p.channel }));
    if (needsReview(p)) meta.appendChild(el("span", { class: "badge review", text: "待人工复核" }));
    $("a-id").textContent = "编号 " + p.id;
    renderLabels();
    renderCands();
  }

  var TASK_NAMES = { topic: "主题", department: "责任部门", channel: "处理渠道" };
  var TASK_KEYS = { topic: "e", department: "d", channel: "c" };
  var TASK_LISTS = { topic: "dl-topics", department: "dl-depts", channel: "dl-channels" };

  function renderLabels() {
    ["topic", "department", "channel"].forEach(function (task) {
      var box = clear($("lb-" + task));
      var l = labelOf(state.petition, task);
      var corr = correctionFor(task);
      box.appendChild(el("div", { class: "lb-head" }, [
        el("span", { class: "lb-name", text: TASK_NAMES[task] }),
        el("button", { type: "button", class: "ghost small", id: "edit-" + task,
          onclick: function () { startEdit(task); } }, ["更正 ", el("kbd", { text: TASK_KEYS[task] })]),
      ]));
      var main = el("div", { class: "lb-main" });
      if (corr) {
        main.appendChild(el("span", { class: "lb-value corrected", "data-testid": task + "-corrected", text: corr.label }));
        main.appendChild(el("span", { class: "recorded", text: "✓ 已更正（" + fmtWho(corr) + "）" }));
        if (l) main.appendChild(el("div", { class: "muted small", text: "模型原判：" + l.label + " " + pct(l.score) }));
      } else if (l) {
        main.appendChild(el("span", { class: "lb-value", text: labelText(l) }));
        main.appendChild(el("span", { class: "conf big" + (l.score !== null && l.score < 0.5 ? " low" : ""), text: "置信度 " + pct(l.score) }));
      } else {
        main.appendChild(el("span", { class: "lb-value muted", text: "未分类" }));
      }
      box.appendChild(main);
      if (l && task === "channel") {
        box.appendChild(el("div", { class: "channel-why small", "data-testid": "channel-reason", text: l.reason || "" }));
        if (l.procedure) box.appendChild(el("div", { class: "muted small", "data-testid": "channel-procedure",
          text: l.procedure + (l.body ? "（" + l.body + "）" : "") }));
      }
      if (l && l.top.length) {
        var alts = l.top.filter(function (t) { return t.label !== l.label && !(corr && corr.label === t.label); }).slice(0, 3);
        if (alts.length) {
          box.appendChild(el("div", { class: "alts small" }, [el("span", { class: "muted", text: "其他可能：" })].concat(
            alts.map(function (t) {
              return el("button", { type: "button", class: "alt", title: "更正为“" + t.label + "”",
                onclick: function () { submitCorrection(task, t.label); } }, [t.label + " ", el("span", { class: "muted", text: pct(t.score) })]);
            }))));
        }
      }
      var form = el("form", { class: "edit-form", id: "form-" + task, hidden: "hidden" }, [
        el("input", { id: "input-" + task, list: TASK_LISTS[task], "aria-label": "更正" + TASK_NAMES[task],
          placeholder: "输入正确的" + TASK_NAMES[task] + "，Enter 提交" }),
        el("button", { type: "submit", class: "primary small", text: "提交更正" }),
        el("button", { type: "button", class: "ghost small", text: "取消", onclick: function () { cancelEdit(task); } }),
      ]);
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var v = $("input-" + task).value.trim();
        if (v) submitCorrection(task, v);
      });
      box.appendChild(form);
      if (l && task !== "channel") { (task === "topic" ? state.knownTopics : state.knownDepts).add(l.label); l.top.forEach(function (t) {
        (task === "topic" ? state.knownTopics : state.knownDepts).add(t.label); }); }
    });
    fillDatalist("dl-topics", state.knownTopics);
    fillDatalist("dl-depts", state.knownDepts);
  }

  function noteWho(fb) {
    if (fb && fb.who && !sessionStorage.getItem(NAME_STORE)) {
      sessionStorage.setItem(NAME_STORE, fb.who);
      $("who").textContent = "已登录（办案人员：" + fb.who + "）";
    }
  }

  function fmtWho(f) { return (f.who ? f.who + " · " : "") + fmtTime(f.created_at); }

  function startEdit(task) {
    var form = $("form-" + task);
    if (!form) return;
    form.hidden = false;
    var input = $("input-" + task);
    var corr = correctionFor(task), l = labelOf(state.petition, task);
    input.value = corr ? corr.label : (l ? l.label : "");
    input.focus(); input.select();
  }

  function cancelEdit(task) { var f = $("form-" + task); if (f) f.hidden = true; }

  async function submitCorrection(task, label) {
    var pid = state.pid;
    try {
      noteWho(await api("/v1/petitions/" + encodeURIComponent(pid) + "/feedback", {
        method: "POST", body: { kind: task + "_correction", label: label },
      }));
      await loadFeedback(pid);
      if (state.pid !== pid) return;
      renderLabels();
      flash("已记录：" + TASK_NAMES[task] + "更正为“" + label + "”");
    } catch (err) {
      if (err.status === 404) { showPetitionError("该信访件已被删除，更正未能保存。"); return; }
      handleError(err, function () { submitCorrection(task, label); });
    }
  }

  function candLabel(d) {
    if (!d) return null;
    return d.kind === "repeat_confirm" ? { text: "已确认：是重复", cls: "yes" } : { text: "已判定：不是重复", cls: "no" };
  }

  function renderCands() {
    var list = clear($("cand-list"));
    state.cands.forEach(function (c, i) {
      var dec = candLabel(decisionFor(c.id));
      var o = state.others[c.id];
      var li = el("li", { class: "cand" + (i === state.cur ? " sel" : "") + (c.is_repeat === false ? " unlikely" : ""),
        "data-id": c.id, title: c.is_repeat === false ? "低于系统的重复判定阈值" : null }, [
        el("a", { href: "#/p/" + encodeURIComponent(state.pid) + "/c/" + encodeURIComponent(c.id) }, [
          el("div", { class: "cand-top" }, [
            el("span", { class: "prob", text: c.probability !== null ? "重复概率 " + pct(c.probability) : "概率未知" }),
            el("span", { class: "muted small", text: "编号 " + c.id }),
          ]),
          el("div", { class: "bar" }, [el("span", { width: Math.round((c.probability || 0) * 100) + "%" })]),
          o && o.title ? el("div", { class: "cand-title", text: o.title }) : null,
          el("div", { class: "reasons small" }, reasonChips(c)),
          dec ? el("div", { class: "decision " + dec.cls, text: dec.text }) : el("div", { class: "decision pending muted", text: "待判断" }),
        ]),
      ]);
      list.appendChild(li);
    });
  }

  function reasonChips(c) {
    var rs = (c.reasons || []).slice();
    if (c.similarity !== null && !rs.some(function (r) { return /相似度/.test(r); })) rs.push("相似度 " + c.similarity.toFixed(2));
    return rs.map(function (r) {
      var cls = /同一信访人/.test(r) ? "who" : /同一地点|地点|小区|路/.test(r) ? "place" : /相似/.test(r) ? "sim" : "";
      return el("span", { class: "reason " + cls, text: r });
    });
  }

  async function selectCand(idx) {
    state.cur = idx;
    renderCands();
    renderCompare();
    if (idx < 0) return;
    var c = state.cands[idx];
    var li = $("cand-list").children[idx];
    if (li) li.scrollIntoView({ block: "nearest" });
    // On a narrow screen the comparison sits below the list: bring it into view.
    if (window.matchMedia("(max-width: 900px)").matches) $("compare").scrollIntoView({ block: "start" });
    if (!state.others[c.id]) {
      try {
        state.others[c.id] = await api("/v1/petitions/" + encodeURIComponent(c.id));
      } catch (err) {
        if (err.status === 404) state.others[c.id] = { missing: true };
        else { handleError(err, function () { selectCand(idx); }); return; }
      }
      if (state.cur === idx) { renderCands(); renderCompare(); }
    }
  }

  function renderText(node, title, text, merged, offset) {
    clear(node);
    var full = (title || "") + "\n" + (text || "");
    var split = (title || "").length;
    var h = el("div", { class: "ptitle" }), b = el("div", { class: "pbody" });
    [[h, 0, split], [b, split + 1, full.length]].forEach(function (part) {
      XfMatch.pieces(full, merged, part[1], part[2]).forEach(function (pc) {
        if (pc.id === null) part[0].appendChild(document.createTextNode(pc.text));
        else part[0].appendChild(el("mark", { "data-m": String(pc.id), text: pc.text }));
      });
    });
    if (title) node.appendChild(h);
    node.appendChild(b);
    return offset;
  }

  function renderCompare() {
    var p = state.petition;
    if (!p) return;
    var c = state.cur >= 0 ? state.cands[state.cur] : null;
    var o = c ? state.others[c.id] : null;
    $("cmp-bar").hidden = !c;
    $("col-b").hidden = !c;
    $("compare").classList.toggle("side", !!c);
    var note = $("shared-note");
    if (!c || !o || o.missing) {
      renderText($("a-text"), p.title, p.text, [], 0);
      if (c) {
        $("b-id").textContent = "编号 " + c.id;
        clear($("b-meta"));
        clear($("b-text")).appendChild(el("p", { class: o && o.missing ? "error" : "muted",
          text: o && o.missing ? "该信访件不存在或已被删除，无法比对。" : "正在加载…" }));
      }
      note.hidden = true;
    } else {
      var a = (p.title || "") + "\n" + (p.text || ""), b = (o.title || "") + "\n" + (o.text || "");
      var matches = XfMatch.sharedPassages(a, b, 4);
      renderText($("a-text"), p.title, p.text, XfMatch.intervals(matches, "a"), 0);
      renderText($("b-text"), o.title, o.text, XfMatch.intervals(matches, "b"), 0);
      $("b-id").textContent = "编号 " + c.id;
      var bm = clear($("b-meta"));
      bm.appendChild(el("span", { text: "收件时间 " + fmtTime(whenOf(o)) }));
      if (o.petitioner) bm.appendChild(el("span", { text: "信访人 " + o.petitioner }));
      var tl = labelOf(o, "topic");
      if (tl) bm.appendChild(el("span", { text: "主题 " + tl.label }));
      var chars = matches.reduce(function (s, m) { return s + m.len; }, 0);
      note.textContent = matches.length ? "黄色标记为两件共有的段落（连续相同 ≥4 字）：共 " + matches.length + " 处、" + chars +
        " 字。鼠标悬停可在另一侧找到对应段落。" : "两件没有连续 4 字以上的相同段落。";
      note.hidden = false;
    }
    if (c) {
      $("cmp-prob").textContent = (c.probability !== null ? "重复概率 " + pct(c.probability) : "重复概率未知") +
        "（第 " + (state.cur + 1) + "/" + state.cands.length + " 件）";
      clear($("cmp-reasons"));
      reasonChips(c).forEach(function (x) { $("cmp-reasons").appendChild(x); });
      var d = decisionFor(c.id), dl = candLabel(d), box = $("cmp-decision");
      box.className = "decision " + (dl ? dl.cls : "pending");
      box.textContent = dl ? dl.text + "（" + fmtWho(d) + "）" : "尚未判断";
      $("btn-yes").classList.toggle("on", !!(d && d.kind === "repeat_confirm"));
      $("btn-no").classList.toggle("on", !!(d && d.kind === "repeat_reject"));
    }
  }

  async function decide(confirm) {
    var c = state.cur >= 0 ? state.cands[state.cur] : null;
    if (!c) { flash("请先用 j / k 或点击选择一件疑似重复件。"); return; }
    var pid = state.pid, kind = confirm ? "repeat_confirm" : "repeat_reject";
    $("cmp-decision").textContent = "正在保存…";
    try {
      noteWho(await api("/v1/petitions/" + encodeURIComponent(pid) + "/feedback", {
        method: "POST", body: { kind: kind, target_id: c.id },
      }));
      await loadFeedback(pid);
      if (state.pid !== pid) return;
      renderCands(); renderCompare();
      flash("已记录：编号 " + c.id + (confirm ? " 是重复" : " 不是重复"));
    } catch (err) {
      renderCompare();
      if (err.status === 404) { flash("未能保存：本件或该疑似重复件已被删除。", true); return; }
      handleError(err, function () { decide(confirm); });
    }
  }

  function moveCand(delta) {
    if (!state.cands.length) return;
    var idx = state.cur < 0 ? (delta > 0 ? 0 : state.cands.length - 1) :
      Math.max(0, Math.min(state.cands.length - 1, state.cur + delta));
    location.hash = "#/p/" + encodeURIComponent(state.pid) + "/c/" + encodeURIComponent(state.cands[idx].id);
  }

  var flashTimer = null;
  function flash(msg, isErr) {
    var t = $("toast");
    if (!t) { t = el("div", { id: "toast", class: "toast", role: "status", "aria-live": "polite" }); document.body.appendChild(t); }
    t.textContent = msg; t.className = "toast show" + (isErr ? " err" : "");
    clearTimeout(flashTimer);
    flashTimer = setTimeout(function () { t.className = "toast"; }, 3500);
  }

  /* ------------------------------------------------------------------ routing and keys */
  function route() {
    var h = location.hash || "#/queue";
    if (!getKey()) {
      if (h !== "#/login" && h.indexOf("#/login") !== 0) sessionStorage.setItem("xinfang.next", h);
      showView("login");
      var msg = sessionStorage.getItem(MSG_STORE);
      $("login-error").textContent = msg || "";
      $("login-error").hidden = !msg;
      setTimeout(function () { $("key-input").focus(); }, 0);
      return;
    }
    var m = h.match(/^#\/p\/([^/]+)(?:\/c\/([^/]+))?$/);
    if (m) {
      loadPetition(decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : null);
      return;
    }
    if (h.indexOf("#/hot") === 0) { loadHot(parseQuery(h.split("?")[1])); return; }
    if (h.indexOf("#/login") === 0) { location.replace("#/queue"); return; }
    showView("queue");
    state.pid = null; state.petition = null;
    loadQueue(parseQuery(h.split("?")[1]));
  }

  function toggleHelp(show) {
    var hv = $("help");
    hv.hidden = show === undefined ? !hv.hidden : !show;
    if (!hv.hidden) $("help-close").focus();
  }

  /* Text entry swallows the shortcuts; a focused checkbox or button does not. */
  function isTyping(t) {
    if (!t || !t.tagName) return false;
    if (t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable) return true;
    return t.tagName === "INPUT" && !/^(checkbox|radio|button|submit|reset)$/.test(t.type);
  }

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target, typing = isTyping(t);
    var view = document.body.dataset.view;
    if (ev.key === "Escape") {
      if (!$("help").hidden) { toggleHelp(false); ev.preventDefault(); return; }
      if (typing) {
        var form = t.closest && t.closest(".edit-form");
        if (form) form.hidden = true;
        t.blur(); ev.preventDefault(); return;
      }
      if (view === "petition") { ev.preventDefault(); location.hash = queueHash(state.queue.filters || {}); }
      return;
    }
    if (typing || view === "login") return;
    if (!$("help").hidden && ev.key !== "?") return;
    var k = ev.key;
    if (k === "?") { toggleHelp(); ev.preventDefault(); return; }
    if (k === "/") {
      ev.preventDefault();
      if (view !== "queue") location.hash = queueHash(state.queue.filters || {});
      setTimeout(function () { $("f-topic").focus(); $("f-topic").select(); }, 0);
      return;
    }
    if (view === "queue") {
      if (k === "j") { moveQueueSel(1); ev.preventDefault(); }
      else if (k === "k") { moveQueueSel(-1); ev.preventDefault(); }
      else if (k === "Enter" || k === "o") {
        var p = state.queue.items[state.queue.sel];
        if (p && !(t && (t.tagName === "A" || t.tagName === "BUTTON"))) { openPetition(p.id); ev.preventDefault(); }
      }
      return;
    }
    if (view === "petition" && state.petition) {
      if (k === "j") { moveCand(1); ev.preventDefault(); }
      else if (k === "k") { moveCand(-1); ev.preventDefault(); }
      else if (k === "y") { decide(true); ev.preventDefault(); }
      else if (k === "n") { decide(false); ev.preventDefault(); }
      else if (k === "e") { startEdit("topic"); ev.preventDefault(); }
      else if (k === "d") { startEdit("department"); ev.preventDefault(); }
      else if (k === "c") { startEdit("channel"); ev.preventDefault(); }
    }
  }

  /* Hovering a shared passage lights up its counterpart on the other side. */
  function onHover(ev) {
    var m = ev.target.closest && ev.target.closest("mark[data-m]");
    document.querySelectorAll("mark.hot").forEach(function (x) { x.classList.remove("hot"); });
    if (!m) return;
    document.querySelectorAll('mark[data-m="' + m.dataset.m + '"]').forEach(function (x) { x.classList.add("hot"); });
  }

  function init() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout-btn").addEventListener("click", function () { signOut("您已退出。"); });
    $("help-btn").addEventListener("click", function () { toggleHelp(); });
    $("help-close").addEventListener("click", function () { toggleHelp(false); });
    $("help").addEventListener("click", function (ev) { if (ev.target === $("help")) toggleHelp(false); });
    $("banner-close").addEventListener("click", hideBanner);
    $("filters").addEventListener("submit", function (ev) {
      ev.preventDefault(); state.queue.sel = 0; location.hash = queueHash(readFilters());
    });
    ["f-review", "f-repeats"].forEach(function (id) {
      $(id).addEventListener("change", function () { state.queue.sel = 0; location.hash = queueHash(readFilters()); });
    });
    $("f-clear").addEventListener("click", function () { state.queue.sel = 0; location.hash = "#/queue"; });
    $("hot-filters").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var p = new URLSearchParams();
      [["since", "h-since"], ["until", "h-until"], ["jurisdiction", "h-juris"]].forEach(function (kv) {
        if ($(kv[1]).value) p.set(kv[0], $(kv[1]).value.trim());
      });
      location.hash = "#/hot" + (p.toString() ? "?" + p.toString() : "");
    });
    $("pg-prev").addEventListener("click", function () {
      state.queue.sel = 0;
      var f = Object.assign({}, state.queue.filters); f.page = Math.max(0, (f.page || 0) - 1); location.hash = queueHash(f);
    });
    $("pg-next").addEventListener("click", function () {
      state.queue.sel = 0;
      var f = Object.assign({}, state.queue.filters); f.page = (f.page || 0) + 1; location.hash = queueHash(f);
    });
    $("btn-yes").addEventListener("click", function () { decide(true); });
    $("btn-no").addEventListener("click", function () { decide(false); });
    document.addEventListener("keydown", onKey);
    document.addEventListener("mouseover", onHover);
    window.addEventListener("hashchange", route);
    window.addEventListener("online", function () { hideBanner(); route(); });
    window.addEventListener("offline", function () { showBanner("网络已断开：恢复连接后页面会自动刷新。", route); });
    route();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
