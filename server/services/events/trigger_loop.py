"""Finding what is due: schedules whose time came, events that match, absences whose window ended.

Every replica runs this. Schedules are taken with `FOR UPDATE SKIP LOCKED` on PostgreSQL (replicas
share the due ones instead of queueing behind each other) and moved to their next due time in the
same transaction; the unique (trigger, occasion) row is what makes a due time fire once. Event and
absence triggers advance their cursor with a compare-and-set, so a batch another replica already
consumed is left alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update

from server.clock import MICROS, Clock, to_iso
from server.domain.principal import Principal
from server.domain.trigger import (
    MISFIRE_GRACE_S,
    AbsenceConfig,
    EventConfig,
    ScheduleConfig,
    TriggerKind,
    parse_filter,
)
from server.errors import FleetError, InvalidInput
from server.services.events.log import Event, EventQuery, read_events, type_matches
from server.services.events.trigger_views import ReplayResult, TriggerRunView
from server.services.events.triggers import TriggerService, owner_of
from server.store.database import Database
from server.store.tables import triggers

SCHEDULE_BATCH = 200
EVENT_BATCH = 500
_WATCHING = [TriggerKind.EVENT.value, TriggerKind.ABSENCE.value]


@dataclass(frozen=True)
class Watcher:
    id: str
    cursor: str


def _sees(owner: Principal, event: Event) -> bool:
    return owner.sees_all or owner.id in (event.actor, event.agent_id, event.owner)


def matching(row: Row[Any], batch: list[Event], since: str | None = None) -> list[Event]:
    """The events of `batch` past `since` (the trigger's cursor) that its types, filter and owner admit."""
    since = row.cursor if since is None else since
    config = EventConfig.model_validate(row.config) if row.kind == "event" else AbsenceConfig.model_validate(row.config)
    condition = parse_filter(config.filter)
    owner = owner_of(row)
    found = []
    for event in batch:
        if event.cursor <= since or not type_matches(event.type, config.event_types) or not _sees(owner, event):
            continue
        if isinstance(config, EventConfig) and event.depth >= config.max_depth:
            continue
        if condition is None or condition.evaluate({"event": event.as_scope()}):
            found.append(event)
    return found


class TriggerRunner:
    def __init__(self, db: Database, clock: Clock, service: TriggerService) -> None:
        self._db = db
        self._clock = clock
        self._service = service

    # -- schedules -----------------------------------------------------------------------------
    async def run_due_schedules(self) -> int:
        """Fire every schedule that is due; returns how many triggers were handled."""
        handled = 0
        if not await self._db.read(self._anything_due_tx):
            return 0  # the usual round: a read, not a turn at the write lock twice a second
        while True:
            batch = await self._db.write(self._due_tx)
            handled += batch
            if batch < SCHEDULE_BATCH:
                return handled

    def _anything_due_tx(self, conn: Connection) -> bool:
        due = select(triggers.c.id).where(
            triggers.c.kind == TriggerKind.SCHEDULE.value,
            triggers.c.next_due_at <= self._clock.now_us(),
            triggers.c.enabled,
        )
        return conn.execute(due.limit(1)).first() is not None

    def _due_tx(self, conn: Connection) -> int:
        now = self._clock.now_us()
        query = (
            select(triggers)
            .where(triggers.c.kind == TriggerKind.SCHEDULE.value, triggers.c.next_due_at <= now, triggers.c.enabled)
            .order_by(triggers.c.next_due_at)
            .limit(SCHEDULE_BATCH)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = conn.execute(query).all()
        for row in rows:
            self._fire_schedule(conn, row, now)
        return len(rows)

    def _fire_schedule(self, conn: Connection, row: Row[Any], now: int) -> None:
        schedule = ScheduleConfig.model_validate(row.config)
        dues: list[int] = []
        due = row.next_due_at
        while due <= now and len(dues) < schedule.catch_up_limit:
            dues.append(due)
            due = schedule.due_after(due, row.created_at)
        missed = [d for d in dues if now - d > MISFIRE_GRACE_S * MICROS]
        if schedule.catch_up == "skip":
            chosen = [d for d in dues if d not in missed][-1:]
        elif schedule.catch_up == "one":
            chosen = dues[-1:]
        else:
            chosen = dues
        skipped = [d for d in dues if d not in chosen]
        if skipped:
            first = to_iso(skipped[0])
            why = f"{len(skipped)} due time(s) from {first} missed while no replica ran (catch_up={schedule.catch_up})"
            self._service.record_skip(conn, row, f"missed:{skipped[0]}", "schedule", why)
        for when in chosen:
            occasion = f"due:{to_iso(when)}"
            going = self._service.still_running(conn, row.id) if schedule.overlap == "skip" else None
            if going is not None:
                self._service.record_skip(conn, row, occasion, "schedule", f"the previous run {going} is still going")
                continue
            self._service.fire_in(conn, row, occasion, "schedule", {"body": {"due_at": to_iso(when)}}, 0)
        conn.execute(
            update(triggers)
            .where(triggers.c.id == row.id, triggers.c.next_due_at == row.next_due_at)
            .values(next_due_at=schedule.due_after(now, row.created_at))
        )

    # -- events and absences -------------------------------------------------------------------
    async def watch_events(self) -> int:
        """Feed new events to event and absence triggers; fire absences whose window ended."""
        watchers = await self._db.read(self._watchers_tx)
        if not watchers:
            return 0
        start = min(w.cursor for w in watchers)
        batch, upto = await self._db.read(read_events, EventQuery((), None, start, EVENT_BATCH), None)
        complete = len(batch) < EVENT_BATCH
        fired = 0
        for watcher in watchers:
            if watcher.cursor < upto or complete:
                fired += await self._db.write(self._consume_tx, watcher, batch, upto, complete)
        return fired

    @staticmethod
    def _watchers_tx(conn: Connection) -> list[Watcher]:
        rows = conn.execute(
            select(triggers.c.id, triggers.c.cursor).where(triggers.c.kind.in_(_WATCHING), triggers.c.enabled)
        ).all()
        return [Watcher(row.id, row.cursor) for row in rows]

    def _consume_tx(self, conn: Connection, watcher: Watcher, batch: list[Event], upto: str, complete: bool) -> int:
        query = select(triggers).where(triggers.c.id == watcher.id, triggers.c.cursor == watcher.cursor)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = conn.execute(query).first()
        if row is None:
            return 0  # another replica consumed this batch, or the trigger changed
        now = self._clock.now_us()
        try:
            found = matching(row, batch)
        except FleetError:
            found = []  # a filter stored before a validation change: the trigger matches nothing
        fired = 0
        values: dict[str, Any] = {"cursor": max(upto, row.cursor)}
        if row.kind == TriggerKind.EVENT.value:
            for event in found:
                scope = {"event": event.as_scope()}
                fired += (
                    self._service.fire_in(conn, row, f"evt:{event.id}", "event", scope, event.depth + 1) is not None
                )
        else:
            within = AbsenceConfig.model_validate(row.config).within_s * MICROS
            window_end = row.next_due_at
            if found:
                window_end = max(window_end, max(e.at_us for e in found) + within)
            elif complete and window_end is not None and window_end <= now:
                body = {"window_ends_at": to_iso(window_end), "within_s": within // MICROS}
                fired += (
                    self._service.fire_in(conn, row, f"absent:{window_end}", "absence", {"body": body}, 0) is not None
                )
                window_end = now + within
            values["next_due_at"] = window_end
        conn.execute(update(triggers).where(triggers.c.id == row.id).values(values))
        return fired

    # -- replay --------------------------------------------------------------------------------
    async def replay(self, principal: Principal, ref: str, after: str, before: str | None) -> ReplayResult:
        """Run an event trigger again over past events (after fixing its action, say). Each event is
        replayed once: a second replay of the same range fires nothing new."""
        fired: list[TriggerRunView] = []
        examined = 0
        cursor = after
        while True:
            row = await self._db.read(self._service_row, principal, ref)
            batch, upto = await self._db.read(read_events, EventQuery((), None, cursor, EVENT_BATCH), None)
            in_range = [e for e in batch if before is None or e.cursor < before]
            found = matching(row, in_range, since=after)
            examined += len(found)
            if found:
                fired.extend(await self._db.write(self._replay_tx, row.id, found))
            if len(batch) < EVENT_BATCH or len(in_range) < len(batch):
                return ReplayResult(examined=examined, fired=fired)
            cursor = upto

    def _service_row(self, conn: Connection, principal: Principal, ref: str) -> Row[Any]:
        row = self._service.owned_row(conn, principal, ref)
        if row.kind != TriggerKind.EVENT.value:
            raise InvalidInput(f"event_replay re-runs event triggers over past events; {ref} is a {row.kind} trigger")
        return row

    def _replay_tx(self, conn: Connection, trigger_id: str, found: list[Event]) -> list[TriggerRunView]:
        row = conn.execute(select(triggers).where(triggers.c.id == trigger_id)).one()
        runs = []
        for event in found:
            run = self._service.fire_in(
                conn, row, f"replay:{event.id}", "replay", {"event": event.as_scope()}, event.depth + 1
            )
            if run is not None:
                runs.append(run)
        return runs
