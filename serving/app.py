"""The FastAPI application: `create_app(settings)` wires the service, middleware, error handlers and routes.

`xinfang serve` hands its settings to each worker as the factory's argument (`functools.partial(create_app,
settings)`); `create_app()` alone reads the environment (`xinfang.settings.load_settings`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

import xinfang
from xinfang.errors import XinfangError
from xinfang.serving.config import LIMITS, ServiceConfig
from xinfang.serving.errors import install_handlers
from xinfang.serving.matters_routes import router as matters_router
from xinfang.serving.observability import PAGE_CSP, ServiceMiddleware, configure_json_logging
from xinfang.serving.routes import ops_router, v1
from xinfang.serving.service import Service
from xinfang.settings import Settings, load_settings

DESCRIPTION = """Classify Chinese petitions (信访) by topic and responsible department, store them, and find
earlier petitions about the same matter.

Every route under `/v1` and `/metrics` needs `Authorization: Bearer <key>` (create keys with
`xinfang keys create --role intake|caseworker|admin --name NAME`). Errors are `{"error", "message",
"fields": [{"field", "message"}], "request_id"}`.
"""


def matters_ensure(svc: Service) -> None:
    """Every stored petition in a matter (petitions stored before matters existed, or after a crash)."""
    from xinfang.serving.matters_ops import matters

    matters(svc).ensure_all()


def check_schema_limits(config: ServiceConfig) -> None:
    """The request schemas were built with `LIMITS` at import; other limits would not be enforced."""
    for name, env in (("max_batch", "XINFANG_MAX_BATCH"), ("max_text_chars", "XINFANG_MAX_TEXT_CHARS")):
        want, built = getattr(config.limits, name), getattr(LIMITS, name)
        if want != built:
            raise XinfangError(f"{env}: the request schemas of this process were built with {name}={built}, "
                               f"the settings ask for {want}; set the variable before the service starts")


def create_app(settings: Settings | ServiceConfig | None = None) -> FastAPI:
    """The app for `settings` (default: `load_settings()`, the environment)."""
    if settings is None:
        settings = load_settings()
    config = ServiceConfig.from_settings(settings) if isinstance(settings, Settings) else settings
    check_schema_limits(config)
    if config.log_level:
        configure_json_logging(getattr(logging, config.log_level, logging.INFO))
    svc = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(svc.start)
        await run_in_threadpool(matters_ensure, svc)
        try:
            yield
        finally:
            await run_in_threadpool(svc.stop)

    app = FastAPI(title="xinfang", version=xinfang.__version__ if hasattr(xinfang, "__version__") else "0",
                  description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    install_handlers(app)
    app.include_router(v1)
    app.include_router(matters_router)
    app.include_router(ops_router)
    ui_dir = Path(__file__).with_name("ui")
    if (ui_dir / "index.html").exists():  # the caseworker page (static files, no key needed to load them)
        app.mount("/ui", StaticFiles(directory=ui_dir, html=True), name="ui")

        @app.get("/ui", include_in_schema=False)
        def _ui_redirect() -> RedirectResponse:
            return RedirectResponse("/ui/")

    if config.docs:
        mount_docs(app)
    app.add_middleware(ServiceMiddleware, metrics=svc.metrics, max_body_bytes=config.limits.max_body_bytes)
    return app


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xinfang API</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script><script src="/docs/init.js"></script></body></html>
"""
DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null,
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
"""
# Swagger UI sets inline styles on its elements; scripts still come only from this origin.
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def mount_docs(app: FastAPI) -> bool:
    """Swagger UI at /docs with its assets from the swagger-ui-bundle package (never a CDN); False when the
    package is not installed (then there is no /docs)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        logging.getLogger("xinfang.serving").warning("swagger-ui-bundle not installed: no /docs")
        return False
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def _docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP})

    @app.get("/docs/init.js", include_in_schema=False)
    def _docs_init() -> Response:
        return Response(DOCS_INIT, media_type="text/javascript")

    return True
