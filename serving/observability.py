"""JSON-lines logs, Prometheus metrics and the ASGI middleware that records both, enforces the body limit,
adds the browser security headers and answers any unexpected error itself (500 with the request id, the
connection kept usable).

Access log lines carry request id, method, route template, status, timing, key name and petition ids --
never petition text, titles or petitioner names.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

access_log = logging.getLogger("xinfang.access")
log = logging.getLogger("xinfang.serving")
# HTML pages (the caseworker page, /docs) load only their own scripts and styles, are never framed and send no
# referrer; the caseworker's key lives in the page's sessionStorage.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                   (b"x-frame-options", b"DENY")]


def security_headers(headers: list[tuple[bytes, bytes]], page_csp: str = PAGE_CSP) -> list[tuple[bytes, bytes]]:
    """The response headers plus nosniff, Referrer-Policy, X-Frame-Options and a Content-Security-Policy;
    headers the app already set are kept."""
    present = {k.lower() for k, _ in headers}
    ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    # API answers (JSON, metrics text) get the strictest policy; pages, their assets and bodiless answers such as a
    # 304 revalidating a cached page keep the page's (a browser merges a 304's headers into the cached page)
    csp = API_CSP if ctype.startswith((b"application/json", b"text/plain")) else page_csp
    extra = [(k, v) for k, v in [*_COMMON_HEADERS, (b"content-security-policy", csp.encode())] if k not in present]
    return list(headers) + extra
_RID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


class Metrics:
    """The service's Prometheus metrics in their own registry (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("xinfang_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("xinfang_request_seconds", "HTTP request latency", ["route", "method"],
                                 buckets=(.005, .01, .02, .03, .05, .08, .1, .2, .5, 1, 2, 5, 10), registry=r)
        self.batch_size = Histogram("xinfang_batch_size", "Items per micro-batch", ["kind"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram("xinfang_batch_seconds", "Model time per micro-batch", ["kind"],
                                       buckets=(.005, .01, .02, .03, .05, .08, .1, .2, .5, 1, 2, 5), registry=r)
        self.model_info = Gauge("xinfang_model_info", "Served model versions (value 1)",
                                ["task", "name", "version", "runtime"], registry=r)
        self.index_size = Gauge("xinfang_index_size", "Vectors in the repeat index", registry=r)
        self.index_saves = Counter("xinfang_index_saves", "Index saves to disk", registry=r)
        self.petitions_created = Counter("xinfang_petitions_created", "Petitions stored", registry=r)
        self.reloads = Counter("xinfang_model_reloads", "Model reloads", ["result"], registry=r)
        self.registry_serving = Gauge("xinfang_registry_serving", "Registry versions in service (value 1)",
                                      ["task", "version"], registry=r)
        self.rollout_refused = Gauge("xinfang_rollout_refused", "Promoted versions this replica could not load "
                                     "(value 1; the previous ones stay in service)", ["task", "version"], registry=r)
        self.rollouts = Counter("xinfang_rollouts", "Promotions followed from the registry", ["result"], registry=r)
        self.rollout_seconds = Gauge("xinfang_rollout_last_seconds", "Load time of the last promotion followed",
                                     registry=r)
        self.auth_failures = Counter("xinfang_auth_failures", "Requests with an unknown or revoked API key",
                                     registry=r)
        self.auth_throttled = Counter("xinfang_auth_throttled", "Requests refused with 429 after too many failed "
                                      "authentications from their address", registry=r)

    def watch_feed(self, keeper) -> None:
        """The index's change-feed position and lag, read at scrape time."""
        r = self.registry
        for name, doc, fn in (
                ("xinfang_index_version", "Change-feed sequence number the index has applied up to", lambda: keeper.version),
                ("xinfang_feed_lag_changes", "Committed changes the index has not applied yet",
                 lambda: keeper.lag_changes),
                ("xinfang_feed_lag_seconds", "Seconds since the index was last caught up (0: caught up)",
                 keeper.lag_seconds),
                ("xinfang_feed_applied", "Changes applied since start", lambda: keeper.applied),
                ("xinfang_feed_embedded", "Petitions embedded here for want of a stored vector of this embedder",
                 lambda: keeper.embedded),
                ("xinfang_feed_gaps", "Sequence numbers awaited (transactions still committing)",
                 lambda: len(keeper.cursor.gaps)),
                ("xinfang_feed_tick_ms", "Milliseconds the last change-feed read took", lambda: keeper.last_tick_ms)):
            Gauge(name, doc, registry=r).set_function(fn)

    def on_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def set_models(self, info: dict, runtime: str) -> None:
        self.model_info.clear()
        for task, meta in info.items():
            if isinstance(meta, dict):
                self.model_info.labels(task, str(meta.get("name", "")), str(meta.get("version", "")), runtime).set(1)


    def set_registry(self, serving: dict[str, str], refused: dict | None = None) -> None:
        self.registry_serving.clear()
        for task, version in serving.items():
            self.registry_serving.labels(task, version).set(1)
        if refused is None:
            self.rollout_refused.clear()

    def on_rollout(self, result: str, seconds: float, refused: dict[str, str]) -> None:
        self.rollouts.labels(result).inc()
        self.rollout_seconds.set(seconds)
        self.rollout_refused.clear()
        for task, version in refused.items():
            self.rollout_refused.labels(task, version).set(1)


class ServiceMiddleware:
    """Pure ASGI middleware: request id, body size limit (413), access log line, request metrics."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _RID.match(rid) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status_holder = {"status": 500, "started": False}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"], status_holder["started"] = message["status"], True
                headers = list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]
                message["headers"] = security_headers(headers)
            await send(message)

        too_large = False
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_body
            except ValueError:
                too_large = False
        received = 0

        async def receive_wrapper() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, f"request body larger than {self.max_body} bytes")
            return message

        try:
            if too_large:
                await self._reject_413(send_wrapper, rid)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:  # anything no handler answered: logged (type and traceback) and answered here
            log.error("unhandled error (request %s): %s", rid, type(exc).__name__, exc_info=True)
            if not status_holder["started"]:
                await self._reject(send_wrapper, 500, "internal_error", "internal error; see the server log", rid)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or ("unmatched" if status_holder["status"] == 404 else "other")
            method = scope.get("method", "")
            seconds = time.perf_counter() - t0
            self.metrics.requests.labels(template, method, str(status_holder["status"])).inc()
            self.metrics.latency.labels(template, method).observe(seconds)
            access_log.info("request", extra={
                "request_id": rid, "method": method, "route": template, "status": status_holder["status"],
                "ms": round(seconds * 1000, 2), "key": state.get("key_name"),
                "petition_ids": state.get("petition_ids"),
            })

    async def _reject_413(self, send: Any, rid: str) -> None:
        await self._reject(send, 413, "payload_too_large", f"request body larger than {self.max_body} bytes", rid,
                           close=True)

    @staticmethod
    async def _reject(send: Any, status: int, error: str, message: str, rid: str, close: bool = False) -> None:
        body = json.dumps({"error": error, "message": message, "request_id": rid}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + ([(b"connection", b"close")] if close else [])})
        await send({"type": "http.response.body", "body": body})
