"""Task rows to views, shared by the task and lease services."""

from __future__ import annotations

from typing import Any, NoReturn

from sqlalchemy import Connection, Row, select

from server.clock import to_iso
from server.domain.money import usd
from server.domain.priority import Priority
from server.domain.statuses import LockStatus, TaskStatus
from server.domain.views import ApprovalView, AttemptView, FeedbackView, LockItemView, TaskLogLine, TaskView
from server.errors import Conflict, LeaseExpired, NotFound, PermissionDenied
from server.store.tables import lock_items, locks, task_attempts, tasks


def task_view(
    row: Row[Any],
    attempts: list[AttemptView] | None = None,
    locks: list[LockItemView] | None = None,
    approval: ApprovalView | None = None,
    feedback: list[FeedbackView] | None = None,
    log_tail: list[TaskLogLine] | None = None,
) -> TaskView:
    # model_construct: the row already satisfies every constraint the model states.
    return TaskView.model_construct(
        id=row.id,
        type=row.type,
        payload=row.payload,
        capabilities=list(row.capabilities),
        priority=Priority.from_rank(row.priority).value,
        status=row.status,
        pinned_agent_id=row.pinned_agent_id,
        agent_id=row.agent_id,
        submitted_by=row.submitted_by,
        created_at=to_iso(row.created_at),
        updated_at=to_iso(row.updated_at),
        started_at=to_iso(row.started_at),
        finished_at=to_iso(row.finished_at),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        lease_expires_at=to_iso(row.lease_expires_at),
        cancel_requested=row.cancel_requested,
        idempotency_key=row.idempotency_key,
        result=row.result,
        error=row.error,
        ready_at=to_iso(row.ready_at),
        lease_s=row.lease_s,
        progress=row.progress,
        progress_message=row.progress_message,
        usage=row.usage,
        unroutable=row.unroutable,
        resources=row.resources,
        estimated_cost_usd=None if row.estimated_cost_micros is None else str(usd(row.estimated_cost_micros)),
        locks=locks,
        attempt_history=attempts,
        approval=approval,
        feedback=feedback,
        timeout_s=row.timeout_s,
        log_tail=log_tail,
        traceparent=row.traceparent,
    )


def attempt_history(conn: Connection, task_id: str) -> list[AttemptView]:
    rows = conn.execute(
        select(task_attempts).where(task_attempts.c.task_id == task_id).order_by(task_attempts.c.number)
    )
    return [
        AttemptView(
            number=r.number,
            agent_id=r.agent_id,
            started_at=to_iso(r.started_at),
            ended_at=to_iso(r.ended_at),
            outcome=r.outcome,
            error=r.error,
        )
        for r in rows
    ]


def task_locks(conn: Connection, task_id: str) -> list[LockItemView]:
    """The resources a task's current attempt holds, with their fencing tokens."""
    rows = conn.execute(
        select(lock_items.c.name, lock_items.c.mode, lock_items.c.fence, lock_items.c.lock_id)
        .select_from(lock_items.join(locks, locks.c.id == lock_items.c.lock_id))
        .where(locks.c.task_id == task_id, locks.c.status == LockStatus.HELD.value)
        .order_by(lock_items.c.name)
    ).all()
    return [LockItemView(name=r.name, mode=r.mode, fence=r.fence, lock_id=r.lock_id) for r in rows]


def explain_not_held(conn: Connection, task_id: str, agent_id: str, now: int) -> NoReturn:
    """A conditional update on a held task matched nothing: say why, in the contract's terms."""
    row = conn.execute(
        select(tasks.c.status, tasks.c.agent_id, tasks.c.submitted_by, tasks.c.lease_expires_at).where(
            tasks.c.id == task_id
        )
    ).first()
    if row is None:
        raise NotFound(f"no task {task_id}")
    if row.agent_id != agent_id:
        raise PermissionDenied(f"task {task_id} is not leased to you")
    if row.status == TaskStatus.RUNNING:
        raise LeaseExpired(f"your lease on {task_id} lapsed; stop work, the task will be retried")
    if row.status == TaskStatus.QUEUED:
        raise LeaseExpired(f"your lease on {task_id} lapsed and the task went back to the queue")
    raise Conflict(f"task {task_id} is already {row.status}")
