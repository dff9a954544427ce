"""HTTP routes for matters (信访事项) and hot issues (热点问题); included by serving/app.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from xinfang.serving import matters_ops as mops
from xinfang.serving.auth import Principal, require
from xinfang.serving.errors import ApiError
from xinfang.serving.matters_store import MatterError
from xinfang.serving.schemas import ID_PATTERN, ErrorBody

MatterIdPath = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:~\-]{0,139}$", description="Matter id")]
PetitionId = Annotated[str, Field(pattern=ID_PATTERN)]
router = APIRouter(prefix="/v1", tags=["matters"])


def _err(*codes: int) -> dict:
    return {c: {"model": ErrorBody} for c in codes}


class MatterMemberOut(BaseModel):
    id: str
    title: str | None
    received_at: datetime | None
    petitioner: str | None
    via: str | None = Field(description="The petition it joined through (None: opened the matter or split out)")
    probability: float | None
    reason: str | None


class MatterOut(BaseModel):
    id: str
    status: Literal["open", "resolved"]
    size: int
    petitioners: int
    first: datetime | None
    last: datetime | None
    jurisdictions: list[str]
    topics: list[str]
    departments: list[str]
    members: list[MatterMemberOut]
    created_at: datetime
    updated_at: datetime


class MatterPage(BaseModel):
    items: list[MatterOut]
    total: int
    limit: int
    offset: int


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MergeIn(_In):
    target: str = Field(min_length=1, max_length=140, description="The matter merged into this one")


class SplitIn(_In):
    petition_ids: list[PetitionId] = Field(min_length=1, max_length=1000)


class StatusIn(_In):
    status: Literal["open", "resolved"]


class HeatTerm(BaseModel):
    value: float
    weight: float
    points: float
    reason: str


class HotIssueMember(BaseModel):
    id: str
    title: str | None
    time: str | None


class HotIssue(BaseModel):
    rank: int
    matter: str
    heat: float
    terms: dict[str, HeatTerm]
    size: int
    first: str | None
    last: str | None
    place: str
    description: str
    members: list[HotIssueMember]


class HotIssues(BaseModel):
    items: list[HotIssue]


def _svc(request: Request):
    return request.app.state.service


def _get(svc, mid: str) -> dict:
    m = mops.matters(svc).get(mid)
    if m is None:
        raise ApiError(404, "not_found", f"no matter {mid!r}", field="id")
    return m


async def _call(fn, *args):
    try:
        return await run_in_threadpool(fn, *args)
    except MatterError as exc:
        raise mops.api_error(exc) from exc


@router.get("/matters/{mid}", response_model=MatterOut, responses=_err(401, 403, 404, 422),
            summary="A matter: members, petitioners, first and last dates, jurisdictions, topics, departments")
def get_matter(mid: MatterIdPath, request: Request, _: Principal = Depends(require("caseworker"))) -> dict:
    return _get(_svc(request), mid)


@router.get("/matters", response_model=MatterPage, responses=_err(401, 403, 422),
            summary="Matters with a member matching the filters, most recently active first")
def list_matters(
    request: Request,
    topic: Annotated[str | None, Query(max_length=200)] = None,
    department: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="A member stored at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="A member stored before (ISO 8601)")] = None,
    status: Literal["open", "resolved"] | None = None,
    min_size: Annotated[int, Query(ge=1, le=100_000, description="At least this many petitions")] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    _: Principal = Depends(require("caseworker")),
) -> dict:
    if since and until and since >= until:
        raise ApiError(422, "invalid_request", "since must be before until", field="since")
    items, total = mops.matters(_svc(request)).list(topic=topic, department=department, since=since, until=until,
                                                    status=status, min_size=min_size, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.post("/matters/{mid}/merge", response_model=MatterOut, responses=_err(401, 403, 404, 409, 422),
             summary="Merge another matter into this one (audited)")
async def merge_matters(mid: MatterIdPath, body: MergeIn, request: Request,
                        who: Principal = Depends(require("caseworker"))) -> dict:
    svc = _svc(request)
    await _call(mops.matters(svc).merge, mid, body.target, who.name)
    return _get(svc, mid)


@router.post("/matters/{mid}/split", response_model=MatterOut, status_code=201,
             responses=_err(401, 403, 404, 422), summary="Move petitions out into a new matter (audited)")
async def split_matter(mid: MatterIdPath, body: SplitIn, request: Request,
                       who: Principal = Depends(require("caseworker"))) -> dict:
    svc = _svc(request)
    new = await _call(mops.matters(svc).split, mid, body.petition_ids, who.name)
    return _get(svc, new)


@router.post("/matters/{mid}/status", response_model=MatterOut, responses=_err(401, 403, 404, 422),
             summary="Mark a matter open or resolved (audited)")
async def matter_status(mid: MatterIdPath, body: StatusIn, request: Request,
                        who: Principal = Depends(require("caseworker"))) -> dict:
    svc = _svc(request)
    if not await _call(mops.matters(svc).set_status, mid, body.status, who.name):
        raise ApiError(404, "not_found", f"no matter {mid!r}", field="id")
    return _get(svc, mid)


@router.get("/petitions/{pid}/matter", response_model=MatterOut, responses=_err(401, 403, 404, 422),
            summary="The matter a stored petition belongs to")
def petition_matter(pid: Annotated[str, PathParam(pattern=ID_PATTERN)], request: Request,
                    _: Principal = Depends(require("caseworker"))) -> dict:
    svc = _svc(request)
    mid = mops.matters(svc).matter_of([pid]).get(pid)
    if mid is None:
        raise ApiError(404, "not_found", f"no petition {pid!r}", field="id")
    return _get(svc, mid)


@router.get("/hot-issues", response_model=HotIssues, responses=_err(401, 403, 422), tags=["hot issues"],
            summary="Matters ranked by heat (热度指数) over a window, with each term's weight and reason")
def hot_issues(
    request: Request,
    since: Annotated[datetime | None, Query(description="Window start (ISO 8601); default the first petition")] = None,
    until: Annotated[datetime | None, Query(description="Window end (ISO 8601); default the last petition")] = None,
    jurisdiction: Annotated[str | None, Query(max_length=50)] = None,
    topic: Annotated[str | None, Query(max_length=200)] = None,
    department: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    _: Principal = Depends(require("caseworker")),
) -> dict:
    return {"items": mops.hot_issues(_svc(request), since, until, jurisdiction, topic, department, limit)}
