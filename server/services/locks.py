"""Resource locks: leases with fencing tokens, shared/exclusive modes over hierarchical names,
counting semaphores, fair queues, deadlock refusal, and task-scoped locks.

Invariants:
- every transaction that grants, queues or ends a lock runs serialized: SQLite's single write lock
  (BEGIN IMMEDIATE), or one transaction-scoped advisory lock on PostgreSQL shared by every replica.
  So the conflict check and the grant it justifies see one consistent table: never two conflicting
  holders, on one server or many;
- a fencing token is `orch_resources.fence + 1`, written in the granting transaction, so it strictly
  increases per resource across every grant, restart and replica;
- a lapsed lease counts as gone only once a conditional UPDATE (status held, expires_at passed)
  has ended it: a renew that wins the race keeps its lock, and its holder is still in the way;
- a waiter is granted by whoever frees its resources, in that transaction (hand-off), and woken
  after the commit: in-process, and on PostgreSQL by NOTIFY to every replica.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, text, update

from server.clock import MICROS, Clock, to_iso
from server.domain.backoff import Random
from server.domain.principal import REAPER, Principal, Role
from server.domain.priority import Priority
from server.domain.resources import Claim, LockMode, ResourceRequest, parse_all, parse_name
from server.domain.statuses import LIVE_LOCK_STATUSES, LockStatus, TaskStatus
from server.domain.views import LockConflict, LockGrant, LockItemView, LockList, LockView, ResourceView
from server.errors import Conflict, Deadlock, InvalidInput, LeaseExpired, LockTimeout, NotFound, PermissionDenied
from server.ids import LOCK, new_id
from server.instruments import Instruments
from server.services import audit
from server.services.access import AccessPolicy
from server.services.events import log as events
from server.services.lock_state import (
    LiveItem,
    Obstacle,
    ahead_of,
    claim_of,
    find_cycle,
    group_waiting,
    obstacles,
    queue_position,
)
from server.services.signals import KeyedSignals, TaskSignals
from server.services.tasks import announce_ready
from server.store.database import Database, after_commit
from server.store.tables import lock_items, locks, resources, tasks

_SERIAL_KEY = 0x61666C6B  # any fixed number: the advisory lock every lock transaction takes on PostgreSQL
_LIVE_STATUSES = sorted(s.value for s in LIVE_LOCK_STATUSES)
_WAKE_TASKS = 16  # queued resource tasks woken when resources free up

# Literal conditions (not bound parameters) that match the partial indexes' own WHERE clauses, so
# both planners use them: these tables keep every lock ever taken.
_LIVE_ITEM = text("orch_lock_items.live")
_IS_WAITING = text("orch_locks.status = 'waiting'")
_LOAD = (
    select(
        lock_items.c.lock_id,
        lock_items.c.name,
        lock_items.c.mode,
        locks.c.party,
        locks.c.holder,
        locks.c.status,
        locks.c.priority,
        locks.c.expires_at,
        locks.c.wait_until,
        locks.c.ttl_s,
    )
    .select_from(lock_items.join(locks, locks.c.id == lock_items.c.lock_id))
    .where(_LIVE_ITEM)
)
_LOAD_ROOTS = _LOAD.where(lock_items.c.root.in_(bindparam("roots", expanding=True)))
_SEMAPHORES = select(resources.c.name, resources.c.capacity).where(text("orch_resources.capacity > 1"))
_NEXT_FENCE = text(
    "INSERT INTO orch_resources (name, capacity, fence, updated_at) VALUES (:name, 1, 1, :now) "
    "ON CONFLICT (name) DO UPDATE SET fence = orch_resources.fence + 1, updated_at = excluded.updated_at "
    "RETURNING fence"
)
_INSERT_LOCK = insert(locks)
_INSERT_ITEMS = insert(lock_items)
_END_ITEMS = update(lock_items).where(lock_items.c.lock_id.in_(bindparam("ids", expanding=True))).values(live=False)
# Ending locks (release, expiry, timeout, withdrawal), built once: the hot path of every release.
_END = (
    update(locks)
    .where(locks.c.id.in_(bindparam("ids", expanding=True)), locks.c.status == bindparam("from_status"))
    .values(status=bindparam("to_status"), ended_at=bindparam("now"), ended_by=bindparam("by"))
    .returning(locks.c.id)
)
_END_LAPSED = {
    LockStatus.HELD: _END.where(locks.c.expires_at <= bindparam("now")),
    LockStatus.WAITING: _END.where(locks.c.wait_until <= bindparam("now")),
}
_LOCK_ROW = select(locks).where(locks.c.id == bindparam("lock_id"))
_ITEMS_OF = select(lock_items).where(lock_items.c.lock_id == bindparam("lock_id")).order_by(lock_items.c.name)
_LAPSED = text(
    "SELECT 1 FROM orch_locks WHERE status = 'held' AND expires_at <= :now "
    "UNION ALL SELECT 1 FROM orch_locks WHERE status = 'waiting' AND wait_until <= :now"
)
_PARTY_WAITING = select(locks.c.id).where(_IS_WAITING, locks.c.party == bindparam("party")).limit(1)
# One round trip tells a release whether anything waits: lock requests, or tasks that need resources.
_ANYONE_WAITING = text(
    "SELECT (SELECT 1 FROM orch_locks WHERE status = 'waiting' LIMIT 1) AS locks, "
    "(SELECT 1 FROM orch_tasks WHERE status = 'queued' AND resources IS NOT NULL LIMIT 1) AS tasks"
)
_QUEUED_RESOURCE_TASKS = (
    select(tasks.c.capabilities, tasks.c.pinned_agent_id, tasks.c.ready_at)
    .where(text("orch_tasks.status = 'queued' AND orch_tasks.resources IS NOT NULL"))
    .order_by(tasks.c.dispatch_key, tasks.c.id)
    .limit(_WAKE_TASKS)
)


@dataclass(frozen=True)
class AcquireRequest:
    claims: list[Claim]
    ttl_s: int | None  # None: the lock lives as long as its task's attempt
    wait_s: float
    priority: Priority = Priority.NORMAL
    task_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class _Placed:
    """Where an acquire landed: granted, refused (wait_s=0), or queued."""

    lock_id: str | None
    view: LockView | None
    conflicts: list[LockConflict]
    waiting: bool = False
    retry_at: int | None = None  # earliest lease end among the holders in the way


def _us(seconds: float) -> int:
    return int(seconds * MICROS)


def _conflict_views(found: list[Obstacle]) -> list[LockConflict]:
    seen: set[tuple[str, str, str]] = set()
    views = []
    for obstacle in found:
        key = (obstacle.mine.name, obstacle.theirs.lock_id, obstacle.theirs.claim.name)
        if key not in seen:
            seen.add(key)
            theirs = obstacle.theirs
            views.append(
                LockConflict(
                    resource=obstacle.mine.name,
                    blocked_by=theirs.claim.name,
                    lock_id=theirs.lock_id,
                    holder=theirs.holder,
                    mode=theirs.claim.mode.value,
                    status=theirs.status,
                    expires_at=to_iso(theirs.deadline) if theirs.held else None,
                )
            )
    return views


def _describe(conflicts: list[LockConflict], limit: int = 3) -> str:
    parts = [
        f"{c.blocked_by} {'held' if c.status == LockStatus.HELD else 'awaited'} by {c.holder} ({c.mode}, {c.lock_id})"
        for c in conflicts[:limit]
    ]
    more = f" and {len(conflicts) - limit} more" if len(conflicts) > limit else ""
    return "; ".join(parts) + more


def _grant_view(placed: _Placed) -> LockGrant:
    view = placed.view
    if view is None or view.status != LockStatus.HELD:
        return LockGrant(
            granted=False, lock_id=None, expires_at=None, fencing_tokens={}, lock=None, conflicts=placed.conflicts
        )
    return LockGrant(
        granted=True,
        lock_id=view.id,
        expires_at=view.expires_at,
        fencing_tokens={item.name: item.fence or 0 for item in view.resources},
        lock=view,
        conflicts=[],
    )


def _lock_view(row: Any, items: Sequence[Row[Any]], position: int | None = None) -> LockView:
    return LockView(
        id=row.id,
        holder=row.holder,
        task_id=row.task_id,
        request_id=row.request_id,
        status=row.status,
        priority=Priority.from_rank(row.priority).value,
        resources=[LockItemView(name=i.name, mode=i.mode, fence=i.fence, lock_id=row.id) for i in items],
        created_at=to_iso(row.created_at) or "",
        granted_at=to_iso(row.granted_at),
        expires_at=to_iso(row.expires_at),
        wait_until=to_iso(row.wait_until),
        ended_at=to_iso(row.ended_at),
        ended_by=row.ended_by,
        queue_position=position,
    )


def _items_of(conn: Connection, lock_id: str) -> Sequence[Row[Any]]:
    return conn.execute(_ITEMS_OF, {"lock_id": lock_id}).all()


def _read_lock(conn: Connection, lock_id: str, position: int | None = None) -> LockView:
    row = conn.execute(_LOCK_ROW, {"lock_id": lock_id}).one()
    return _lock_view(row, _items_of(conn, lock_id), position)


class LockService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        signals: KeyedSignals,
        task_signals: TaskSignals,
        recheck_s: float,
        access: AccessPolicy,
        rng: Random | None = None,
        instruments: Instruments | None = None,
    ) -> None:
        self._instruments = instruments or Instruments()
        self._access = access
        self._db = db
        self._clock = clock
        self._signals = signals
        self._task_signals = task_signals
        self._recheck_s = recheck_s
        self._rng: Random = rng or random.Random()

    # -- acquire -------------------------------------------------------------------------------
    async def acquire(
        self,
        principal: Principal,
        requested: Sequence[ResourceRequest],
        ttl_s: int,
        wait_s: float = 0,
        priority: Priority = Priority.NORMAL,
        task_id: str | None = None,
        request_id: str | None = None,
    ) -> LockGrant:
        request = AcquireRequest(parse_all(requested), ttl_s, wait_s, priority, task_id, request_id)
        self._access.check_lock_names(principal, [r.name for r in requested])
        placed = await self._db.write(self._acquire_tx, principal, request)
        if not placed.waiting or placed.lock_id is None:
            return _grant_view(placed)
        try:
            return await self._await_grant(placed.lock_id, time.monotonic() + wait_s, placed.retry_at)
        except asyncio.CancelledError:
            # The caller went away: withdraw the request (or drop a grant it will never see).
            await asyncio.shield(self._db.write(self._abandon_tx, placed.lock_id))
            raise

    def _acquire_tx(self, conn: Connection, principal: Principal, request: AcquireRequest) -> _Placed:
        now = self._clock.now_us()
        if request.task_id is not None:
            self._bind_task(conn, principal, request.task_id)  # locks the task row before the lock table
        self._serialize(conn)
        if request.request_id is not None:
            replay = self._replay(conn, principal, request)
            if replay is not None:
                return replay
        lock_id = new_id(LOCK)  # under serialization: ids follow queue order on this replica
        capacities = self._capacities(conn)
        self._check_modes(request.claims, capacities)
        party = request.task_id or (principal.id if principal.agent_id else lock_id)
        items = self._live_in(conn, now, {c.root for c in request.claims})
        rank = request.priority.rank
        in_front = ahead_of(items, rank, lock_id)
        found = obstacles(request.claims, in_front, capacities, lock_id)
        if not found or request.wait_s > 0:
            self._refuse_cycle(conn, now, principal, request, lock_id, party, capacities, granted=not found)
        if not found:
            view = self._insert(conn, now, principal, request, lock_id, party, held=True)
            audit.record(conn, now, principal, "lock.acquire", lock_id, {"fences": self._fences(view)})
            data = {"holder": principal.id, "fences": self._fences(view)}
            events.emit(conn, now, "lock.granted", lock_id, data, actor=principal, agent_id=principal.agent_id)
            return _Placed(lock_id, view, [])
        conflicts = _conflict_views(found)
        if request.wait_s <= 0:
            return _Placed(None, None, conflicts)
        view = self._insert(conn, now, principal, request, lock_id, party, held=False)
        audit.record(conn, now, principal, "lock.wait", lock_id, {"behind": sorted({c.lock_id for c in conflicts})})
        lease_ends = [o.theirs.deadline for o in found if o.theirs.held and o.theirs.deadline is not None]
        return _Placed(lock_id, view, conflicts, waiting=True, retry_at=min(lease_ends) if lease_ends else None)

    def _bind_task(self, conn: Connection, principal: Principal, task_id: str) -> None:
        """A task-scoped lock needs a running task the caller holds; mark the task so its end
        releases the lock."""
        guard = [tasks.c.id == task_id, tasks.c.status == TaskStatus.RUNNING.value]
        if not principal.is_admin:
            guard.append(tasks.c.agent_id == principal.id)
        bound = conn.execute(update(tasks).where(*guard).values(has_locks=True).returning(tasks.c.id)).first()
        if bound is None:
            row = conn.execute(select(tasks.c.status, tasks.c.agent_id).where(tasks.c.id == task_id)).first()
            if row is None:
                raise NotFound(f"no task {task_id}")
            if not principal.is_admin and row.agent_id != principal.id:
                # Someone else's task: say no, and nothing of its state.
                raise PermissionDenied(f"task {task_id} is not leased to you; task-scoped locks need your own")
            raise Conflict(f"task {task_id} is {row.status}, not running under your lease; task-scoped locks need one")

    @staticmethod
    def _check_modes(claims: list[Claim], capacities: dict[str, int]) -> None:
        for claim in claims:
            capacity = capacities.get(claim.name, 1)
            if capacity > 1 and claim.mode is LockMode.SHARED:
                raise InvalidInput(
                    f"{claim.name} is a counting semaphore (capacity {capacity}): acquire it exclusive; "
                    "each holder takes one slot"
                )

    def _replay(self, conn: Connection, principal: Principal, request: AcquireRequest) -> _Placed | None:
        """The same holder repeating a live request_id gets the same lock back."""
        row = conn.execute(
            select(locks).where(
                locks.c.holder == principal.id,
                locks.c.request_id == request.request_id,
                locks.c.status.in_(_LIVE_STATUSES),
            )
        ).first()
        if row is None:
            return None
        view = _read_lock(conn, row.id)
        asked = sorted((c.name, c.mode.value) for c in request.claims)
        if asked != sorted((i.name, i.mode) for i in view.resources) or row.task_id != request.task_id:
            raise Conflict(
                f"request_id {request.request_id!r} belongs to lock {row.id} for other resources; use a new request_id"
            )
        waiting = row.status == LockStatus.WAITING
        return _Placed(row.id, view, [], waiting=waiting)

    def _refuse_cycle(
        self,
        conn: Connection,
        now: int,
        principal: Principal,
        request: AcquireRequest,
        lock_id: str,
        party: str,
        capacities: dict[str, int],
        granted: bool,
    ) -> None:
        """Deadlock: refuse a wait (or a grant) that would close a cycle in the wait-for graph.
        Only a party that waits can be on a cycle, so a plain grant skips the whole-table read."""
        if granted and conn.execute(_PARTY_WAITING, {"party": party}).first() is None:
            return
        everything = self._live_in(conn, now, None)
        status = LockStatus.HELD if granted else LockStatus.WAITING
        mine = [
            LiveItem(lock_id, party, principal.id, status, request.priority.rank, c, None, request.ttl_s)
            for c in request.claims
        ]
        cycle = find_cycle(everything + mine, capacities, party)
        if cycle is None:
            return
        steps = "; ".join(f"{h.waiter} waits for {h.holder} on {h.blocked_by} (wants {h.resource})" for h in cycle)
        raise Deadlock(
            f"waiting would close a cycle: {steps}. Release what you hold and retry, or take all of it in one acquire"
        )

    def _insert(
        self,
        conn: Connection,
        now: int,
        principal: Principal,
        request: AcquireRequest,
        lock_id: str,
        party: str,
        held: bool,
    ) -> LockView:
        row = {
            "id": lock_id,
            "holder": principal.id,
            "party": party,
            "task_id": request.task_id,
            "request_id": request.request_id,
            "status": LockStatus.HELD.value if held else LockStatus.WAITING.value,
            "priority": request.priority.rank,
            "ttl_s": request.ttl_s,
            "created_at": now,
            "granted_at": now if held else None,
            "expires_at": now + _us(request.ttl_s) if held and request.ttl_s is not None else None,
            "wait_until": None if held else now + _us(request.wait_s),
            "ended_at": None,
            "ended_by": None,
        }
        conn.execute(_INSERT_LOCK, row)
        fences = self._next_fences(conn, now, request.claims) if held else {}
        items = [
            {
                "lock_id": lock_id,
                "name": c.name,
                "mode": c.mode.value,
                "root": c.root,
                "fence": fences.get(c.name),
                "live": True,
            }
            for c in request.claims
        ]
        conn.execute(_INSERT_ITEMS, items)
        return LockView(
            id=lock_id,
            holder=principal.id,
            task_id=request.task_id,
            request_id=request.request_id,
            status=row["status"],
            priority=request.priority.value,
            resources=[LockItemView(name=i["name"], mode=i["mode"], fence=i["fence"], lock_id=lock_id) for i in items],
            created_at=to_iso(now) or "",
            granted_at=to_iso(row["granted_at"]),
            expires_at=to_iso(row["expires_at"]),
            wait_until=to_iso(row["wait_until"]),
            ended_at=None,
            ended_by=None,
        )

    @staticmethod
    def _next_fences(conn: Connection, now: int, claims: Sequence[Claim]) -> dict[str, int]:
        return {c.name: conn.execute(_NEXT_FENCE, {"name": c.name, "now": now}).scalar_one() for c in claims}

    @staticmethod
    def _fences(view: LockView) -> dict[str, int | None]:
        return {i.name: i.fence for i in view.resources}

    # -- waiting -------------------------------------------------------------------------------
    async def _await_grant(self, lock_id: str, deadline: float, retry_at: int | None) -> LockGrant:
        with self._signals.watch(lock_id) as woken:
            while True:
                # Read after registering: a grant committed before we watched is still seen here.
                view = await self._db.read(_read_lock, lock_id)
                if view.status != LockStatus.WAITING:
                    return self._settled(view)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._signals.closed:
                    view, position, blockers = await self._db.write(self._give_up_tx, lock_id)
                    if view.status == LockStatus.WAITING:  # withdrawn by us: report where it stood
                        raise LockTimeout(
                            f"not granted within wait_s: request {lock_id} was number {position} in the queue; "
                            f"in the way: {blockers or 'nothing now'}. Retry with a longer wait_s; lock_list "
                            "shows holders and waiters"
                        )
                    return self._settled(view)
                timeout = min(remaining, self._recheck_s * self._rng.uniform(0.5, 1.5))
                if retry_at is not None:
                    timeout = min(timeout, max(0.0, (retry_at - self._clock.now_us()) / MICROS))
                try:
                    await asyncio.wait_for(woken.wait(), timeout)
                    woken.clear()
                except TimeoutError:
                    if retry_at is not None and self._clock.now_us() >= retry_at:
                        retry_at = None
                        await self.sweep()  # the lease in our way should have ended: end it and hand off

    @staticmethod
    def _settled(view: LockView) -> LockGrant:
        if view.status == LockStatus.HELD:
            return _grant_view(_Placed(view.id, view, []))
        if view.status == LockStatus.TIMED_OUT:
            raise LockTimeout(f"lock request {view.id} timed out in the queue; retry with a longer wait_s")
        raise Conflict(f"lock request {view.id} was {view.status} by {view.ended_by or 'the server'} while it waited")

    def _give_up_tx(self, conn: Connection, lock_id: str) -> tuple[LockView, int, str]:
        """The waiter's deadline passed: leave the queue (unless granted meanwhile) and let those
        behind move up. Returns the view as it stood, its queue position and what was in the way."""
        now = self._clock.now_us()
        self._serialize(conn)
        view = _read_lock(conn, lock_id)
        if view.status != LockStatus.WAITING:
            return view, 0, ""
        loaded = self._load(conn, None)
        mine = [i for i in loaded if i.lock_id == lock_id]
        if not mine:  # its items are gone: nothing of it is queued any more
            return view, 0, ""
        items = self._settle(conn, now, [i for i in loaded if i.lock_id != lock_id]) + mine
        claims = [i.claim for i in mine]
        rank = mine[0].priority
        position = queue_position(claims, items, rank, lock_id)
        blockers = _describe(
            _conflict_views(obstacles(claims, ahead_of(items, rank, lock_id), self._capacities(conn), lock_id))
        )
        self._end(conn, [lock_id], LockStatus.TIMED_OUT, LockStatus.WAITING, now, REAPER.id)
        audit.record(conn, now, REAPER, "lock.timeout", lock_id, {"position": position, "behind": blockers})
        self._hand_off(conn, now)
        return view.model_copy(update={"queue_position": position}), position, blockers

    def _abandon_tx(self, conn: Connection, lock_id: str) -> None:
        now = self._clock.now_us()
        self._serialize(conn)
        row = conn.execute(select(locks.c.status, locks.c.request_id).where(locks.c.id == lock_id)).one()
        if row.status == LockStatus.WAITING:
            self._end(conn, [lock_id], LockStatus.CANCELLED, LockStatus.WAITING, now, "caller gone")
        elif row.status == LockStatus.HELD and row.request_id is None:
            # Granted as the caller left; without a request_id nobody can claim it: free it now.
            self._end(conn, [lock_id], LockStatus.RELEASED, LockStatus.HELD, now, "caller gone")
        else:
            return
        audit.record(conn, now, REAPER, "lock.abandon", lock_id, {"was": row.status})
        self._hand_off(conn, now)

    # -- renew / release -----------------------------------------------------------------------
    async def renew(self, principal: Principal, lock_id: str, ttl_s: int) -> LockView:
        return await self._db.write(self._renew_tx, principal, lock_id, ttl_s)

    def _renew_tx(self, conn: Connection, principal: Principal, lock_id: str, ttl_s: int) -> LockView:
        now = self._clock.now_us()
        renewed = conn.execute(
            update(locks)
            .where(
                locks.c.id == lock_id,
                locks.c.holder == principal.id,
                locks.c.status == LockStatus.HELD.value,
                locks.c.expires_at > now,
            )
            .values(expires_at=now + _us(ttl_s), ttl_s=ttl_s)
            .returning(locks.c.id)
        ).first()
        if renewed is None:
            self._explain_not_held(conn, principal, lock_id, now, for_others=False)  # only its holder renews
        return _read_lock(conn, lock_id)

    def _explain_not_held(
        self, conn: Connection, principal: Principal, lock_id: str, now: int, *, for_others: bool
    ) -> None:
        """`for_others`: may the caller act on a lock it does not hold (an operator's force-release)?"""
        row = conn.execute(select(locks).where(locks.c.id == lock_id)).first()
        if row is None:
            raise NotFound(f"no lock {lock_id}")
        if row.holder != principal.id and not for_others:
            raise PermissionDenied(f"lock {lock_id} is not yours")
        if row.status == LockStatus.HELD and row.expires_at is None:
            raise InvalidInput(f"lock {lock_id} lives as long as task {row.task_id}; renew that task's lease instead")
        if row.status == LockStatus.HELD and row.expires_at <= now:
            raise LeaseExpired(f"your lease on {lock_id} ran out; it is being released. Acquire again")
        if row.status == LockStatus.EXPIRED:
            raise LeaseExpired(f"your lease on {lock_id} ran out; others may hold it now. Acquire again")
        if row.status == LockStatus.RELEASED and row.ended_by != row.holder:
            raise LeaseExpired(f"lock {lock_id} was released by {row.ended_by}; you no longer hold it")
        if row.status == LockStatus.WAITING:
            raise Conflict(f"lock {lock_id} is still waiting; it has not been granted")
        raise Conflict(f"lock {lock_id} is already {row.status}")

    async def release(self, principal: Principal, lock_id: str) -> LockView:
        view, error = await self._db.write(self._release_tx, principal, lock_id)
        if error is not None:
            raise error
        return view

    def _release_tx(self, conn: Connection, principal: Principal, lock_id: str) -> tuple[LockView, LeaseExpired | None]:
        now = self._clock.now_us()
        self._serialize(conn)
        row = conn.execute(_LOCK_ROW, {"lock_id": lock_id}).first()
        if row is None:
            raise NotFound(f"no lock {lock_id}")
        if row.holder != principal.id and not principal.can_operate:
            raise PermissionDenied(f"lock {lock_id} is not yours")
        if row.status == LockStatus.RELEASED and row.ended_by == principal.id:
            return _read_lock(conn, lock_id), None  # a repeated release: same answer
        if row.status == LockStatus.HELD and row.expires_at is not None and row.expires_at <= now:
            # Lapsed before this release: record the expiry (committed), then tell the holder.
            if self._end(conn, [lock_id], LockStatus.EXPIRED, LockStatus.HELD, now, REAPER.id, lapsed=True):
                audit.record(conn, now, REAPER, "lock.expire", lock_id, {})
                events.emit(conn, now, "lock.expired", lock_id, {}, actor=REAPER)
                self._hand_off(conn, now)
            return _read_lock(conn, lock_id), LeaseExpired(
                f"your lease on {lock_id} ran out before this release; others may have held it since"
            )
        if row.status not in _LIVE_STATUSES:
            self._explain_not_held(conn, principal, lock_id, now, for_others=principal.can_operate)
        forced = row.holder != principal.id
        new_status = LockStatus.RELEASED if row.status == LockStatus.HELD else LockStatus.CANCELLED
        self._end(conn, [lock_id], new_status, LockStatus(row.status), now, principal.id)
        action = "lock.force_release" if forced else "lock.release"
        audit.record(conn, now, principal, action, lock_id, {"holder": row.holder, "was": row.status})
        data = {"holder": row.holder, "forced": forced}
        events.emit(conn, now, "lock.released", lock_id, data, actor=principal, agent_id=row.holder)
        self._hand_off(conn, now)
        # The row as this transaction left it, without reading it again.
        ended = SimpleNamespace(
            **{**row._mapping, "status": new_status.value, "ended_at": now, "ended_by": principal.id}
        )
        return _lock_view(ended, _items_of(conn, lock_id)), None

    # -- list / resources ----------------------------------------------------------------------
    async def list(self, prefix: str | None = None, holder: str | None = None) -> LockList:
        return await self._db.read(self._list_tx, prefix, holder)

    def _list_tx(self, conn: Connection, prefix: str | None, holder: str | None) -> LockList:
        now = self._clock.now_us()
        items = [i for i in self._load(conn, None) if self._is_live(i, now)]
        wanted = {
            i.lock_id
            for i in items
            if (prefix is None or i.claim.name.startswith(prefix)) and (holder is None or i.holder == holder)
        }
        views = []
        for lock_id in sorted(wanted):
            mine = [i for i in items if i.lock_id == lock_id]
            first = mine[0]
            position = None if first.held else queue_position([i.claim for i in mine], items, first.priority, lock_id)
            views.append(_read_lock(conn, lock_id, position))
        views.sort(key=lambda v: (v.status != LockStatus.HELD, v.queue_position or 0, v.id))
        return LockList(locks=views)

    async def set_resource(self, principal: Principal, name: str, capacity: int) -> ResourceView:
        if not principal.is_admin:
            raise PermissionDenied("resource_set is for the admin: capacities are shared by the whole fleet")
        key, subtree = parse_name(name)
        if subtree:
            raise InvalidInput(f"{name!r} is a pattern; a semaphore is a plain name such as gpu:pool")
        return await self._db.write(self._set_resource_tx, principal, name, capacity)

    def _set_resource_tx(self, conn: Connection, principal: Principal, name: str, capacity: int) -> ResourceView:
        now = self._clock.now_us()
        self._serialize(conn)
        shared = conn.execute(
            select(lock_items.c.lock_id).where(
                lock_items.c.name == name, _LIVE_ITEM, lock_items.c.mode == LockMode.SHARED.value
            )
        ).first()
        if shared is not None and capacity > 1:
            raise Conflict(f"{name} is held or awaited in shared mode ({shared.lock_id}); a semaphore takes exclusive")
        conn.execute(
            text(
                "INSERT INTO orch_resources (name, capacity, fence, updated_at) VALUES (:name, :capacity, 0, :now) "
                "ON CONFLICT (name) DO UPDATE SET capacity = excluded.capacity, updated_at = excluded.updated_at"
            ),
            {"name": name, "capacity": capacity, "now": now},
        )
        audit.record(conn, now, principal, "resource.set", name[:40], {"name": name, "capacity": capacity})
        self._hand_off(conn, now)  # more slots: waiters may move up
        fence = conn.execute(select(resources.c.fence).where(resources.c.name == name)).scalar_one()
        holders = conn.execute(
            select(func.count())
            .select_from(lock_items.join(locks, locks.c.id == lock_items.c.lock_id))
            .where(lock_items.c.name == name, locks.c.status == LockStatus.HELD.value)
        ).scalar_one()
        return ResourceView(name=name, capacity=capacity, fence=fence, holders=holders)

    # -- the reaper ----------------------------------------------------------------------------
    async def sweep(self) -> int:
        """End lapsed leases and lapsed waits, then hand freed resources on. Every replica runs it."""
        if not await self._db.read(self._anything_lapsed_tx):
            return 0
        return await self._db.write(self._sweep_tx)

    def _anything_lapsed_tx(self, conn: Connection) -> bool:
        now = self._clock.now_us()
        return conn.execute(_LAPSED, {"now": now}).first() is not None

    def _sweep_tx(self, conn: Connection) -> int:
        now = self._clock.now_us()
        self._serialize(conn)
        before = self._load(conn, None)
        after = self._settle(conn, now, before)
        ended = len({i.lock_id for i in before}) - len({i.lock_id for i in after})
        if ended:
            self._hand_off(conn, now)
        return ended

    # -- used inside other services' transactions ----------------------------------------------
    def grant_for_task(
        self, conn: Connection, agent_id: str, task_id: str, wanted: list[dict[str, str]], priority: int
    ) -> list[LockItemView] | None:
        """Try to take a queued task's resources for the agent claiming it, as one immediate
        (wait_s=0) acquire at the task's priority. The locks live as long as the attempt."""
        now = self._clock.now_us()
        self._serialize(conn)
        claims = parse_all([ResourceRequest.model_validate(w) for w in wanted])
        request = AcquireRequest(claims, ttl_s=None, wait_s=0, priority=Priority.from_rank(priority), task_id=task_id)
        lock_id = new_id(LOCK)
        items = self._live_in(conn, now, {c.root for c in claims})
        if obstacles(claims, ahead_of(items, priority, lock_id), self._capacities(conn), lock_id):
            return None
        agent = Principal(Role.AGENT, agent_id)
        view = self._insert(conn, now, agent, request, lock_id, task_id, held=True)
        audit.record(conn, now, agent, "lock.acquire", lock_id, {"task": task_id, "fences": self._fences(view)})
        return view.resources

    def release_for_task(self, conn: Connection, task_id: str, now: int, by: str) -> None:
        """The task's attempt ended: its task-scoped locks end with it."""
        self._release_where(conn, locks.c.task_id == task_id, now, by, "task ended")

    def release_for_agents(self, conn: Connection, agent_ids: list[str], now: int, by: str) -> None:
        """The agents are gone: everything they hold or await is freed."""
        if agent_ids:
            self._release_where(conn, locks.c.holder.in_(agent_ids), now, by, "agent ended")

    def _release_where(self, conn: Connection, where: Any, now: int, by: str, why: str) -> None:
        self._serialize(conn)
        rows = conn.execute(select(locks.c.id, locks.c.status).where(where, locks.c.status.in_(_LIVE_STATUSES))).all()
        if not rows:
            return
        held = [r.id for r in rows if r.status == LockStatus.HELD]
        waiting = [r.id for r in rows if r.status == LockStatus.WAITING]
        self._end(conn, held, LockStatus.RELEASED, LockStatus.HELD, now, by)
        self._end(conn, waiting, LockStatus.CANCELLED, LockStatus.WAITING, now, by)
        for row in rows:
            audit.record(conn, now, REAPER, "lock.release", row.id, {"why": why, "by": by})
            events.emit(conn, now, "lock.released", row.id, {"why": why, "by": by}, actor=REAPER)
        self._hand_off(conn, now)

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _serialize(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SERIAL_KEY})

    @staticmethod
    def _capacities(conn: Connection) -> dict[str, int]:
        return {name: capacity for name, capacity in conn.execute(_SEMAPHORES)}

    @staticmethod
    def _load(conn: Connection, roots: set[str] | None) -> list[LiveItem]:
        rows = conn.execute(_LOAD) if roots is None else conn.execute(_LOAD_ROOTS, {"roots": sorted(roots)})
        return [
            LiveItem(
                r.lock_id,
                r.party,
                r.holder,
                r.status,
                r.priority,
                claim_of(r.name, r.mode),
                r.expires_at if r.status == LockStatus.HELD else r.wait_until,
                r.ttl_s,
            )
            for r in rows
        ]

    def _live_in(self, conn: Connection, now: int, roots: set[str] | None) -> list[LiveItem]:
        """Live items under `roots` (None: all). If ending lapsed ones freed anything, the waiters
        behind them are handed their grants first, so a newcomer never overtakes them (and no
        ended lease is left without its hand-off)."""
        items = self._load(conn, roots)
        live = self._settle(conn, now, items)
        if len(live) == len(items):
            return live
        self._hand_off(conn, now)
        return self._load(conn, roots)

    @staticmethod
    def _is_live(item: LiveItem, now: int) -> bool:
        return item.deadline is None or item.deadline > now

    def _settle(self, conn: Connection, now: int, items: list[LiveItem]) -> list[LiveItem]:
        """End the lapsed among `items` (conditionally: a renew may have won) and return the rest."""
        lapsed_held = sorted({i.lock_id for i in items if i.held and not self._is_live(i, now)})
        lapsed_waits = sorted({i.lock_id for i in items if not i.held and not self._is_live(i, now)})
        gone: set[str] = set()
        if lapsed_held:
            expired = self._end(conn, lapsed_held, LockStatus.EXPIRED, LockStatus.HELD, now, REAPER.id, lapsed=True)
            for lock_id in expired:
                audit.record(conn, now, REAPER, "lock.expire", lock_id, {})
                events.emit(conn, now, "lock.expired", lock_id, {}, actor=REAPER)
            gone.update(expired)
        if lapsed_waits:
            timed_out = self._end(
                conn, lapsed_waits, LockStatus.TIMED_OUT, LockStatus.WAITING, now, REAPER.id, lapsed=True
            )
            for lock_id in timed_out:
                audit.record(conn, now, REAPER, "lock.timeout", lock_id, {})
            gone.update(timed_out)
        if gone:
            self._wake_resource_tasks(conn)
        return [i for i in items if i.lock_id not in gone]

    def _end(
        self,
        conn: Connection,
        lock_ids: list[str],
        status: LockStatus,
        from_status: LockStatus,
        now: int,
        by: str | None,
        lapsed: bool = False,
    ) -> list[str]:
        if not lock_ids:
            return []
        statement = _END_LAPSED[from_status] if lapsed else _END
        params = {"ids": lock_ids, "from_status": from_status.value, "to_status": status.value, "now": now, "by": by}
        ended = list(conn.execute(statement, params).scalars())
        if ended:
            conn.execute(_END_ITEMS, {"ids": ended})
            if from_status is LockStatus.WAITING:
                # Its waiter, wherever it is, answers now instead of at its re-check: here after
                # commit, on other replicas through the event.
                self._wake(conn, ended)
                for lock_id in ended:
                    events.emit(conn, now, f"lock.{status.value}", lock_id, {"by": by}, actor=by)
        return ended

    def _wake(self, conn: Connection, lock_ids: list[str]) -> None:
        """After commit, the callers waiting here on these requests look at them again (other
        replicas hear of it from the lock.granted / timed_out / cancelled events)."""
        after_commit(conn, lambda: self._signals.wake(lock_ids))

    def _hand_off(self, conn: Connection, now: int) -> None:
        """Resources were freed: grant waiting requests in queue order, wake them after commit,
        and wake claimers of queued tasks that need resources."""
        waiting = conn.execute(_ANYONE_WAITING).one()
        if waiting.tasks:
            self._wake_resource_tasks(conn)
        if not waiting.locks:
            return
        capacities = self._capacities(conn)
        items = self._settle(conn, now, self._load(conn, None))
        holders = [i for i in items if i.held]
        granted: list[str] = []
        still_waiting: list[LiveItem] = []
        for request in group_waiting(items):
            first = request[0]
            if obstacles([i.claim for i in request], holders + still_waiting, capacities, first.lock_id):
                still_waiting.extend(request)
                continue
            self._grant_waiting(conn, now, first, [i.claim for i in request])
            holders.extend(request)
            granted.append(first.lock_id)
        if granted:
            self._wake(conn, granted)

    def _grant_waiting(self, conn: Connection, now: int, first: LiveItem, claims: list[Claim]) -> None:
        ttl_s = first.ttl_s or 0
        requested = conn.execute(
            update(locks)
            .where(locks.c.id == first.lock_id, locks.c.status == LockStatus.WAITING.value)
            .values(status=LockStatus.HELD.value, granted_at=now, expires_at=now + _us(ttl_s), wait_until=None)
            .returning(locks.c.created_at)
        ).scalar()
        if requested is not None:
            self._instruments.lock_granted_after_wait(now - requested)
        fences = self._next_fences(conn, now, claims)
        for name, fence in fences.items():
            conn.execute(
                update(lock_items)
                .where(lock_items.c.lock_id == first.lock_id, lock_items.c.name == name)
                .values(fence=fence)
            )
        audit.record(conn, now, REAPER, "lock.grant", first.lock_id, {"holder": first.holder, "fences": fences})
        data = {"holder": first.holder, "fences": fences}
        events.emit(conn, now, "lock.granted", first.lock_id, data, actor=REAPER, agent_id=first.holder)

    def _wake_resource_tasks(self, conn: Connection) -> None:
        """Queued tasks that need resources may be claimable now: tell their claimers."""
        rows = conn.execute(_QUEUED_RESOURCE_TASKS).all()
        for row in rows:
            announce_ready(conn, self._task_signals, list(row.capabilities), row.pinned_agent_id, row.ready_at)
        if rows:
            now = self._clock.now_us()
            ready = [(frozenset(r.capabilities), r.pinned_agent_id, r.ready_at) for r in rows]
            after_commit(conn, lambda: [self._task_signals.task_ready(c, p, at, now) for c, p, at in ready])
