"""What the routes do, as async functions over a Service: model work is awaited through the micro-batcher,
store and index work runs in the thread pool, so the event loop never blocks.

Order of a petition write: embed -> repeat search alongside classification -> commit the row with its vector
and its change-feed row (the acknowledgement point) -> add to this replica's index. Other replicas (and this
one after a crash) index it from the change feed. Searches say which index version they read
(`index_version`: every change numbered at or below it was applied).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import numpy as np
from starlette.concurrency import run_in_threadpool

from xinfang.errors import XinfangError
from xinfang.models.petition import Petition
from xinfang.models.repeats import search_candidates
from xinfang.serving import matters_ops
from xinfang.serving.errors import ApiError
from xinfang.serving.schemas import PetitionCreate, PetitionInput, RepeatSearchRequest
from xinfang.serving.service import ModelsUnavailable, Service, limit_index_threads
from xinfang.serving.store import UnknownTarget, request_hash


def stored_lookup(svc: Service):
    """The store as the repeat search's lookup: ids -> Petition (received_at, else the time it was stored)."""
    def lookup(ids: list[str]) -> dict[str, Petition]:
        return {pid: Petition.from_record(p, default_time=p.get("created_at"))
                for pid, p in svc.store.get_petitions(ids).items()}
    return lookup


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


def _check_normalizable(petition: Petition, field: str) -> Petition:
    if not petition.normalized:
        raise ApiError(422, "invalid_request", f"{field}: nothing left after normalisation "
                       "(only markup, control or formatting characters)", field=field)
    return petition


# ---------------------------------------------------------------------------- classify
async def classify(svc: Service, petitions: list[PetitionInput]) -> dict:
    items = [_check_normalizable(Petition(p.id, p.title, p.text), f"body.petitions.{i}.text")
             for i, p in enumerate(petitions)]
    pairs = await _model_call(svc, "classify", items)
    models = pairs[0][1]
    # All items of one request go through one batch, hence one model set.
    results = [{**labels_of(r), "id": items[i].id} for i, (r, _) in enumerate(pairs)]
    return {"results": results, "models": models.versions()}


# ---------------------------------------------------------------------------- repeats
def score_hits(svc: Service, petitions: list[Petition], vectors: np.ndarray, k: int) -> list[list[dict]]:
    """The repeat search (models/repeats.search_candidates) over the service's index and store, with vectors
    the caller has already embedded."""
    if svc.scorer is None:
        raise ApiError(503, "unavailable", "repeat scorer not loaded; see /readyz and the server log")
    limit_index_threads(svc.config.index_threads)
    return search_candidates(svc.keeper.index, petitions, vectors, k, stored_lookup(svc), svc.scorer)


async def _embed(svc: Service, petition: Petition) -> np.ndarray:
    return (await _model_call(svc, "embed", [petition.normalized]))[0]


async def repeats_of(svc: Service, pid: str, k: int) -> tuple[list[dict], int]:
    stored = await run_in_threadpool(svc.store.get_petition, pid)
    if stored is None:
        raise ApiError(404, "not_found", f"no petition {pid!r}", field="id")
    petition = Petition.from_record(stored, default_time=stored.get("created_at"))
    try:
        vector = svc.keeper.index.vector(pid)
    except XinfangError:  # not indexed yet (reconcile pending): embed it now
        vector = await _embed(svc, petition)
    version = svc.keeper.version
    return (await run_in_threadpool(score_hits, svc, [petition], vector.reshape(1, -1), k))[0], version


async def search_repeats(svc: Service, req: RepeatSearchRequest) -> tuple[list[dict], int]:
    petition = _check_normalizable(Petition(None, req.title, req.text, req.petitioner, datetime.now(UTC)),
                                   "body.text")
    vector = await _embed(svc, petition)
    version = svc.keeper.version
    return (await run_in_threadpool(score_hits, svc, [petition], vector.reshape(1, -1), req.k))[0], version


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
    pid = req.id or uuid.uuid4().hex
    now = datetime.now(UTC)
    petition = _check_normalizable(Petition(pid, req.title, req.text, req.petitioner, req.received_at or now,
                                            req.channel), "body.text")
    # Embed first, then search the index (thread pool: one thread, memory-bound) while the worker classifies.
    vector = await _embed(svc, petition)
    version = svc.keeper.version
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
              "matter": matters_ops.answer_part(pid, decision), "index_version": version}
    row = {
        "id": pid, "title": req.title, "text": req.text, "petitioner": req.petitioner,
        "received_at": req.received_at, "channel": req.channel,
        "text_hash": request_hash({"t": petition.normalized}), "request_hash": rhash,
        "labels": labels, "topic": (labels["topic"] or {}).get("label"),
        "department": (labels["department"] or {}).get("label"),
        "needs_review": labels["needs_review"], "repeat_count": sum(1 for c in repeats if c["is_repeat"]),
        "models": versions, "response": answer, "created_at": now,
    }
    created, stored = await run_in_threadpool(svc.store.insert_petition, row,
                                              matters_ops.membership(pid, decision), vector,
                                              svc.embedder.fingerprint)
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
