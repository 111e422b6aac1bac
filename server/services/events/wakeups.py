"""Wake-ups read from the event log: A2A streams following a task, lock requests waiting in a queue,
and everyone following the log (event_list waits, /events streams, the trigger loop).

In this process a committed write hands its events straight to `local` (no read). Other replicas'
events arrive as one PostgreSQL NOTIFY on the events channel; this replica then reads the log from
its own cursor and wakes what the new events concern. Events this replica wrote itself were
already announced, so they are skipped.

Claims are woken by their own NOTIFY (tasks.announce_ready): it carries a task's capabilities, so
exactly one matching claimer wakes, without waiting for the log's PostgreSQL horizon."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from server.errors import Unavailable
from server.services.events.log import EventBus, EventQuery, head_cursor, read_events
from server.services.signals import KeyedSignals
from server.store.database import Database

log = logging.getLogger("agentfleet.notify")
_LOCK_WAKERS = frozenset({"lock.granted", "lock.timed_out", "lock.cancelled"})
_BATCH = 500
_REMEMBERED = 4096


def task_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The tasks, workflow runs and inboxes these events moved: what A2A streams, waiting callers and
    inbox long-polls follow."""
    keys = []
    for row in rows:
        kind = row["type"]
        data = row.get("data") or {}
        if kind.startswith(("task.", "workflow.")):
            keys.append(row["subject"])
            if isinstance(run := data.get("workflow_run_id"), str):
                keys.append(run)  # a step's task moved: its run's view changed too
        elif kind.startswith("approval.") and isinstance(task := data.get("task_id"), str):
            keys.append(task)
        elif kind == "message.sent":
            keys.extend(f"inbox:{recipient}" for recipient in data.get("recipients") or ())
    return keys


def lock_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return [row["subject"] for row in rows if row["type"] in _LOCK_WAKERS]


class EventWakeups:
    def __init__(self, db: Database, bus: EventBus, task_changes: KeyedSignals, lock_signals: KeyedSignals) -> None:
        self._db = db
        self._bus = bus
        self._task_changes = task_changes
        self._lock_signals = lock_signals
        self._mine: deque[str] = deque(maxlen=_REMEMBERED)
        self._mine_set: set[str] = set()
        self._cursor: str | None = None
        self._reader: asyncio.Future[None] | None = None
        self._again = False

    def local(self, rows: list[dict[str, Any]]) -> None:
        """Events this process just committed (on the event loop)."""
        self._bus.wake()
        if self._task_changes.watched:
            self._task_changes.wake(task_keys(rows))
        if self._db.dialect == "postgresql":
            for row in rows:
                self._remember(row["id"])

    def _remember(self, event_id: str) -> None:
        if len(self._mine) == self._mine.maxlen:
            self._mine_set.discard(self._mine[0])
        self._mine.append(event_id)
        self._mine_set.add(event_id)

    def subscribed(self) -> None:
        """Listening (again): what happened meanwhile is found by each waiter's own re-check, and
        the log is followed from its head."""
        self._cursor = None
        self._bus.wake()
        self._task_changes.wake_all()
        self.notified()

    def notified(self) -> None:
        """Another replica announced events. A burst of notifications costs one read per batch, not
        one per notification: while a read is under way, a notification only asks for one more."""
        self._bus.wake()
        self._again = True
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        while self._again:
            self._again = False
            try:
                await self._read_new()
            except Unavailable as exc:  # the store blinked: the waiters' own re-checks cover it
                log.warning("could not read new events (%s)", exc)
                return

    async def _read_new(self) -> None:
        if self._cursor is None:
            self._cursor = await self._db.read(head_cursor)
            return
        while True:
            batch, upto = await self._db.read(read_events, EventQuery((), None, self._cursor, _BATCH), None)
            self._cursor = upto
            rows = [
                {"id": e.id, "type": e.type, "subject": e.subject, "data": e.data}
                for e in batch
                if e.id not in self._mine_set
            ]
            if self._task_changes.watched:
                self._task_changes.wake(task_keys(rows))
            self._lock_signals.wake(lock_keys(rows))
            if len(batch) < _BATCH:
                return
