"""Tasks: submit, get, list, cancel. Every status change is a conditional UPDATE whose WHERE
clause is the transition table's source set, so a lost race changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy import Connection, Row, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from server import tracing
from server.clock import MICROS, Clock, from_iso
from server.domain.backoff import dispatch_key
from server.domain.capabilities import validate_capabilities
from server.domain.cursor import decode_cursor, encode_cursor
from server.domain.money import to_micros
from server.domain.principal import Principal
from server.domain.resources import parse_all
from server.domain.statuses import LIVE_AGENT_STATUSES, TaskStatus, task_sources
from server.domain.task_spec import TaskSpec, payload_size
from server.domain.views import TaskView
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.ids import APPROVAL, TASK, new_id
from server.services import audit
from server.services.access import AccessPolicy
from server.services.approval_rows import (
    ApprovalTerms,
    approval_of,
    approval_reasons,
    approval_view,
    open_approval,
    terms_for,
    withdraw,
)
from server.services.events import log as events
from server.services.feedback import feedback_of
from server.services.profiles import ProfileRegistry
from server.services.signals import TaskSignals
from server.services.task_ends import TaskEnds
from server.services.task_logs import log_tail
from server.services.task_rows import attempt_history, task_locks, task_view
from server.store.database import Database, after_commit
from server.store.dialect import TASK_CHANNEL, json_subset, notify
from server.store.tables import agents, tasks

_LIVE = [s.value for s in LIVE_AGENT_STATUSES]
_INSERT_TASK = tasks.insert().returning(*tasks.c)
_QUEUE_CANCELLABLE = [s.value for s in task_sources(TaskStatus.CANCELLED) if s is not TaskStatus.RUNNING]


@dataclass(frozen=True)
class WorkflowPlace:
    """Where a task sits in a workflow run: the step, and its item or vote index."""

    run_id: str
    step: str
    index: int
    distinct_group: str | None  # a consensus step's votes go to distinct agents


def announce_ready(
    conn: Connection, signals: TaskSignals, capabilities: list[str], pinned: str | None, ready_at: int
) -> None:
    """Tell other replicas (on commit) that a task is claimable at ready_at."""
    notify(conn, TASK_CHANNEL, {"o": signals.origin, "c": capabilities, "p": pinned, "r": ready_at})


class TaskService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        profiles: ProfileRegistry,
        signals: TaskSignals,
        max_payload_bytes: int,
        priority_aging_s: int,
        access: AccessPolicy,
        approval_terms: ApprovalTerms,
        task_ends: TaskEnds,
    ) -> None:
        self._task_ends = task_ends
        self._db = db
        self._clock = clock
        self._profiles = profiles
        self._access = access
        self._approval_terms = approval_terms
        self._signals = signals
        self._max_payload = max_payload_bytes
        self._aging_us = priority_aging_s * MICROS
        self._agent_covers = text(
            "SELECT 1 FROM orch_agents WHERE status IN ('starting', 'active', 'unresponsive') AND "
            + json_subset(db.dialect, ":need", "orch_agents.capabilities")
            + " LIMIT 1"
        )

    # -- submit --------------------------------------------------------------------------------
    async def submit(self, principal: Principal, spec: TaskSpec, task_id: str | None = None) -> TaskView:
        """Queue a task. `task_id` lets an adapter choose the id (A2A uses its own task id)."""
        checked, task_id = self._checked(principal, spec), task_id or new_id(TASK)
        if tracing.active():
            view = await self._traced_submit(principal, checked, task_id)
        else:
            view = await self._db.write(self._submit_tx, principal, checked, task_id)
        if view.status == TaskStatus.QUEUED:
            self._signals.task_ready(
                frozenset(view.capabilities), view.pinned_agent_id, from_iso(view.ready_at), self._clock.now_us()
            )
        return view

    async def _traced_submit(self, principal: Principal, spec: TaskSpec, task_id: str) -> TaskView:
        """The task's trace starts here (under the caller's, if its call carried one)."""
        attributes = {
            "agentfleet.task.id": task_id,
            "agentfleet.task.type": spec.type,
            "agentfleet.task.priority": spec.priority.value,
            "agentfleet.principal": principal.id,
        }
        with tracing.tracer.start_as_current_span("task.submit", kind=SpanKind.PRODUCER, attributes=attributes) as span:
            traceparent = tracing.traceparent_of(span)
            view = await self._db.write(self._submit_tx, principal, spec, task_id, None, traceparent)
            span.set_attribute("agentfleet.task.status", view.status)
            return view

    def _checked(self, principal: Principal, spec: TaskSpec) -> TaskSpec:
        size = payload_size(spec.payload)
        if size > self._max_payload:
            raise InvalidInput(
                f"payload is {size} bytes; the limit is {self._max_payload} (AGENTFLEET_MAX_PAYLOAD_BYTES)"
            )
        self._access.check_task_type(principal, spec.type)
        if spec.resources:
            parse_all(spec.resources)  # malformed or overlapping names are refused before anything is written
            self._access.check_lock_names(principal, [r.name for r in spec.resources])
        capabilities = tuple(validate_capabilities(spec.capabilities))
        self._access.check_capabilities(principal, capabilities)
        return spec.model_copy(update={"capabilities": capabilities})

    def submit_in(
        self, conn: Connection, principal: Principal, spec: TaskSpec, task_id: str, place: WorkflowPlace | None = None
    ) -> TaskView:
        """Submit inside the caller's transaction (a workflow starting a step, a trigger); claimers here are
        woken once it commits."""
        # A workflow's task joins the trace of whatever started the step (the run, or the task before).
        traceparent = tracing.current_traceparent() if tracing.active() else None
        view = self._submit_tx(conn, principal, self._checked(principal, spec), task_id, place, traceparent)
        if view.status == TaskStatus.QUEUED:
            ready = (frozenset(view.capabilities), view.pinned_agent_id, from_iso(view.ready_at))
            after_commit(conn, lambda: self._signals.task_ready(*ready, self._clock.now_us()))
        return view

    def _submit_tx(
        self,
        conn: Connection,
        principal: Principal,
        spec: TaskSpec,
        task_id: str,
        place: WorkflowPlace | None = None,
        traceparent: str | None = None,
    ) -> TaskView:
        now = self._clock.now_us()
        digest = spec.spec_hash()
        if spec.idempotency_key is not None:
            existing = conn.execute(select(tasks).where(tasks.c.idempotency_key == spec.idempotency_key)).first()
            if existing is not None:
                self._check_key_owner(existing, principal, spec.idempotency_key)
                return self._replay(conn, existing, digest, spec.idempotency_key)
        executable = self._access.may_execute(principal)
        if spec.pinned_agent_id is not None:
            self._check_pin(conn, spec.pinned_agent_id, executable)
        unroutable = not self._routable(conn, spec)
        ready_at = max(now, int(spec.not_before.timestamp() * MICROS)) if spec.not_before else now
        needs_approval = approval_reasons(conn, self._access, principal, spec)
        approval_id = new_id(APPROVAL) if needs_approval else None
        values = dict(
            id=task_id,
            type=spec.type,
            payload=spec.payload,
            capabilities=list(spec.capabilities),
            priority=spec.priority.rank,
            status=(TaskStatus.PENDING_APPROVAL if needs_approval else TaskStatus.QUEUED).value,
            pinned_agent_id=spec.pinned_agent_id,
            submitted_by=principal.id,
            created_at=now,
            updated_at=now,
            attempts=0,
            max_attempts=spec.max_attempts,
            cancel_requested=False,
            idempotency_key=spec.idempotency_key,
            spec_hash=digest,
            ready_at=ready_at,
            dispatch_key=dispatch_key(spec.priority.rank, ready_at, self._aging_us),
            lease_s=spec.lease_s,
            backoff_base_ms=int(spec.backoff_base_s * 1000),
            backoff_cap_ms=int(spec.backoff_cap_s * 1000),
            unroutable=unroutable,
            resources=[r.model_dump(mode="json") for r in sorted(spec.resources, key=lambda r: r.name)] or None,
            has_locks=False,
            estimated_cost_micros=None
            if spec.estimated_cost_usd is None
            else to_micros(spec.estimated_cost_usd, "estimated_cost_usd"),
            approval_id=approval_id,
            timeout_s=spec.timeout_s,
            executable=executable,
            traceparent=traceparent,
        )
        if place is not None:
            values.update(
                workflow_run_id=place.run_id,
                workflow_step=place.step,
                workflow_index=place.index,
                distinct_group=place.distinct_group,
            )
        if spec.idempotency_key is None:
            row = conn.execute(_INSERT_TASK, values).one()
        else:
            try:
                with conn.begin_nested():  # a savepoint only where a unique-key race is possible
                    row = conn.execute(_INSERT_TASK, values).one()
            except IntegrityError:
                # Another replica inserted the same idempotency key between our check and insert.
                existing = conn.execute(select(tasks).where(tasks.c.idempotency_key == spec.idempotency_key)).first()
                if existing is None:
                    raise
                self._check_key_owner(existing, principal, spec.idempotency_key)
                return self._replay(conn, existing, digest, spec.idempotency_key)
        approval = None
        if approval_id is not None:
            terms = terms_for(self._access, principal, self._approval_terms)
            opened = open_approval(conn, approval_id, task_id, principal, needs_approval, terms, now)
            approval = approval_view(opened, row)
        else:
            announce_ready(conn, self._signals, list(spec.capabilities), spec.pinned_agent_id, ready_at)
        detail = {"type": spec.type, **({"approval_id": approval.id} if approval else {})}
        audit.record(conn, now, principal, "task.submit", task_id, detail, after=row)
        data = {
            "type": spec.type,
            "priority": spec.priority.value,
            "status": row.status,
            "capabilities": list(spec.capabilities),
        }
        if place is not None:
            data.update(workflow_run_id=place.run_id, step=place.step)
        events.emit(
            conn,
            now,
            "task.submitted",
            task_id,
            data,
            actor=principal,
            agent_id=spec.pinned_agent_id,
            owner=principal.id,
        )
        return task_view(row, approval=approval)

    def _routable(self, conn: Connection, spec: TaskSpec) -> bool:
        """Can some live agent, or some profile an agent could be spawned from, take this task?"""
        need = frozenset(spec.capabilities)
        if spec.pinned_agent_id is not None:
            pinned_caps = conn.execute(
                select(agents.c.capabilities).where(agents.c.id == spec.pinned_agent_id)
            ).scalar()
            if need <= frozenset(pinned_caps or ()):
                return True
        elif (
            any(need <= frozenset(p.capabilities) for p in self._profiles.all())
            or conn.execute(self._agent_covers, {"need": json.dumps(sorted(need))}).first() is not None
        ):
            return True
        if self._profiles.refresh_from(conn):  # a profile registered on another replica may cover it
            return self._routable(conn, spec)
        if spec.allow_unroutable:
            return False
        known = self._profiles.capabilities() | self._live_capabilities(conn)
        missing = sorted(need - known)
        who = f"agent {spec.pinned_agent_id}" if spec.pinned_agent_id else "no live agent and no profile"
        detail = f"missing capabilities {missing}" if missing else f"no single agent has all of {sorted(need)}"
        raise InvalidInput(
            f"{who} can run this task: {detail}. Spawn an agent that has them, or pass "
            "allow_unroutable=true to queue it anyway"
        )

    @staticmethod
    def _live_capabilities(conn: Connection) -> frozenset[str]:
        rows = conn.execute(select(agents.c.capabilities).where(agents.c.status.in_(_LIVE)))
        return frozenset(c for (caps,) in rows for c in caps)

    @staticmethod
    def _check_key_owner(existing: Row[Any], principal: Principal, key: str) -> None:
        """A key another principal used answers nothing about their task, not even its id."""
        if existing.submitted_by != principal.id and not principal.can_operate:
            raise Conflict(f"idempotency_key {key!r} is already taken; choose another")

    @staticmethod
    def _replay(conn: Connection, existing: Row[Any], digest: str, key: str) -> TaskView:
        if existing.spec_hash != digest:
            raise Conflict(f"idempotency_key {key!r} was used for task {existing.id} with a different spec")
        return task_view(existing, approval=approval_of(conn, existing))

    @staticmethod
    def _check_pin(conn: Connection, agent_id: str, executable: bool) -> None:
        pinned = conn.execute(select(agents.c.status, agents.c.runs_payloads).where(agents.c.id == agent_id)).first()
        if pinned is None:
            raise NotFound(f"no agent {agent_id} to pin the task to")
        if pinned.runs_payloads and not executable:
            raise PermissionDenied(
                f"agent {agent_id} runs its tasks' payloads as code; pinning work to it needs "
                "`permissions.execute: true` in your profile, or an operator"
            )
        if pinned.status not in _LIVE:
            raise Conflict(f"agent {agent_id} is not live; a task can be pinned only to a live agent")

    # -- read ----------------------------------------------------------------------------------
    async def get(self, principal: Principal, task_id: str) -> TaskView:
        return await self._db.read(self._get_tx, principal, task_id)

    def _get_tx(self, conn: Connection, principal: Principal, task_id: str) -> TaskView:
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        if not self._may_see(principal, row):
            raise PermissionDenied(f"task {task_id} is not yours: you did not submit it and it is not leased to you")
        return task_view(
            row,
            attempt_history(conn, task_id),
            task_locks(conn, task_id) if row.has_locks else None,
            approval=approval_of(conn, row),
            feedback=feedback_of(conn, task_id),
            log_tail=log_tail(conn, task_id) if row.attempts else [],
        )

    @staticmethod
    def _may_see(principal: Principal, row: Row[Any]) -> bool:
        return principal.sees_all or principal.id in (row.submitted_by, row.agent_id, row.pinned_agent_id)

    async def list(
        self,
        principal: Principal,
        status: TaskStatus | None = None,
        type: str | None = None,
        agent_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[TaskView], str | None]:
        after = decode_cursor(cursor) if cursor else None
        return await self._db.read(self._list_tx, principal, status, type, agent_id, limit, after)

    def _list_tx(
        self,
        conn: Connection,
        principal: Principal,
        status: TaskStatus | None,
        type_: str | None,
        agent_id: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[TaskView], str | None]:
        query = select(tasks).order_by(tasks.c.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        if type_ is not None:
            query = query.where(tasks.c.type == type_)
        if agent_id is not None:
            query = query.where(tasks.c.agent_id == agent_id)
        if after is not None:
            query = query.where(tasks.c.id < after)
        if not principal.sees_all:
            query = query.where(
                or_(
                    tasks.c.submitted_by == principal.id,
                    tasks.c.agent_id == principal.id,
                    tasks.c.pinned_agent_id == principal.id,
                )
            )
        rows = conn.execute(query).all()
        page = [task_view(r) for r in rows[:limit]]
        return page, (encode_cursor(page[-1].id) if len(rows) > limit else None)

    # -- cancel --------------------------------------------------------------------------------
    def cancel_in(self, conn: Connection, task_ids: list[str], reason: str, now: int) -> None:
        """Cancel tasks inside the caller's transaction (a workflow ending a step or a run): those
        waiting end now, running ones are asked to stop. Their ends are not reported back."""
        if task_ids:
            self._cancel_rows(conn, task_ids, f"cancelled: {reason}", now, announce=True)

    @staticmethod
    def _cancel_rows(conn: Connection, task_ids: list[str], error: str, now: int, announce: bool = False) -> int:
        """Those waiting (queued, or for approval) end now and their approvals are withdrawn;
        running ones are cancelled cooperatively: the holder learns it on heartbeat, and the
        reaper ends it when the lease runs out. Returns how many rows changed."""
        waiting = conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(task_ids), tasks.c.status.in_(_QUEUE_CANCELLABLE))
            .values(status=TaskStatus.CANCELLED.value, finished_at=now, updated_at=now, error=error)
            .returning(tasks.c.approval_id, tasks.c.id, tasks.c.type, tasks.c.submitted_by, tasks.c.attempts)
        ).all()
        for row in waiting:
            if row.approval_id is not None:
                withdraw(conn, row.approval_id, now)
            if announce:  # a direct cancel is announced by TaskEnds; one inside a workflow here
                data = {"type": row.type, "status": "cancelled", "attempts": row.attempts, "error": error}
                events.emit(conn, now, "task.cancelled", row.id, data, actor="system", owner=row.submitted_by)
        running = conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(task_ids), tasks.c.status == TaskStatus.RUNNING.value)
            .values(cancel_requested=True, updated_at=now, error=error)
        ).rowcount
        return len(waiting) + running

    async def mark(self, task_id: str) -> tuple[str, int, int | None, str | None] | None:
        """(status, attempts, progress, progress message): what someone following a task compares
        to see that it moved, in one primary-key read. None once the task is gone."""
        return await self._db.read(self._mark_tx, task_id)

    @staticmethod
    def _mark_tx(conn: Connection, task_id: str) -> tuple[str, int, int | None, str | None] | None:
        columns = (tasks.c.status, tasks.c.attempts, tasks.c.progress, tasks.c.progress_message)
        row = conn.execute(select(*columns).where(tasks.c.id == task_id)).first()
        return None if row is None else (row.status, row.attempts, row.progress, row.progress_message)

    async def cancel(self, principal: Principal, task_id: str, reason: str | None = None) -> TaskView:
        return await self._db.write(self._cancel_tx, principal, task_id, reason)

    def _cancel_tx(self, conn: Connection, principal: Principal, task_id: str, reason: str | None) -> TaskView:
        now = self._clock.now_us()
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        if not (principal.can_operate or principal.id == row.submitted_by):
            raise PermissionDenied(f"task {task_id} is not yours to cancel: only its submitter or an operator may")
        error = f"cancelled by {principal.id}" + (f": {reason}" if reason else "")
        if not self._cancel_rows(conn, [task_id], error, now):  # it moved on since we read it: say where
            now_status = conn.execute(select(tasks.c.status).where(tasks.c.id == task_id)).scalar_one()
            raise Conflict(f"task {task_id} is already {now_status}")
        after = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
        audit.record(
            conn, now, principal.because(reason), "task.cancel", task_id, {"reason": reason}, before=row, after=after
        )
        if after.status == TaskStatus.CANCELLED:
            self._task_ends.ended(conn, after)
        return task_view(after, approval=approval_of(conn, after))
