"""The lease lifecycle: claim, heartbeat, complete, fail, and the reaper that ends lapsed leases.

Invariants, all enforced by the store:
- one row per task with one holder column: a task is never held by two agents;
- every transition is a conditional UPDATE on (status, holder, lease), so a lapsed or foreign
  holder changes nothing;
- claims lock the claiming agent's row first (PostgreSQL) or hold the write lock (SQLite), so an
  agent never exceeds its max_concurrency; PostgreSQL claimers skip rows others are taking.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, Row, SmallInteger, Text, bindparam, cast, func, select, text, update

from server import tracing
from server.clock import MICROS, Clock, to_iso
from server.domain.backoff import Random, backoff_delay_us
from server.domain.money import usd
from server.domain.principal import REAPER, Principal
from server.domain.statuses import LIVE_AGENT_STATUSES, TaskStatus
from server.domain.views import ClaimResult, LockItemView, TaskLease, TaskView
from server.errors import Conflict, InvalidInput, PermissionDenied
from server.instruments import Instruments
from server.services import audit
from server.services.agent_rows import touch_agent
from server.services.budget_rows import hold_for_dispatch, settle_task_hold
from server.services.events import log as events
from server.services.locks import LockService
from server.services.signals import TaskSignals, Waiter
from server.services.task_ends import TaskEnds
from server.services.task_rows import explain_not_held, task_view
from server.services.tasks import announce_ready
from server.store.database import Database
from server.store.dialect import json_subset
from server.store.tables import task_attempts, tasks

_LIVE = [s.value for s in LIVE_AGENT_STATUSES]
_REAP_BATCH = 200
_RESOURCE_HEADS = 16  # queued tasks a claim looks past when the head's resources are busy
# Microsecond arithmetic overflows 32-bit integers: keep every term BIGINT on PostgreSQL.
_LEASE_US = cast(tasks.c.lease_s, BigInteger) * MICROS

# Built once and executed with parameter dicts (bind names avoid column names).
_HELD_BY = (
    tasks.c.id == bindparam("b_task"),
    tasks.c.status == TaskStatus.RUNNING.value,
    tasks.c.agent_id == bindparam("b_agent"),
    tasks.c.lease_expires_at > bindparam("b_now", type_=BigInteger),
)
_RENEW = (
    update(tasks)
    .where(*_HELD_BY)
    .values(
        lease_expires_at=bindparam("b_now", type_=BigInteger) + _LEASE_US,
        updated_at=bindparam("b_now", type_=BigInteger),
        progress=func.coalesce(bindparam("b_progress", type_=SmallInteger), tasks.c.progress),
        progress_message=func.coalesce(bindparam("b_message", type_=Text), tasks.c.progress_message),
    )
    .returning(tasks.c.lease_expires_at, tasks.c.cancel_requested, tasks.c.progress, tasks.c.type, tasks.c.submitted_by)
)
_COMPLETE = (
    update(tasks)
    .where(*_HELD_BY)
    .values(
        status=TaskStatus.COMPLETED.value,
        result=bindparam("b_result", type_=tasks.c.result.type),
        usage=bindparam("b_usage", type_=tasks.c.usage.type),
        finished_at=bindparam("b_now", type_=BigInteger),
        updated_at=bindparam("b_now", type_=BigInteger),
        lease_expires_at=None,
        progress=100,
    )
    .returning(*tasks.c)
)
_START_ATTEMPT = task_attempts.insert()
_END_ATTEMPT = (
    update(task_attempts)
    .where(task_attempts.c.task_id == bindparam("b_task"), task_attempts.c.number == bindparam("b_number"))
    .values(ended_at=bindparam("b_now", type_=BigInteger), outcome=bindparam("b_outcome"), error=bindparam("b_error"))
    .returning(task_attempts.c.started_at)
)


@dataclass(frozen=True)
class _ClaimOutcome:
    task: TaskView | None
    capabilities: frozenset[str]
    heartbeat_timeout_s: int
    at_capacity: bool = False
    runs_payloads: bool = False


@dataclass(frozen=True)
class _Requeued:
    capabilities: list[str]
    pinned: str | None
    ready_at: int


def _held(task_id: str, agent_id: str, now: int) -> dict[str, Any]:
    return {"b_task": task_id, "b_agent": agent_id, "b_now": now}


def _require_agent(principal: Principal) -> str:
    if principal.agent_id is None:
        raise InvalidInput("this tool acts for an agent: call it with the agent's own token")
    return principal.agent_id


class LeaseService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        signals: TaskSignals,
        locks: LockService,
        claim_recheck_s: float,
        task_ends: TaskEnds,
        rng: Random | None = None,
        instruments: Instruments | None = None,
    ) -> None:
        self._task_ends = task_ends
        self._instruments = instruments or Instruments()
        self._db = db
        self._clock = clock
        self._signals = signals
        self._locks = locks
        self._recheck_s = claim_recheck_s
        self._rng: Random = rng or random.Random()
        self._build_statements(db.dialect)

    def _build_statements(self, dialect: str) -> None:
        self._held = (
            select(func.count())
            .select_from(tasks)
            .where(tasks.c.agent_id == bindparam("me"), tasks.c.status == TaskStatus.RUNNING.value)
        )
        # Literal 'queued' so SQLite can use the partial queue index; the capability test runs in SQL.
        head = (
            "SELECT id FROM orch_tasks WHERE status = 'queued' AND ready_at <= :now "
            "AND (pinned_agent_id IS NULL OR pinned_agent_id = :me) "
            # An agent that runs payloads as code takes only work whose submitter may have code run.
            "AND (executable OR NOT :exec_only) AND "
            + json_subset(dialect, "orch_tasks.capabilities", ":caps")
            # A consensus step's votes go to distinct agents (ux_orch_tasks_distinct_group backs it).
            + " AND (distinct_group IS NULL OR NOT EXISTS (SELECT 1 FROM orch_tasks AS mine "
            "WHERE mine.distinct_group = orch_tasks.distinct_group AND mine.agent_id = :me))"
            + " ORDER BY dispatch_key, id LIMIT 1"
        )
        self._claimable = text(head)
        if dialect == "postgresql":
            head += " FOR UPDATE SKIP LOCKED"  # concurrent claimers take the next row, never wait
        take = (
            "UPDATE orch_tasks SET status = 'running', agent_id = :me, attempts = attempts + 1, "
            f"lease_expires_at = :now + CAST(lease_s AS BIGINT) * {MICROS}, "
            "started_at = COALESCE(started_at, :now), updated_at = :now, progress = NULL, "
            "progress_message = NULL, unroutable = false, has_locks = (has_locks OR :locked) "
        )
        returning = " RETURNING " + ", ".join(c.name for c in tasks.c)
        # One statement finds the head of this agent's queue and leases it, unless the head needs
        # resources: then nothing matches and the claim takes the slower path that locks them.
        self._take_head = text(
            take + f"WHERE id = ({head}) AND status = 'queued' AND resources IS NULL" + returning
        ).columns(*tasks.c)
        self._take_one = text(take + "WHERE id = :task AND status = 'queued'" + returning).columns(*tasks.c)
        heads = head.replace("SELECT id FROM", "SELECT id, resources, priority FROM").replace(
            "LIMIT 1", f"LIMIT {_RESOURCE_HEADS}"
        )
        self._heads = text(heads).columns(tasks.c.id, tasks.c.resources, tasks.c.priority)
        self._lapsed = (
            select(tasks)
            .where(tasks.c.status == TaskStatus.RUNNING.value, tasks.c.lease_expires_at <= bindparam("now"))
            .order_by(tasks.c.lease_expires_at)
            .limit(_REAP_BATCH)
        )
        if dialect == "postgresql":
            self._lapsed = self._lapsed.with_for_update(skip_locked=True)

    # -- claim ---------------------------------------------------------------------------------
    async def claim(self, principal: Principal, wait_s: float = 0) -> ClaimResult:
        agent_id = _require_agent(principal)
        if wait_s <= 0:
            return self._result(await self._db.write(self._claim_tx, principal), principal)
        started = time.monotonic()
        deadline = started + wait_s
        # Parked before the first attempt, so work queued during it still wakes us.
        with self._signals.park(agent_id, capabilities=None) as waiter:
            while True:
                outcome = await self._db.write(self._claim_tx, principal)
                waiter.capabilities = outcome.capabilities
                waiter.runs_payloads = outcome.runs_payloads
                # A parked claim is silence to the supervisor: answer within half the agent's
                # heartbeat timeout, so its next call keeps it from being declared unresponsive.
                deadline = min(deadline, started + outcome.heartbeat_timeout_s / 2)
                if outcome.task is not None or outcome.at_capacity or not await self._wait_for_work(waiter, deadline):
                    return self._result(outcome, principal)

    async def _wait_for_work(self, waiter: Waiter, deadline: float) -> bool:
        """True when a claim is worth trying: woken, or a safety re-check (a read, at a jittered
        interval so parked claims do not re-check in waves) sees claimable work. False at the
        deadline or at shutdown."""
        while not self._signals.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if await waiter.wait(min(remaining, self._recheck_s * self._rng.uniform(0.5, 1.5))):
                return True
            if await self._db.read(self._claimable_tx, waiter):
                return True
        return False

    def _claimable_tx(self, conn: Connection, waiter: Waiter) -> bool:
        params = {
            "now": self._clock.now_us(),
            "me": waiter.agent_id,
            "caps": json.dumps(sorted(waiter.capabilities or ())),
            "exec_only": waiter.runs_payloads,
        }
        return conn.execute(self._claimable, params).first() is not None

    def _result(self, outcome: _ClaimOutcome, principal: Principal) -> ClaimResult:
        if outcome.task is not None:
            if tracing.active():
                self._trace_claim(outcome.task, principal)
            return ClaimResult(task=outcome.task)
        return ClaimResult(task=None, reason="at_capacity" if outcome.at_capacity else "none_available")

    def _trace_claim(self, task: TaskView, principal: Principal) -> None:
        now = self._clock.now_us()
        tracing.record_span(
            "task.claim",
            task.traceparent,
            now,
            now,
            {
                "agentfleet.task.id": task.id,
                "agentfleet.task.type": task.type,
                "agentfleet.task.attempt": task.attempts,
                "agentfleet.agent.id": task.agent_id,
                "agentfleet.agent.profile": principal.profile,  # name@version
                "agentfleet.task.estimated_cost_usd": task.estimated_cost_usd,
            },
        )

    def _claim_tx(self, conn: Connection, principal: Principal) -> _ClaimOutcome:
        now = self._clock.now_us()
        agent_id = principal.id
        agent = touch_agent(conn, agent_id, now)
        if agent is None:
            raise PermissionDenied(f"agent {agent_id} is terminated or stopping; it cannot claim work")
        capabilities = frozenset(agent.capabilities)
        runs = bool(agent.runs_payloads)
        if conn.execute(self._held, {"me": agent_id}).scalar_one() >= agent.max_concurrency:
            return _ClaimOutcome(None, capabilities, agent.heartbeat_timeout_s, at_capacity=True, runs_payloads=runs)
        params = {
            "now": now,
            "me": agent_id,
            "caps": json.dumps(sorted(capabilities)),
            "locked": False,
            "exec_only": runs,
        }
        held: list[LockItemView] | None = None
        row = conn.execute(self._take_head, params).first()
        if row is None:
            row, held = self._take_with_resources(conn, params)
        if row is None:
            return _ClaimOutcome(None, capabilities, agent.heartbeat_timeout_s, runs_payloads=runs)
        hold_for_dispatch(conn, agent, row.id, row.estimated_cost_micros, now)
        self._instruments.claimed(row.type, now - row.ready_at)
        conn.execute(
            _START_ATTEMPT, {"task_id": row.id, "number": row.attempts, "agent_id": agent_id, "started_at": now}
        )
        audit.record(conn, now, principal, "task.claim", row.id, {"attempt": row.attempts})
        data = {"type": row.type, "attempt": row.attempts}
        events.emit(conn, now, "task.claimed", row.id, data, actor=principal, agent_id=agent_id, owner=row.submitted_by)
        return _ClaimOutcome(task_view(row, locks=held), capabilities, agent.heartbeat_timeout_s, runs_payloads=runs)

    def _take_with_resources(
        self, conn: Connection, params: dict[str, Any]
    ) -> tuple[Row[Any] | None, list[LockItemView] | None]:
        """The head of the queue needs resources (or the queue is empty): walk the first few heads
        in dispatch order and take the first whose resources can be locked now, together with its
        locks (one device, one execution)."""
        for head in conn.execute(self._heads, params).all():
            held = None
            if head.resources is not None:
                held = self._locks.grant_for_task(conn, params["me"], head.id, head.resources, head.priority)
                if held is None:
                    continue
            row = conn.execute(self._take_one, {**params, "task": head.id, "locked": held is not None}).first()
            if row is None:
                raise Conflict(f"task {head.id} was taken while its locks were granted; retry")
            return row, held
        return None, None

    # -- heartbeat -----------------------------------------------------------------------------
    async def heartbeat(
        self, principal: Principal, task_id: str, progress: int | None = None, message: str | None = None
    ) -> TaskLease:
        agent_id = _require_agent(principal)
        return await self._db.write(self._heartbeat_tx, agent_id, task_id, progress, message)

    def _heartbeat_tx(
        self, conn: Connection, agent_id: str, task_id: str, progress: int | None, message: str | None
    ) -> TaskLease:
        now = self._clock.now_us()
        row = conn.execute(
            _RENEW, {**_held(task_id, agent_id, now), "b_progress": progress, "b_message": message}
        ).first()
        if row is None:
            explain_not_held(conn, task_id, agent_id, now)
        if progress is not None or message is not None:
            data = {"type": row.type, "progress": row.progress, "message": message}
            events.emit(
                conn, now, "task.progress", task_id, data, actor=agent_id, agent_id=agent_id, owner=row.submitted_by
            )
        return TaskLease(
            task_id=task_id,
            lease_expires_at=to_iso(row.lease_expires_at) or "",
            cancel_requested=row.cancel_requested,
            progress=row.progress,
        )

    # -- complete / fail -----------------------------------------------------------------------
    async def complete(self, principal: Principal, task_id: str, result: Any, usage: Any = None) -> TaskView:
        _require_agent(principal)
        return await self._db.write(self._complete_tx, principal, task_id, result, usage)

    def _complete_tx(self, conn: Connection, principal: Principal, task_id: str, result: Any, usage: Any) -> TaskView:
        now = self._clock.now_us()
        agent_id = principal.id
        row = conn.execute(_COMPLETE, {**_held(task_id, agent_id, now), "b_result": result, "b_usage": usage}).first()
        if row is None:
            explain_not_held(conn, task_id, agent_id, now)
        self._end_attempt(conn, row, now, "completed", None)
        if row.has_locks:
            self._locks.release_for_task(conn, row.id, now, agent_id)
        if row.estimated_cost_micros:
            settle_task_hold(conn, row.id, now)
        audit.record(conn, now, principal, "task.complete", task_id, {})
        self._task_ends.ended(conn, row)
        return task_view(row)

    async def fail(self, principal: Principal, task_id: str, error: str, retryable: bool = True) -> TaskView:
        _require_agent(principal)
        view, requeued = await self._db.write(self._fail_tx, principal, task_id, error, retryable)
        self._announce_local(requeued)
        return view

    def _fail_tx(
        self, conn: Connection, principal: Principal, task_id: str, error: str, retryable: bool
    ) -> tuple[TaskView, _Requeued | None]:
        now = self._clock.now_us()
        agent_id = principal.id
        query = select(tasks).where(*_HELD_BY).params(_held(task_id, agent_id, now))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            explain_not_held(conn, task_id, agent_id, now)
        outcome = "cancelled" if row.cancel_requested else "failed"
        view, requeued = self._end_lease(conn, row, now, outcome=outcome, error=error, retryable=retryable)
        audit.record(conn, now, principal, "task.fail", task_id, {"retryable": retryable, "status": view.status})
        return view, requeued

    # -- reaper --------------------------------------------------------------------------------
    async def reap_once(self) -> int:
        """End every lapsed lease: retry, dead, or cancelled. Safe to run on every replica."""
        ended = await self._db.write(self._reap_tx)
        for requeued in ended:
            self._announce_local(requeued)
        return len(ended)

    def _reap_tx(self, conn: Connection) -> list[_Requeued | None]:
        now = self._clock.now_us()
        ended: list[_Requeued | None] = []
        for row in conn.execute(self._lapsed, {"now": now}).all():
            outcome = "cancelled" if row.cancel_requested else "expired"
            _, requeued = self._end_lease(
                conn,
                row,
                now,
                outcome=outcome,
                error=f"lease expired (held by {row.agent_id})",
                retryable=True,
                lapsed=True,
            )
            audit.record(conn, now, REAPER, "task.lease_expired", row.id, {"agent_id": row.agent_id})
            ended.append(requeued)
        return ended

    def release_held_by(self, conn: Connection, agent_ids: list[str], now: int) -> list[_Requeued | None]:
        """Leases of agents that are gone end now: the work goes back to the queue (or dead if out
        of attempts). Runs inside the caller's transaction."""
        if not agent_ids:
            return []
        rows = conn.execute(
            select(tasks).where(tasks.c.agent_id.in_(agent_ids), tasks.c.status == TaskStatus.RUNNING.value)
        ).all()
        return [
            self._end_lease(
                conn,
                row,
                now,
                outcome="released",
                error=f"agent {row.agent_id} terminated",
                retryable=True,
                immediate=True,
            )[1]
            for row in rows
        ]

    # -- shared --------------------------------------------------------------------------------
    def _end_lease(
        self,
        conn: Connection,
        row: Row[Any],
        now: int,
        *,
        outcome: str,
        error: str,
        retryable: bool,
        lapsed: bool = False,
        immediate: bool = False,
    ) -> tuple[TaskView, _Requeued | None]:
        """Move a running task to its next status: cancelled, queued (retry), dead or failed."""
        requeued = None
        values: dict[str, Any] = {"lease_expires_at": None, "updated_at": now}
        if row.cancel_requested:
            values.update(status=TaskStatus.CANCELLED.value, finished_at=now)
        elif retryable and row.attempts < row.max_attempts:
            delay = (
                0 if immediate else backoff_delay_us(row.attempts, row.backoff_base_ms, row.backoff_cap_ms, self._rng)
            )
            values.update(status=TaskStatus.QUEUED.value, ready_at=now + delay, error=error)
            requeued = _Requeued(list(row.capabilities), row.pinned_agent_id, now + delay)
        elif retryable:
            values.update(
                status=TaskStatus.DEAD.value,
                finished_at=now,
                error=f"{error} (attempt {row.attempts} of {row.max_attempts}; no attempts left)",
            )
        else:
            values.update(status=TaskStatus.FAILED.value, finished_at=now, error=error)
        guard = [tasks.c.id == row.id, tasks.c.status == TaskStatus.RUNNING.value, tasks.c.agent_id == row.agent_id]
        if lapsed:
            guard.append(tasks.c.lease_expires_at <= now)
        updated = conn.execute(update(tasks).where(*guard).values(**values).returning(*tasks.c)).first()
        if updated is None:
            raise Conflict(f"task {row.id} changed while it was being ended; retry")
        self._end_attempt(conn, row, now, outcome, error)
        if row.has_locks:
            self._locks.release_for_task(conn, row.id, now, REAPER.id if lapsed else row.agent_id)
        if row.estimated_cost_micros:
            settle_task_hold(conn, row.id, now)
        if requeued is not None:
            announce_ready(conn, self._signals, requeued.capabilities, requeued.pinned, requeued.ready_at)
            data = {"type": row.type, "attempt": row.attempts, "error": error, "outcome": outcome}
            actor = REAPER.id if lapsed else row.agent_id
            events.emit(
                conn, now, "task.retrying", row.id, data, actor=actor, agent_id=row.agent_id, owner=row.submitted_by
            )
        else:
            self._task_ends.ended(conn, updated)
        return task_view(updated), requeued

    def _end_attempt(self, conn: Connection, row: Row[Any], now: int, outcome: str, error: str | None) -> None:
        started = conn.execute(
            _END_ATTEMPT,
            {"b_task": row.id, "b_number": row.attempts, "b_now": now, "b_outcome": outcome, "b_error": error},
        ).scalar()
        self._instruments.attempt_ended(row.type, outcome, None if started is None else now - started)
        if started is not None and row.traceparent is not None and tracing.active():
            cost = row.estimated_cost_micros
            tracing.record_span(
                f"task.attempt {row.attempts}",
                row.traceparent,
                started,
                now,
                {
                    "agentfleet.task.id": row.id,
                    "agentfleet.task.type": row.type,
                    "agentfleet.task.attempt": row.attempts,
                    "agentfleet.agent.id": row.agent_id,
                    "agentfleet.attempt.outcome": outcome,
                    "agentfleet.task.estimated_cost_usd": None if cost is None else str(usd(cost)),
                },
                error=None if outcome == "completed" else (error or outcome),
            )

    def announce_requeued(self, released: list[_Requeued | None]) -> None:
        """After a commit that released leases: wake local claimers for the requeued work."""
        for requeued in released:
            self._announce_local(requeued)

    def _announce_local(self, requeued: _Requeued | None) -> None:
        if requeued is not None:
            self._signals.task_ready(
                frozenset(requeued.capabilities), requeued.pinned, requeued.ready_at, self._clock.now_us()
            )
