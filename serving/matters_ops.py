"""What matters add to the service's operations: the join at intake, feedback acting on matters, deletes,
hot issues from the store. Called from serving/operations.py and serving/matters_routes.py."""

from __future__ import annotations

from datetime import datetime

from starlette.concurrency import run_in_threadpool

from xinfang.errors import DataError
from xinfang.models.matters import DEFAULT_RULE, JoinDecision, join_decision
from xinfang.serving.errors import ApiError
from xinfang.serving.matters_store import MatterError, MatterStore


def matters(svc) -> MatterStore:
    """The service's MatterStore (made on first use, over the service's store)."""
    ms = getattr(svc, "_matters", None)
    if ms is None or ms.store is not svc.store:
        ms = MatterStore(svc.store)
        svc._matters = ms
    return ms


def matters_of_petitions(svc, ids: list[str]) -> dict[str, str]:
    return matters(svc).matter_of(ids)


def api_error(exc: MatterError) -> ApiError:
    codes = {404: "not_found", 409: "conflict", 422: "invalid_request"}
    return ApiError(exc.status, codes.get(exc.status, "invalid_request"), str(exc), field=exc.field)


def threshold(svc) -> float:
    return DEFAULT_RULE.resolve(svc.scorer) if svc.scorer is not None else 1.0


def decide(svc, repeats: list[dict]) -> JoinDecision:
    """Which matter a new petition joins (models/matters.py `join_decision` over its repeat candidates)."""
    ms = matters(svc)
    return join_decision(repeats, ms.matter_of([c["id"] for c in repeats]), threshold(svc),
                         linkage=DEFAULT_RULE.linkage, same_writer_needs_name=DEFAULT_RULE.same_writer_needs_name,
                         different_names_apart=DEFAULT_RULE.different_names_apart)


def answer_part(pid: str, d: JoinDecision) -> dict:
    """The `matter` of the POST /v1/petitions answer: which matter, whether it was joined, through what."""
    from xinfang.models.matters import MATTER_PREFIX

    return {"id": d.matter or MATTER_PREFIX + pid, "joined": d.matter is not None, "via": d.via,
            "probability": d.probability, "reason": d.reason}


def membership(pid: str, d: JoinDecision):
    """The intake's membership as a `Store.insert_petition(row, also=...)` hook: written in the petition's own
    transaction."""
    def add(session) -> None:
        MatterStore.assign_in(session, pid, d.matter, d.via, d.probability, d.reason)
    return add


async def before_feedback(svc, pid: str, kind: str, target_id: str | None) -> None:
    """409 for a repeat_confirm that contradicts a cannot-link (nothing is stored then)."""
    if kind != "repeat_confirm" or not target_id:
        return
    ms = matters(svc)
    mof = await run_in_threadpool(ms.matter_of, [pid, target_id])
    if pid in mof and target_id in mof and mof[pid] != mof[target_id]:
        if mof[target_id] in await run_in_threadpool(ms.blocked_matters, mof[pid]):
            raise ApiError(409, "conflict", f"petitions {pid!r} and {target_id!r} are in matters marked as "
                           f"different ({mof[pid]!r}, {mof[target_id]!r}, repeat_reject); split first",
                           field="body.target_id")


async def after_feedback(svc, pid: str, kind: str, target_id: str | None, who: str) -> None:
    """repeat_confirm merges the two matters (into the older one); repeat_reject records a cannot-link."""
    if not target_id:
        return
    ms = matters(svc)
    if kind == "repeat_reject":
        await run_in_threadpool(ms.cannot_link, pid, target_id, who)
    elif kind == "repeat_confirm":
        mof = await run_in_threadpool(ms.matter_of, [pid, target_id])
        if pid in mof and target_id in mof and mof[pid] != mof[target_id]:
            keep, other = sorted((mof[target_id], mof[pid]))
            try:
                await run_in_threadpool(ms.merge, keep, other, who, "matter.merge")
            except MatterError as exc:
                raise api_error(exc) from exc


async def after_delete(svc, pid: str) -> None:
    await run_in_threadpool(matters(svc).remove_petition, pid)


def hot_issues(svc, since: datetime | None, until: datetime | None, jurisdiction: str | None,
               topic: str | None, department: str | None, limit: int) -> list[dict]:
    """The hot-issue ranking over the store's matters (models/hot_issues.py), filtered."""
    from xinfang.models.hot_issues import hot_issues as rank

    if since and until and since >= until:
        raise ApiError(422, "invalid_request", "since must be before until", field="since")
    rows = matters(svc).petitions_with_matters(since, until, topic, department)
    if not rows:
        return []
    naive = [t.replace(tzinfo=None) if t and t.tzinfo else t for t in (_utc(since), _utc(until))]
    try:
        issues = rank(rows, {r["id"]: r["matter"] for r in rows}, naive[0], naive[1])
    except DataError as exc:
        if "no petitions in the window" in str(exc):
            return []
        raise ApiError(422, "invalid_request", str(exc), field="since") from exc
    if jurisdiction:
        issues = [i for i in issues if jurisdiction in i["place"]]
    out = []
    for rank_, i in enumerate(issues[:limit], 1):
        out.append({**{k: v for k, v in i.items() if k != "members"}, "rank": rank_,
                    "members": [{"id": p["id"], "title": p.get("title"), "time": p.get("time")}
                                for p in i["members"]]})
    return out


def _utc(t: datetime | None) -> datetime | None:
    from datetime import UTC

    if t is None or t.tzinfo is None:
        return t
    return t.astimezone(UTC)
