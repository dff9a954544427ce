"""Matters in the store: which matter each petition belongs to, cannot-links, merges and splits (all audited).

Three tables beside the petitions (defined in serving/tables.py, created by the store's migrations):
`matters` (id, status), `matter_members` (petition -> matter, with how it joined) and `matter_cannot_links`
(two petitions a caseworker said are not the same matter). A matter's facts (members, petitioners, first and
last dates, jurisdictions, topics, departments) are read from its members' petitions, so deleting a petition
keeps them consistent by construction.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import delete, func, insert, or_, select, update

from xinfang.models.matters import MATTER_PREFIX
from xinfang.serving.store import Store, StoreError, record_change
from xinfang.serving.tables import AuditEntry, CannotLink, Matter, MatterMember, Petition, utcnow

STATUSES = ("open", "resolved")


class MatterError(StoreError):
    """A matter operation that the rules refuse; `status` is the HTTP status, `ids` what it names."""

    def __init__(self, status: int, message: str, ids: list[str] | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.ids, self.field = status, ids or [], field


def _pair(x: str, y: str) -> tuple[str, str]:
    return (x, y) if x <= y else (y, x)


class MatterStore:
    """Matter operations over a `Store` (one short transaction per call)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------ reads
    def matter_of(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        with self.store.session() as s:
            rows = s.execute(select(MatterMember.petition_id, MatterMember.matter_id)
                             .where(MatterMember.petition_id.in_(list(ids))))
            return {r[0]: r[1] for r in rows}

    def blocked_matters(self, matter_id: str) -> set[str]:
        """Matters holding a petition cannot-linked with a member of `matter_id`."""
        with self.store.session() as s:
            return self._blocked(s, matter_id)

    def _members(self, s, matter_id: str) -> list[str]:
        return list(s.scalars(select(MatterMember.petition_id).where(MatterMember.matter_id == matter_id)))

    def _blocked(self, s, matter_id: str) -> set[str]:
        members = self._members(s, matter_id)
        if not members:
            return set()
        rows = s.execute(select(CannotLink.a, CannotLink.b).where(
            or_(CannotLink.a.in_(members), CannotLink.b.in_(members)))).all()
        others = {x for a, b in rows for x in (a, b)} - set(members)
        if not others:
            return set()
        return set(s.scalars(select(MatterMember.matter_id).where(MatterMember.petition_id.in_(others))))

    def _cannot_between(self, s, ma: str, mb: str) -> tuple[str, str] | None:
        a_members, b_members = set(self._members(s, ma)), set(self._members(s, mb))
        if not a_members or not b_members:
            return None
        rows = s.execute(select(CannotLink.a, CannotLink.b).where(
            or_(CannotLink.a.in_(a_members), CannotLink.b.in_(a_members)))).all()
        for a, b in rows:
            if (a in a_members and b in b_members) or (b in a_members and a in b_members):
                return a, b
        return None

    def get(self, matter_id: str) -> dict | None:
        """A matter with its members (petitions, oldest first) and what they add up to."""
        with self.store.session() as s:
            m = s.get(Matter, matter_id)
            if m is None:
                return None
            rows = s.execute(select(Petition, MatterMember).join(
                MatterMember, MatterMember.petition_id == Petition.id).where(MatterMember.matter_id == matter_id)
            ).all()
            return self._describe(m, rows)

    @staticmethod
    def _describe(m: Matter, rows) -> dict:
        from xinfang.models.router import extract_jurisdiction

        def when(p: Petition) -> datetime:
            return p.received_at or p.created_at

        rows = sorted(rows, key=lambda r: (when(r[0]), r[0].id))
        petitioners = {p.petitioner for p, _ in rows if p.petitioner}
        juris = Counter(j for j in (extract_jurisdiction(f"{p.title or ''} {p.text}") for p, _ in rows) if j)
        dates = [when(p) for p, _ in rows]
        return {
            "id": m.id, "status": m.status, "size": len(rows), "petitioners": len(petitioners),
            "first": min(dates) if dates else None, "last": max(dates) if dates else None,
            "jurisdictions": [j for j, _ in juris.most_common()],
            "topics": [t for t, _ in Counter(p.topic for p, _ in rows if p.topic).most_common()],
            "departments": [d for d, _ in Counter(p.department for p, _ in rows if p.department).most_common()],
            "members": [{"id": p.id, "title": p.title, "received_at": p.received_at, "petitioner": p.petitioner,
                         "via": mm.via, "probability": mm.probability, "reason": mm.reason} for p, mm in rows],
            "created_at": m.created_at,
            "updated_at": max([m.updated_at, *(mm.joined_at for _, mm in rows if mm.joined_at is not None)]),
        }

    def list(self, *, topic: str | None = None, department: str | None = None, since: datetime | None = None,
             until: datetime | None = None, status: str | None = None, min_size: int = 1, limit: int = 50,
             offset: int = 0) -> tuple[list[dict], int]:
        """Matters with at least one member petition matching the filters, most recently active first."""
        conds = []
        if topic is not None:
            conds.append(Petition.topic == topic)
        if department is not None:
            conds.append(Petition.department == department)
        if since is not None:
            conds.append(Petition.created_at >= since)
        if until is not None:
            conds.append(Petition.created_at < until)
        if status is not None:
            conds.append(Matter.status == status)
        size = func.count(Petition.id)
        last = func.max(Petition.created_at)
        q = (select(MatterMember.matter_id, size.label("n"), last.label("last"))
             .join(Petition, Petition.id == MatterMember.petition_id)
             .join(Matter, Matter.id == MatterMember.matter_id).where(*conds)
             .group_by(MatterMember.matter_id).having(size >= min_size))
        with self.store.session() as s:
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            page = s.execute(q.order_by(last.desc(), MatterMember.matter_id).limit(limit).offset(offset)).all()
        items = [self.get(r[0]) for r in page]
        return [i for i in items if i is not None], int(total)

    def petitions_with_matters(self, since: datetime | None = None, until: datetime | None = None,
                               topic: str | None = None, department: str | None = None) -> list[dict]:
        """Petitions (with their matter ids) for the hot-issue ranking: the matters of petitions that match the
        topic/department filters, all their members from `since` - window*1 on (the heat needs the previous
        window too)."""
        with self.store.session() as s:
            conds = []
            if topic is not None:
                conds.append(Petition.topic == topic)
            if department is not None:
                conds.append(Petition.department == department)
            wanted = None
            if conds:
                wanted = set(s.scalars(select(MatterMember.matter_id).join(
                    Petition, Petition.id == MatterMember.petition_id).where(*conds)))
            rows = s.execute(select(Petition, MatterMember.matter_id).join(
                MatterMember, MatterMember.petition_id == Petition.id)).all()
        out = []
        for p, mid in rows:
            if wanted is not None and mid not in wanted:
                continue
            t = p.received_at or p.created_at
            out.append({"id": p.id, "title": p.title, "text": p.text, "petitioner": p.petitioner,
                        "time": t.strftime("%Y-%m-%d %H:%M:%S"), "matter": mid, "topic": p.topic,
                        "department": p.department})
        return out

    # ------------------------------------------------------------------ writes
    def assign(self, pid: str, matter_id: str | None, via: str | None, probability: float | None,
               reason: str) -> str:
        """Put a stored petition into `matter_id` (or a new matter named after it when None or gone), in its
        own transaction; a petition that already has a matter keeps it."""
        with self.store.session() as s, s.begin():
            mm = s.get(MatterMember, pid)
            if mm is not None:
                return mm.matter_id
            mid = self.assign_in(s, pid, matter_id, via, probability, reason)
            record_change(s, "matter", mid)
            return mid

    @staticmethod
    def assign_in(s, pid: str, matter_id: str | None, via: str | None, probability: float | None,
                  reason: str) -> str:
        """The membership of a petition just inserted in the caller's transaction `s` (the intake adds it to
        the petition's own insert: `Store.insert_petition(row, also=...)`); a membership left over from a
        deleted petition of the same id is replaced. Plain statements, no ORM loads: it sits on the intake path."""
        now = utcnow()
        # a join writes only the membership (its joined_at is the matter's latest change, see _describe), not
        # the matter row: one page fewer to write and sync on every intake
        if matter_id is None or s.execute(select(Matter.id).where(Matter.id == matter_id)).first() is None:
            matter_id, via, probability = MATTER_PREFIX + pid, None, None
            if s.execute(select(Matter.id).where(Matter.id == matter_id)).first() is None:
                s.execute(insert(Matter).values(id=matter_id, status="open", created_at=now, updated_at=now))
        if s.execute(select(MatterMember.petition_id).where(MatterMember.petition_id == pid)).first() is not None:
            s.execute(delete(MatterMember).where(MatterMember.petition_id == pid))
        s.execute(insert(MatterMember).values(petition_id=pid, matter_id=matter_id, via=via, probability=probability,
                                              reason=reason, joined_at=now))
        return matter_id

    def ensure_all(self) -> int:
        """Give every stored petition without a matter its own one, drop memberships of deleted petitions and
        empty matters (start-up repair: petitions stored without the service, e.g. bulk loads or older stores, and
        a crash between a petition's delete and its membership's)."""
        with self.store.session() as s, s.begin():
            orphans = list(s.scalars(select(MatterMember.petition_id).where(
                MatterMember.petition_id.not_in(select(Petition.id)))))
            if orphans:
                s.execute(delete(MatterMember).where(MatterMember.petition_id.in_(orphans)))
            s.execute(delete(Matter).where(Matter.id.not_in(select(MatterMember.matter_id))))
            missing = list(s.scalars(select(Petition.id).where(Petition.id.not_in(select(MatterMember.petition_id)))))
        for pid in missing:
            self.assign(pid, None, None, None, "已有留言：单独成事项")
        return len(missing)

    def merge(self, keep: str, other: str, who: str, reason: str = "matter.merge") -> str:
        """Move every member of `other` into `keep` (audited); 409 naming both petitions on a cannot-link."""
        if keep == other:
            raise MatterError(422, f"cannot merge matter {keep!r} with itself", [keep], field="target")
        with self.store.session() as s, s.begin():
            for mid in (keep, other):
                if s.get(Matter, mid) is None:
                    raise MatterError(404, f"no matter {mid!r}", [mid])
            clash = self._cannot_between(s, keep, other)
            if clash:
                raise MatterError(409, f"petitions {clash[0]!r} and {clash[1]!r} were marked as different matters "
                                  "(repeat_reject); split or undo that first", list(clash))
            s.execute(update(MatterMember).where(MatterMember.matter_id == other).values(matter_id=keep))
            s.execute(delete(Matter).where(Matter.id == other))
            s.execute(update(Matter).where(Matter.id == keep).values(updated_at=utcnow()))
            s.add(AuditEntry(who=who, action=reason, object_ids=[keep, other]))
            record_change(s, "matter", keep)
            record_change(s, "matter", other)
        return keep

    def cannot_link(self, a: str, b: str, who: str) -> str | None:
        """Record that petitions a and b are different matters (audited). When they share a matter, `a` moves to
        a new matter of its own; returns that matter id (else None)."""
        x, y = _pair(a, b)
        moved = None
        with self.store.session() as s, s.begin():
            if s.get(CannotLink, (x, y)) is None:
                s.add(CannotLink(a=x, b=y, who=who))
            ma, mb = s.get(MatterMember, a), s.get(MatterMember, b)
            if ma is not None and mb is not None and ma.matter_id == mb.matter_id:
                moved = self._split_locked(s, ma.matter_id, [a])
            s.add(AuditEntry(who=who, action="matter.cannot_link", object_ids=[x, y] + ([moved] if moved else [])))
            record_change(s, "matter", moved or (ma.matter_id if ma is not None else MATTER_PREFIX + a))
        return moved

    def split(self, matter_id: str, petition_ids: list[str], who: str) -> str:
        """Move `petition_ids` out of `matter_id` into a new matter (audited); 422 when it would empty it."""
        with self.store.session() as s, s.begin():
            if s.get(Matter, matter_id) is None:
                raise MatterError(404, f"no matter {matter_id!r}", [matter_id])
            members = set(self._members(s, matter_id))
            strangers = [p for p in petition_ids if p not in members]
            if strangers:
                raise MatterError(422, f"petition {strangers[0]!r} is not a member of {matter_id!r}", strangers,
                                  field="petition_ids")
            if set(petition_ids) >= members:
                raise MatterError(422, f"splitting every petition out of {matter_id!r} would leave it empty",
                                  [matter_id], field="petition_ids")
            new = self._split_locked(s, matter_id, petition_ids)
            s.add(AuditEntry(who=who, action="matter.split", object_ids=[matter_id, new, *sorted(petition_ids)]))
            record_change(s, "matter", matter_id)
            record_change(s, "matter", new)
        return new

    def _split_locked(self, s, matter_id: str, petition_ids: list[str]) -> str:
        first = min(petition_ids)
        new = MATTER_PREFIX + first
        n = 1
        while s.get(Matter, new) is not None:
            n += 1
            new = f"{MATTER_PREFIX}{first}~{n}"
        s.add(Matter(id=new))
        s.flush()
        s.execute(update(MatterMember).where(MatterMember.petition_id.in_(petition_ids))
                  .values(matter_id=new, via=None, probability=None, reason="拆分"))
        s.execute(update(Matter).where(Matter.id == matter_id).values(updated_at=utcnow()))
        return new

    def set_status(self, matter_id: str, status: str, who: str) -> bool:
        if status not in STATUSES:
            raise MatterError(422, f"status must be one of {', '.join(STATUSES)}", field="status")
        with self.store.session() as s, s.begin():
            res = s.execute(update(Matter).where(Matter.id == matter_id).values(status=status, updated_at=utcnow()))
            if not res.rowcount:
                return False
            s.add(AuditEntry(who=who, action=f"matter.{status}", object_ids=[matter_id]))
            record_change(s, "matter", matter_id)
        return True

    def remove_petition(self, pid: str) -> None:
        """After a petition is deleted: drop its membership, its cannot-links and its matter when empty."""
        with self.store.session() as s, s.begin():
            mm = s.get(MatterMember, pid)
            s.execute(delete(CannotLink).where(or_(CannotLink.a == pid, CannotLink.b == pid)))
            if mm is None:
                return
            mid = mm.matter_id
            record_change(s, "matter", mid)
            s.delete(mm)
            s.flush()
            if not self._members(s, mid):
                s.execute(delete(Matter).where(Matter.id == mid))
            else:
                s.execute(update(Matter).where(Matter.id == mid).values(updated_at=utcnow()))
