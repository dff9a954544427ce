"""HTTP routes (thin: validate, authorise, call serving.operations, shape the answer)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from xinfang.errors import XinfangError
from xinfang.serving import operations as ops
from xinfang.serving.auth import ROLES, Principal, require
from xinfang.serving.config import LIMITS
from xinfang.serving.errors import ApiError
from xinfang.serving.matters_ops import matters_of_petitions
from xinfang.serving.schemas import (
    ID_PATTERN,
    ClassifyRequest,
    ClassifyResponse,
    Deleted,
    ErrorBody,
    FeedbackIn,
    FeedbackList,
    FeedbackOut,
    Health,
    ModelsResponse,
    PetitionCreate,
    PetitionCreated,
    PetitionOut,
    PetitionPage,
    Ready,
    ReloadRequest,
    RepeatSearchRequest,
    RepeatsResponse,
    UTCDateTime,
)
from xinfang.serving.service import ReloadBusy, Service


def _err(*codes: int) -> dict:
    text = {401: "Missing, invalid or revoked API key", 403: "The key's role may not do this",
            404: "No such petition", 409: "Conflict", 413: "Request body too large",
            422: "Invalid request: the failing fields are named", 503: "Models or index not ready"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


AUTH = (401, 403, 422)
# The change-feed position of the index a repeat search read (also the answers' `index_version` field).
INDEX_VERSION_HEADER = "X-Xinfang-Index-Version"
PidPath = Annotated[str, PathParam(pattern=ID_PATTERN, description="Petition id")]

v1 = APIRouter(prefix="/v1")
ops_router = APIRouter()


def service(request: Request) -> Service:
    return request.app.state.service


def _note_ids(request: Request, ids: list[str | None]) -> None:
    request.state.petition_ids = [i for i in ids if i]


# ---------------------------------------------------------------------------- classify
@v1.post("/classify", response_model=ClassifyResponse, tags=["classify"], responses=_err(*AUTH, 413, 503),
         summary="Classify petitions (topic, department, channel, needs_review); nothing is stored")
async def classify(body: ClassifyRequest, request: Request,
                   _: Principal = Depends(require("intake"))) -> dict:
    _note_ids(request, [p.id for p in body.petitions])
    return await ops.classify(service(request), body.petitions)


# ---------------------------------------------------------------------------- petitions
@v1.post("/petitions", response_model=PetitionCreated, status_code=201, tags=["petitions"],
         responses={200: {"model": PetitionCreated, "description": "Identical retry: the original answer"},
                    **_err(*AUTH, 409, 413, 503)},
         summary="Store a petition, classify and index it, return its labels and likely repeats")
async def create_petition(body: PetitionCreate, request: Request, response: Response,
                          _: Principal = Depends(require("intake"))) -> dict:
    status, answer = await ops.create_petition(service(request), body)
    response.status_code = status
    if answer.get("index_version") is not None:
        response.headers[INDEX_VERSION_HEADER] = str(answer["index_version"])
    _note_ids(request, [answer["id"]])
    return answer


@v1.get("/petitions", response_model=PetitionPage, tags=["petitions"], responses=_err(*AUTH),
        summary="List stored petitions, newest first")
def list_petitions(
    request: Request,
    topic: Annotated[str | None, Query(max_length=200)] = None,
    department: Annotated[str | None, Query(max_length=200)] = None,
    legal_channel: Annotated[str | None, Query(max_length=200, description="Classified legal channel "
                                               "(labels.channel.label, e.g. 诉讼仲裁复议)")] = None,
    needs_review: bool | None = None,
    has_repeats: Annotated[bool | None, Query(description="Likely repeats were found at intake")] = None,
    since: Annotated[UTCDateTime | None, Query(description="Stored at or after (ISO 8601)")] = None,
    until: Annotated[UTCDateTime | None, Query(description="Stored before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    _: Principal = Depends(require("caseworker")),
) -> dict:
    items, total = service(request).store.list_petitions(
        topic=topic, department=department, needs_review=needs_review, has_repeats=has_repeats,
        since=since, until=until, limit=limit, offset=offset, legal_channel=legal_channel)
    _note_ids(request, [p["id"] for p in items])
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@v1.get("/petitions/{pid}", response_model=PetitionOut, tags=["petitions"], responses=_err(*AUTH, 404))
def get_petition(pid: PidPath, request: Request, _: Principal = Depends(require("caseworker"))) -> dict:
    _note_ids(request, [pid])
    row = service(request).store.get_petition(pid)
    if row is None:
        raise ApiError(404, "not_found", f"no petition {pid!r}", field="id")
    row["matter"] = matters_of_petitions(service(request), [pid]).get(pid)
    return row


@v1.delete("/petitions/{pid}", response_model=Deleted, tags=["petitions"], responses=_err(*AUTH, 404),
           summary="Delete a petition from the store and the index (data-retention requests)")
async def delete_petition(pid: PidPath, request: Request, who: Principal = Depends(require("admin"))) -> dict:
    _note_ids(request, [pid])
    await ops.delete_petition(service(request), pid, who.name)
    return {"id": pid, "deleted": True}


@v1.get("/petitions/{pid}/repeats", response_model=RepeatsResponse, tags=["repeats"],
        responses=_err(*AUTH, 404, 503), summary="Likely repeats of a stored petition")
async def petition_repeats(pid: PidPath, request: Request, response: Response,
                           k: Annotated[int, Query(ge=1, le=LIMITS.max_k)] = 5,
                           _: Principal = Depends(require("caseworker"))) -> dict:
    cands, version = await ops.repeats_of(service(request), pid, k)
    _note_ids(request, [pid] + [c["id"] for c in cands])
    response.headers[INDEX_VERSION_HEADER] = str(version)
    return {"id": pid, "candidates": cands, "index_version": version}


@v1.post("/repeats/search", response_model=RepeatsResponse, tags=["repeats"], responses=_err(*AUTH, 413, 503),
         summary="Likely repeats of a text (nothing stored)")
async def repeats_search(body: RepeatSearchRequest, request: Request, response: Response,
                         _: Principal = Depends(require("caseworker"))) -> dict:
    cands, version = await ops.search_repeats(service(request), body)
    _note_ids(request, [c["id"] for c in cands])
    response.headers[INDEX_VERSION_HEADER] = str(version)
    return {"id": None, "candidates": cands, "index_version": version}


@v1.post("/petitions/{pid}/feedback", response_model=FeedbackOut, status_code=201, tags=["feedback"],
         responses=_err(*AUTH, 404, 413), summary="Confirm/reject a suggested repeat, or correct topic/department/channel")
async def give_feedback(pid: PidPath, body: FeedbackIn, request: Request,
                        who: Principal = Depends(require("caseworker"))) -> dict:
    _note_ids(request, [pid, body.target_id])
    return await ops.add_feedback(service(request), pid, body.kind, body.target_id, body.label, who.name)


@v1.get("/petitions/{pid}/feedback", response_model=FeedbackList, tags=["feedback"], responses=_err(*AUTH),
        summary="Feedback given on a petition (or naming it as a repeat target), oldest first")
def list_feedback(pid: PidPath, request: Request, _: Principal = Depends(require("caseworker"))) -> dict:
    _note_ids(request, [pid])
    return {"items": service(request).store.list_feedback(petition_id=pid)}


# ---------------------------------------------------------------------------- models
def _models_body(svc: Service, admin: bool = True) -> dict:
    """What is served; server file paths only for admin keys."""
    m = svc.models
    if m is None:
        raise ApiError(503, "models_unavailable", f"classification models are not loaded: {svc.model_error}")
    emb = svc.embedder
    scorer = svc.scorer
    body = {
        "runtime": m.runtime, "models": m.info, "model_dirs": [str(p) for p in m.model_dirs],
        "embedder": {"encoder": str(emb.encoder_dir), "dim": emb.dim, "fingerprint": emb.fingerprint,
                     "prefix": emb.prefix, "max_length": emb.max_length},
        "repeat_scorer": ({"path": svc.scorer_path, "threshold": scorer.threshold,
                           "created_at": scorer.created_at} if scorer else None),
        "index": svc.keeper.index.info(), "loaded_at": m.loaded_at, "generation": m.generation,
        "registry": None if svc.registry is None else {
            "promoted": svc.promoted_seen or {}, "serving": svc.serving_versions(),
            "refused": svc.rollout_refused, "poll_seconds": svc.config.registry_poll_seconds},
    }
    return body if admin else redact_paths(body)


def _without_paths(value):
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "path"}
    return [_without_paths(v) for v in value] if isinstance(value, list) else value


_ABS_PATH = re.compile(r"(?<![\w.])/[^\s:'\"]+")


def redact_paths(body: dict) -> dict:
    """The /v1/models answer without server file paths (for intake and caseworker keys)."""
    out = _without_paths({**body, "model_dirs": []})
    out["embedder"].pop("encoder", None)
    refused = (out.get("registry") or {}).get("refused")
    if refused:
        refused["error"] = _ABS_PATH.sub("<path>", refused["error"])
    return out


@v1.get("/models", response_model=ModelsResponse, tags=["models"], responses=_err(*AUTH, 503),
        summary="Models being served (any role; file paths for admin keys only)")
def get_models(request: Request, who: Principal = Depends(require(*ROLES))) -> dict:
    return _models_body(service(request), admin=who.role == "admin")


@v1.post("/models/reload", response_model=ModelsResponse, tags=["models"], responses=_err(*AUTH, 409, 503),
         summary="Load bundles (default: the configured ones) and swap atomically; a failing bundle is refused")
async def reload_models(request: Request, body: ReloadRequest | None = None,
                        who: Principal = Depends(require("admin"))) -> dict:
    svc = service(request)
    dirs = [Path(p) for p in body.model_dirs] if body and body.model_dirs else None
    duty = Path(body.duty_list) if body and body.duty_list else None
    try:
        await run_in_threadpool(svc.reload, dirs, duty, who.name)
    except ReloadBusy as exc:
        raise ApiError(409, "reload_in_progress", str(exc)) from exc
    except XinfangError as exc:  # Service.reload turns every load failure into a ModelError
        refused = [str(p) for p in dirs or ["configured"]] + ([f"duty_list:{duty}"] if duty else [])
        await run_in_threadpool(svc.store.audit, who.name, "models.reload.refused", refused)
        raise ApiError(409, "model_refused", f"bundle refused, the previous models stay in service: {exc}",
                       field="body.model_dirs") from exc
    return _models_body(svc)


# ---------------------------------------------------------------------------- health and metrics
@ops_router.get("/healthz", response_model=Health, tags=["health"], summary="The process is alive (no key)")
def healthz() -> dict:
    return {"status": "ok"}


@ops_router.get("/readyz", response_model=Ready, tags=["health"],
                responses={503: {"model": Ready, "description": "Not ready"}},
                summary="Models, embedder, index and store are usable (no key)")
def readyz(request: Request, response: Response) -> dict:
    checks = service(request).ready_checks()
    ready = all(checks.values())
    response.status_code = 200 if ready else 503
    return {"ready": ready, "checks": checks}


@ops_router.get("/metrics", tags=["health"], responses={200: {"content": {"text/plain": {}},
                                                              "description": "Prometheus text format"},
                                                         **_err(401, 403)},
                response_class=Response, summary="Prometheus metrics (any role)")
def metrics(request: Request, _: Principal = Depends(require(*ROLES))) -> Response:
    return Response(generate_latest(service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
