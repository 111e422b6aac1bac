"""Storage for the A2A adapter's task records: opaque bytes per task id, owned by a principal.
The orchestrator task with the same id is the source of truth for state; this keeps what the
protocol needs besides (context id, history)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, or_, select, update

from server.clock import Clock
from server.domain.principal import Principal
from server.store.database import Database
from server.store.tables import a2a_tasks, tasks


@dataclass(frozen=True)
class RecordQuery:
    limit: int
    before: str | None = None  # the last id of the previous page
    context_id: str | None = None
    statuses: list[str] | None = None  # orchestrator statuses; None: any
    include_rejected: bool = False
    changed_after_us: int | None = None


@dataclass(frozen=True)
class A2ARecord:
    id: str
    owner: str
    context_id: str
    body: bytes


class A2ARecordService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def save(self, principal: Principal, task_id: str, context_id: str, body: bytes) -> None:
        await self._db.write(self._save_tx, principal, task_id, context_id, body)

    def _save_tx(self, conn: Connection, principal: Principal, task_id: str, context_id: str, body: bytes) -> None:
        now = self._clock.now_us()
        owner = conn.execute(select(a2a_tasks.c.owner).where(a2a_tasks.c.id == task_id)).scalar()
        if owner is None:
            conn.execute(
                a2a_tasks.insert().values(
                    id=task_id, owner=principal.id, context_id=context_id, body=body, created_at=now, updated_at=now
                )
            )
        elif owner == principal.id or principal.is_admin:
            conn.execute(update(a2a_tasks).where(a2a_tasks.c.id == task_id).values(body=body, updated_at=now))

    async def get(self, principal: Principal, task_id: str) -> A2ARecord | None:
        return await self._db.read(self._get_tx, principal, task_id)

    @staticmethod
    def _get_tx(conn: Connection, principal: Principal, task_id: str) -> A2ARecord | None:
        row = conn.execute(select(a2a_tasks).where(a2a_tasks.c.id == task_id)).first()
        if row is None or not (principal.is_admin or row.owner == principal.id):
            return None
        return A2ARecord(row.id, row.owner, row.context_id, row.body)

    async def list(self, principal: Principal, query: RecordQuery) -> tuple[list[A2ARecord], int]:
        """(one page, newest first; how many match in all)."""
        return await self._db.read(self._list_tx, principal, query)

    @staticmethod
    def _list_tx(conn: Connection, principal: Principal, query: RecordQuery) -> tuple[list[A2ARecord], int]:
        joined = a2a_tasks.outerjoin(tasks, tasks.c.id == a2a_tasks.c.id)
        where = []
        if not principal.is_admin:
            where.append(a2a_tasks.c.owner == principal.id)
        if query.context_id:
            where.append(a2a_tasks.c.context_id == query.context_id)
        if query.statuses is not None:
            # A record with no orchestrator task behind it was rejected at submit.
            rejected = [tasks.c.id.is_(None)] if query.include_rejected else []
            where.append(or_(tasks.c.status.in_(query.statuses), *rejected))
        if query.changed_after_us is not None:
            where.append(func.coalesce(tasks.c.updated_at, a2a_tasks.c.updated_at) > query.changed_after_us)
        total = conn.execute(select(func.count()).select_from(joined).where(*where)).scalar_one()
        page = select(a2a_tasks).select_from(joined).where(*where).order_by(a2a_tasks.c.id.desc()).limit(query.limit)
        if query.before:
            page = page.where(a2a_tasks.c.id < query.before)
        return [A2ARecord(r.id, r.owner, r.context_id, r.body) for r in conn.execute(page)], total
