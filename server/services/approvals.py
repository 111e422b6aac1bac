"""Approvals: a task that needs a person waits in `pending_approval` until an admin or operator
decides, or until its approval expires and the default decision applies (leaving an escalation
event). Deciding and expiring are conditional updates on the pending row, so two deciders (or a
decider and the reaper, on any replica) cannot both win."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, bindparam, select, update

from server.clock import Clock, from_iso
from server.domain.approval import ApprovalStatus, Decision
from server.domain.principal import REAPER, Principal
from server.domain.statuses import TaskStatus
from server.domain.views import ApprovalPage, ApprovalView
from server.errors import Conflict, NotFound, PermissionDenied
from server.ids import EVENT, new_id
from server.instruments import Instruments
from server.services import audit
from server.services.approval_rows import EXPIRY, approval_view
from server.services.events import log as events
from server.services.events.log import note_once
from server.services.signals import TaskSignals
from server.services.task_ends import TaskEnds
from server.services.task_rows import task_view
from server.services.tasks import announce_ready
from server.store.database import Database
from server.store.tables import approvals, tasks

_SWEEP_BATCH = 100
# An approval with the task fields its view shows.
_WITH_TASK = select(approvals, tasks.c.type, tasks.c.estimated_cost_micros).join(
    tasks, tasks.c.id == approvals.c.task_id
)
_LOCK_TASK = select(tasks.c.id).where(tasks.c.id == bindparam("task_id")).with_for_update()
_DUE = (
    select(approvals)
    .where(approvals.c.status == ApprovalStatus.PENDING.value, approvals.c.expires_at <= bindparam("now"))
    .order_by(approvals.c.expires_at)
)


class ApprovalService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        signals: TaskSignals,
        task_ends: TaskEnds,
        instruments: Instruments | None = None,
    ) -> None:
        self._instruments = instruments or Instruments()
        self._task_ends = task_ends
        self._db = db
        self._clock = clock
        self._signals = signals

    async def list(
        self, principal: Principal, status: ApprovalStatus | None, limit: int, after_id: str | None
    ) -> ApprovalPage:
        if not principal.can_operate:
            raise PermissionDenied("approvals are listed and decided by admin and operator principals")
        return await self._db.read(self._list_tx, status, limit, after_id)

    @staticmethod
    def _list_tx(conn: Connection, status: ApprovalStatus | None, limit: int, after_id: str | None) -> ApprovalPage:
        query = _WITH_TASK.order_by(approvals.c.id).limit(limit + 1)
        if status is not None:
            query = query.where(approvals.c.status == status.value)
        if after_id is not None:
            query = query.where(approvals.c.id > after_id)
        rows = conn.execute(query).all()
        page = [approval_view(r, r) for r in rows[:limit]]
        return ApprovalPage(approvals=page, next_after_id=page[-1].id if len(rows) > limit else None)

    async def get(self, principal: Principal, approval_id: str) -> ApprovalView:
        if not principal.can_operate:
            raise PermissionDenied("approvals are read and decided by admin and operator principals")
        return await self._db.read(self._get_tx, approval_id)

    @staticmethod
    def _get_tx(conn: Connection, approval_id: str) -> ApprovalView:
        row = conn.execute(_WITH_TASK.where(approvals.c.id == approval_id)).first()
        if row is None:
            raise NotFound(f"no approval {approval_id}; approval_list shows them")
        return approval_view(row, row)

    async def decide(
        self, principal: Principal, approval_id: str, decision: Decision, note: str | None
    ) -> ApprovalView:
        if not principal.can_operate:
            raise PermissionDenied("approvals are decided by admin and operator principals")
        view, task = await self._db.write(self._decide_tx, principal, approval_id, decision, note)
        self._wake(task)
        return view

    def _decide_tx(
        self, conn: Connection, principal: Principal, approval_id: str, decision: Decision, note: str | None
    ) -> tuple[ApprovalView, Row[Any] | None]:
        now = self._clock.now_us()
        before = conn.execute(select(approvals).where(approvals.c.id == approval_id)).first()
        if before is None:
            raise NotFound(f"no approval {approval_id}; approval_list shows them")
        after = self._settle(conn, before, decision, principal, note, now, expired=False)
        if after is None:  # decided (or withdrawn) since we read it: say by whom, as it is now
            won = conn.execute(select(approvals).where(approvals.c.id == approval_id)).one()
            raise Conflict(f"approval {approval_id} is already {won.status} (by {won.decided_by or 'a task_cancel'})")
        return after

    def _settle(
        self,
        conn: Connection,
        before: Row[Any],
        decision: Decision,
        principal: Principal,
        note: str | None,
        now: int,
        *,
        expired: bool,
    ) -> tuple[ApprovalView, Row[Any] | None] | None:
        """Decide a pending approval and move its task on; None if someone else decided first."""
        decided_by = EXPIRY if expired else principal.id
        # Rows are locked task first, then approval — the order task_cancel takes them in — so a
        # decision and a cancel of the same task wait for each other instead of deadlocking.
        conn.execute(_LOCK_TASK, {"task_id": before.task_id})
        after = conn.execute(
            update(approvals)
            .where(approvals.c.id == before.id, approvals.c.status == ApprovalStatus.PENDING.value)
            .values(status=decision.status.value, decided_by=decided_by, decided_at=now, note=note, expired=expired)
            .returning(*approvals.c)
        ).first()
        if after is None:
            return None
        self._instruments.approval_decided(decision.value, expired, now - before.created_at)
        task = self._move_task(conn, before.task_id, decision, decided_by, note, now)
        audit.record(
            conn,
            now,
            principal,
            "approval.expire" if expired else "approval.decide",
            before.id,
            {"task_id": before.task_id, "decision": decision.value},
            before=before,
            after=after,
        )
        data = {"task_id": before.task_id, "decision": decision.value, "decided_by": decided_by, "note": note}
        kind = "approval.expired" if expired else "approval.decided"
        events.emit(conn, now, kind, before.id, data, actor=principal, owner=before.requested_by)
        return approval_view(after, task), task if decision is Decision.APPROVE else None

    def _move_task(
        self, conn: Connection, task_id: str, decision: Decision, decided_by: str, note: str | None, now: int
    ) -> Row[Any]:
        waiting = [tasks.c.id == task_id, tasks.c.status == TaskStatus.PENDING_APPROVAL.value]
        if decision is Decision.APPROVE:
            values: dict[str, Any] = {"status": TaskStatus.QUEUED.value, "updated_at": now}
        else:
            error = f"approval rejected by {decided_by}" + (f": {note}" if note else "")
            values = {"status": TaskStatus.CANCELLED.value, "updated_at": now, "finished_at": now, "error": error}
        row = conn.execute(update(tasks).where(*waiting).values(values).returning(*tasks.c)).one()
        if decision is Decision.APPROVE:
            announce_ready(conn, self._signals, list(row.capabilities), row.pinned_agent_id, row.ready_at)
        else:
            self._task_ends.ended(conn, row)
        return row

    def _wake(self, task: Row[Any] | None) -> None:
        if task is not None:
            view = task_view(task)
            self._signals.task_ready(
                frozenset(view.capabilities), view.pinned_agent_id, from_iso(view.ready_at), self._clock.now_us()
            )

    async def sweep(self) -> int:
        """Apply the default decision to every approval past its time; each leaves an escalation event."""
        if not await self._db.read(self._anything_due_tx):
            return 0  # the usual case: a read, not a turn at the write lock every reaper round
        released = await self._db.write(self._sweep_tx)
        for task in released:
            self._wake(task)
        return len(released)

    def _anything_due_tx(self, conn: Connection) -> bool:
        return (
            conn.execute(_DUE.with_only_columns(approvals.c.id).limit(1), {"now": self._clock.now_us()}).first()
            is not None
        )

    def _sweep_tx(self, conn: Connection) -> list[Row[Any] | None]:
        now = self._clock.now_us()
        due = conn.execute(_DUE.limit(_SWEEP_BATCH), {"now": now}).all()
        settled: list[Row[Any] | None] = []
        for before in due:
            decision = Decision(before.on_expiry)
            outcome = self._settle(conn, before, decision, REAPER, None, now, expired=True)
            if outcome is None:
                continue  # decided meanwhile, here or on another replica
            self._escalate(conn, before, decision, now)
            settled.append(outcome[1])
        return settled

    @staticmethod
    def _escalate(conn: Connection, approval: Row[Any], decision: Decision, now: int) -> None:
        detail = {
            "task_id": approval.task_id,
            "requested_by": approval.requested_by,
            "applied": decision.value,
            "reasons": list(approval.reasons),
        }
        values = dict(
            id=new_id(EVENT),
            at=now,
            kind="approval.escalated",
            subject=approval.id,
            detail=detail,
            dedupe_key=f"approval:{approval.id}:escalated",
        )
        note_once(conn, values)
