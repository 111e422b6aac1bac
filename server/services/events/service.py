"""Reading the event log: a page from a cursor, or a wait until something the reader may see
arrives. Woken by the event bus (commits here, NOTIFY from other replicas); the periodic re-check
only covers a wake-up lost with a dropped connection, or rows held back behind an open transaction."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field
from sqlalchemy import Connection

from server.clock import Clock, to_iso
from server.domain.principal import Principal
from server.services.events.log import Event, EventBus, EventQuery, check_types, head_cursor, read_events
from server.store.database import Database

MAX_WAIT_S = 300
RECHECK_S = 1.0  # PostgreSQL: rows behind a still-open transaction show up once it ends


class EventView(BaseModel):
    cursor: str = Field(description="where this event sits in the log: pass it as after_cursor to read on")
    id: str
    type: str = Field(description="e.g. task.completed, agent.spawned, lock.granted, approval.requested")
    subject: str = Field(description="the id of the thing it happened to (task, agent, lock, run, approval, …)")
    at: str
    actor: str = Field(description="who caused it: a principal id, or system / reaper / supervisor")
    agent_id: str | None
    data: dict[str, object]

    @classmethod
    def of(cls, event: Event) -> EventView:
        return cls(
            cursor=event.cursor,
            id=event.id,
            type=event.type,
            subject=event.subject,
            at=to_iso(event.at_us) or "",
            actor=event.actor,
            agent_id=event.agent_id,
            data=event.data,
        )


class EventPage(BaseModel):
    events: list[EventView]
    next_cursor: str = Field(description="pass as after_cursor for the events after these (also when empty)")


class EventService:
    def __init__(self, db: Database, clock: Clock, bus: EventBus) -> None:
        self._db = db
        self._clock = clock
        self.bus = bus

    async def list(self, principal: Principal, query: EventQuery, wait_s: float = 0) -> EventPage:
        """Events after the cursor; with wait_s, wait up to that long for the first one."""
        query = EventQuery(tuple(check_types(query.types)), query.subject, query.after, query.limit)
        deadline = time.monotonic() + min(max(wait_s, 0), MAX_WAIT_S)
        while True:
            found, cursor = await self._db.read(read_events, query, principal)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or self.bus.closed:
                return EventPage(events=[EventView.of(e) for e in found], next_cursor=cursor)
            await self.bus.wait(min(remaining, RECHECK_S))

    async def head(self) -> str:
        return await self._db.read(self._head_tx)

    @staticmethod
    def _head_tx(conn: Connection) -> str:
        return head_cursor(conn)
