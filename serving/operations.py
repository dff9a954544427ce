"""What the routes do, as async functions over a Service: model work is awaited through the micro-batcher,
store and index work runs in the thread pool, so the event loop never blocks.

Order of a petition write: embed -> repeat search alongside classification -> commit the row (the
acknowledgement point) -> add to the index. A crash after the commit is repaired by the start-up reconcile.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import numpy as np
from starlette.concurrency import run_in_threadpool

from xinfang.errors import XinfangError
from xinfang.models.normalize import petition_text
from xinfang.models.repeat_ranking import fetch_size, score_candidates
from xinfang.serving import matters_ops
from xinfang.serving.errors import ApiError
from xinfang.serving.index_keeper import index_text
from xinfang.serving.schemas import PetitionCreate, PetitionInput, RepeatSearchRequest
from xinfang.serving.service import ModelsUnavailable, Service, limit_index_threads
from xinfang.serving.store import UnknownTarget, request_hash


def _time_str(value: datetime | None) -> str | None:
    """Naive-UTC text for the repeat features' time parser."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ", timespec="seconds")  # zero-padded years (strftime drops them before 1000)


def finder_petition(p: dict) -> dict:
    """A stored petition in the shape the repeat scorer reads."""
    return {"id": p["id"], "title": p.get("title"), "text": p.get("text"), "petitioner": p.get("petitioner"),
            "time": _time_str(p.get("received_at") or p.get("created_at"))}


def labels_of(result: dict) -> dict:
    return {"topic": result.get("topic"), "department": result.get("department"), "channel": result.get("channel"),
            "needs_review": bool(result["needs_review"])}


async def _model_call(svc: Service, kind: str, items: list) -> list:
    if svc.batcher is None:
        raise ApiError(503, "unavailable", "the service is starting")
    try:
        return await svc.batcher.submit(kind, items)
    except ModelsUnavailable as exc:
        raise ApiError(503, "models_unavailable", f"classification models are not loaded: {exc}") from exc
    except XinfangError as exc:  # e.g. DataError for a petition whose text normalises to nothing
        raise ApiError(422, "invalid_request", str(exc), field="text") from exc


def _check_normalizable(title: str | None, text: str, field: str) -> None:
    if not petition_text(title, text):
        raise ApiError(422, "invalid_request", f"{field}: nothing left after normalisation "
                       "(only markup, control or formatting characters)", field=field)


# ---------------------------------------------------------------------------- classify
async def classify(svc: Service, petitions: list[PetitionInput]) -> dict:
    items = []
    for i, p in enumerate(petitions):
        _check_normalizable(p.title, p.text, f"body.petitions.{i}.text")
        items.append({"id": p.id, "title": p.title, "text": p.text})
    pairs = await _model_call(svc, "classify", items)
    models = pairs[0][1]
    # All items of one request go through one batch, hence one model set.
    results = [{**labels_of(r), "id": items[i]["id"]} for i, (r, _) in enumerate(pairs)]
    return {"results": results, "models": models.versions()}


# ---------------------------------------------------------------------------- repeats
def score_hits(svc: Service, petitions: list[dict], vectors: np.ndarray, k: int) -> list[list[dict]]:
    """Search the index with precomputed vectors, re-rank and score the hits (as RepeatFinder.candidates_many does,
    without embedding again: the vector comes from the caller)."""
    if svc.scorer is None:
        raise ApiError(503, "unavailable", "repeat scorer not loaded; see /readyz and the server log")
    own = [{p["id"]} if p.get("id") else set() for p in petitions]
    limit_index_threads(svc.config.index_threads)
    hits = svc.keeper.index.search(np.asarray(vectors, dtype=np.float32), fetch_size(k), own)
    ids = sorted({pid for row in hits for pid, _ in row})
    found = {pid: finder_petition(p) for pid, p in svc.store.get_petitions(ids).items()}
    # ids missing from `found` were deleted between search and lookup: score_candidates drops them
    return [score_candidates(petition, row, found, k, svc.scorer) for petition, row in zip(petitions, hits, strict=True)]


async def repeats_of(svc: Service, pid: str, k: int) -> list[dict]:
    stored = await run_in_threadpool(svc.store.get_petition, pid)
    if stored is None:
        raise ApiError(404, "not_found", f"no petition {pid!r}", field="id")
    petition = finder_petition(stored)
    try:
        vector = svc.keeper.index.vector(pid)
    except XinfangError:  # not indexed yet (reconcile pending): embed it now
        vector = (await _model_call(svc, "embed", [index_text(stored["title"], stored["text"])]))[0]
    return (await run_in_threadpool(score_hits, svc, [petition], vector.reshape(1, -1), k))[0]


