"""One error shape for every 4xx/5xx answer ({error, message, fields?, request_id}) and its handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("xinfang.serving")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request",
          429: "too_many_requests", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.headers = status, error, message, field, headers


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, status: int, error: str, message: str,
                   fields: list[dict] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": error, "message": message, "request_id": _rid(request)}
    if fields:
        body["fields"] = fields
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _safe(msg: str) -> str:
    """Messages never echo input values (they may hold personal data); pydantic messages do not."""
    return msg.encode("utf-8", "replace").decode("utf-8")


def install_handlers(app: FastAPI) -> None:
    from xinfang.serving.store import StoreUnavailable

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}] if exc.field else None
        return error_response(request, exc.status, exc.error, exc.message, fields, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            msg = _safe(str(err.get("msg", "invalid")))
            if err.get("type") == "json_invalid":
                msg = "body is not valid JSON"
                loc = ("body",)
            fields.append({"field": _loc(loc) or "body", "message": msg})
        first = fields[0] if fields else {"field": "body", "message": "invalid request"}
        return error_response(request, 422, "invalid_request", f"{first['field']}: {first['message']}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # the JSON decoder gave up
            msg = _parse_failure(exc.__cause__)
            return error_response(request, 422, "invalid_request", f"body: {msg}", [{"field": "body", "message": msg}])
        code = _CODES.get(exc.status_code, "error")
        return error_response(request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))
    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("store unreachable: %s", type(exc.__cause__ or exc).__name__)
        msg = str(exc) if isinstance(exc, StoreUnavailable) else (
            "the store (database) is unreachable: nothing was written; retry (the service reconnects by itself)")
        return error_response(request, 503, "store_unavailable", msg, headers={"Retry-After": "2"})

    # Any other exception is answered by ServiceMiddleware (500 with the request id, connection kept).


def _parse_failure(cause: BaseException | None) -> str:
    """Why a body the JSON decoder could not read was refused, in words (never echoing the body)."""
    if isinstance(cause, RecursionError):
        return "body is nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "body is not valid UTF-8"
    if isinstance(cause, ValueError) and "digits" in str(cause):  # int() limit of Python (4300 digits)
        return "body has an integer with too many digits"
    return "body is not valid JSON (UTF-8)"
