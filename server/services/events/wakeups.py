"""Wake-ups from the event log: A2A streams and callers waiting on a task or run, inbox long-polls,
lock requests waiting in a queue, and everyone following the log (event_list waits, /events
streams, the trigger loop).

In this process a committed write hands its events straight to `local` (no read). Other replicas
learn of them from one PostgreSQL NOTIFY on the events channel, sent with the commit, whose payload
names the keys to wake (server/services/events/keys.py): a waiter there wakes at once and re-reads
what it waits for, without waiting for the log's horizon. Only when the keys do not fit in a
payload does a replica read the log from its cursor to find them.

Claims are woken by their own NOTIFY (tasks.announce_ready): it carries a task's capabilities, so
exactly one matching claimer wakes, without waiting for the log's PostgreSQL horizon."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from server.errors import Unavailable
from server.services.events.keys import lock_keys, task_keys
from server.services.events.log import EventBus, EventQuery, head_cursor, read_events
from server.services.signals import KeyedSignals
from server.store.database import Database

log = logging.getLogger("agentfleet.notify")
_BATCH = 500


class EventWakeups:
    def __init__(self, db: Database, bus: EventBus, task_changes: KeyedSignals, lock_signals: KeyedSignals) -> None:
        self._db = db
        self._bus = bus
        self._task_changes = task_changes
        self._lock_signals = lock_signals
        self._cursor: str | None = None
        self._reader: asyncio.Future[None] | None = None
        self._again = False

    def local(self, rows: list[dict[str, Any]]) -> None:
        """Events this process just committed (on the event loop)."""
        self._bus.wake()
        if self._task_changes.watched:
            self._task_changes.wake(task_keys(rows))

    def subscribed(self) -> None:
        """Listening (again): what happened meanwhile is found by each waiter's own re-check, and
        the log is followed from its head."""
        self._cursor = None
        self._bus.wake()
        self._task_changes.wake_all()
        self._read_log()

    def notified(self, payload: str) -> None:
        """A replica (this one too) announced events: wake the keys the notification names. Only
        when they did not fit is the log read for them."""
        self._bus.wake()
        try:
            body = json.loads(payload)
        except ValueError:
            body = {"more": 1}
        if not isinstance(body, dict) or "more" in body:
            self._read_log()
            return
        if self._task_changes.watched:
            self._task_changes.wake([str(key) for key in body.get("t") or ()])
        self._lock_signals.wake([str(key) for key in body.get("l") or ()])

    def _read_log(self) -> None:
        """A burst of these costs one read per batch: while a read is under way, another only asks
        for one more."""
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
            rows = [{"id": e.id, "type": e.type, "subject": e.subject, "data": e.data} for e in batch]
            if self._task_changes.watched:
                self._task_changes.wake(task_keys(rows))
            self._lock_signals.wake(lock_keys(rows))
            if len(batch) < _BATCH:
                return