async def search_repeats(svc: Service, req: RepeatSearchRequest) -> list[dict]:
    _check_normalizable(req.title, req.text, "body.text")
    vector = (await _model_call(svc, "embed", [index_text(req.title, req.text)]))[0]
    petition = {"id": None, "title": req.title, "text": req.text, "petitioner": req.petitioner,
                "time": _time_str(datetime.now(UTC))}
    return (await run_in_threadpool(score_hits, svc, [petition], vector.reshape(1, -1), req.k))[0]


# ---------------------------------------------------------------------------- petitions
def _replay(stored: dict, rhash: str) -> tuple[int, dict]:
    if stored["request_hash"] != rhash:
        raise ApiError(409, "conflict", f"petition {stored['id']!r} already exists with a different body",
                       field="id")
    return 200, stored["response"]


async def _no_repeats() -> list[list[dict]]:
    return [[]]


async def create_petition(svc: Service, req: PetitionCreate) -> tuple[int, dict]:
    """Store, classify, index; (201, answer) or, for an identical retry of a client id, (200, same answer)."""
    body = req.model_dump(mode="json")  # received_at in UTC, title/petitioner/channel stripped (schemas)
    body["text"] = req.text.strip()  # surrounding whitespace does not make another request
    rhash = request_hash(body)
    if req.id:
        stored = await run_in_threadpool(svc.store.get_petition_row, req.id)
        if stored is not None:
            return _replay(stored, rhash)
    _check_normalizable(req.title, req.text, "body.text")
    pid = req.id or uuid.uuid4().hex
    now = datetime.now(UTC)
    petition = {"id": pid, "title": req.title, "text": req.text, "petitioner": req.petitioner,
                "time": _time_str(req.received_at or now)}
    # Embed first, then search the index (thread pool: one thread, memory-bound) while the worker classifies.
    [vector] = await _model_call(svc, "embed", [index_text(req.title, req.text)])
    classified, hits = await asyncio.gather(
        _model_call(svc, "classify", [petition]),
        _no_repeats() if svc.scorer is None else
        run_in_threadpool(score_hits, svc, [petition], vector.reshape(1, -1), svc.config.repeat_k))
    [(result, models)] = classified
    repeats = hits[0]
    labels = labels_of(result)
    versions = models.versions()
    decision = await run_in_threadpool(matters_ops.decide, svc, repeats)
    answer = {"id": pid, "labels": labels, "repeats": repeats, "models": versions, "created_at": now.isoformat(),
              "matter": matters_ops.answer_part(pid, decision)}
    row = {
        "id": pid, "title": req.title, "text": req.text, "petitioner": req.petitioner,
        "received_at": req.received_at, "channel": req.channel,
        "text_hash": request_hash({"t": petition_text(req.title, req.text)}), "request_hash": rhash,
        "labels": labels, "topic": (labels["topic"] or {}).get("label"),
        "department": (labels["department"] or {}).get("label"),
        "needs_review": labels["needs_review"], "repeat_count": sum(1 for c in repeats if c["is_repeat"]),
        "models": versions, "response": answer, "created_at": now,
    }
    created, stored = await run_in_threadpool(svc.store.insert_petition, row,
                                              matters_ops.membership(pid, decision))
    if not created:  # a concurrent request with the same id won the race
        return _replay(stored, rhash)
    await run_in_threadpool(svc.keeper.add, pid, vector)
    svc.metrics.petitions_created.inc()
    return 201, answer


async def delete_petition(svc: Service, pid: str, who: str) -> None:
    if not await run_in_threadpool(svc.store.delete_petition, pid, who):
        raise ApiError(404, "not_found", f"no petition {pid!r}", field="id")
    await matters_ops.after_delete(svc, pid)
    await run_in_threadpool(svc.keeper.remove, pid)


async def add_feedback(svc: Service, pid: str, kind: str, target_id: str | None, label: str | None,
                       who: str) -> dict:
    if target_id is not None and target_id == pid:
        raise ApiError(422, "invalid_request", "target_id: a petition cannot be a repeat of itself",
                       field="body.target_id")
    await matters_ops.before_feedback(svc, pid, kind, target_id)
    try:
        row = await run_in_threadpool(svc.store.add_feedback, pid, kind, who, target_id, label)
    except UnknownTarget as exc:
        raise ApiError(422, "invalid_request", str(exc), field="body.target_id") from exc
    if row is None:
        raise ApiError(404, "not_found", f"no petition {pid!r}", field="id")
    await matters_ops.after_feedback(svc, pid, kind, target_id, who)
    return row
