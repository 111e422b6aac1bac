"""Storage for the A2A adapter's task records: opaque bytes per task id, owned by a principal.
The orchestrator task with the same id is the source of truth for state; this keeps what the
protocol needs besides (context id, history)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from server.clock import Clock
from server.domain.principal import Principal
from server.store.database import Database
from server.store.tables import a2a_tasks


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

    async def list(
        self, principal: Principal, context_id: str | None, limit: int, before: str | None
    ) -> list[A2ARecord]:
        return await self._db.read(self._list_tx, principal, context_id, limit, before)

    @staticmethod
    def _list_tx(
        conn: Connection, principal: Principal, context_id: str | None, limit: int, before: str | None
    ) -> list[A2ARecord]:
        query = select(a2a_tasks).order_by(a2a_tasks.c.id.desc()).limit(limit)
        if not principal.is_admin:
            query = query.where(a2a_tasks.c.owner == principal.id)
        if context_id:
            query = query.where(a2a_tasks.c.context_id == context_id)
        if before:
            query = query.where(a2a_tasks.c.id < before)
        return [A2ARecord(r.id, r.owner, r.context_id, r.body) for r in conn.execute(query)]

    async def delete(self, principal: Principal, task_id: str) -> None:
        await self._db.write(self._delete_tx, principal, task_id)

    @staticmethod
    def _delete_tx(conn: Connection, principal: Principal, task_id: str) -> None:
        query = delete(a2a_tasks).where(a2a_tasks.c.id == task_id)
        if not principal.is_admin:
            query = query.where(a2a_tasks.c.owner == principal.id)
        conn.execute(query)
