"""Fleet-wide summaries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, case, func, select

from server.clock import Clock
from server.domain.approval import ApprovalStatus
from server.domain.priority import Priority
from server.domain.statuses import AgentStatus, LockStatus, TaskStatus
from server.domain.views import FleetStatus
from server.domain.workflow_status import RunStatus
from server.services.budget_views import budget_summaries
from server.store import migrate
from server.store.database import Database
from server.store.tables import agents, approvals, locks, tasks, workflow_runs

_agents_by_status = select(agents.c.status, func.count()).group_by(agents.c.status)
_tasks_by_status = select(tasks.c.status, tasks.c.priority, func.count()).group_by(tasks.c.status, tasks.c.priority)
_unroutable = (
    select(func.count())
    .select_from(tasks)
    .where(tasks.c.status == TaskStatus.QUEUED.value, tasks.c.unroutable.is_(True))
)


_ready = tasks.c.ready_at <= bindparam("now")
_queue = (
    select(tasks.c.priority, func.count(), func.min(case((_ready, tasks.c.ready_at))))
    .where(tasks.c.status == TaskStatus.QUEUED.value)
    .group_by(tasks.c.priority)
)
_live_locks = (
    select(locks.c.status, func.count())
    .where(locks.c.status.in_([LockStatus.HELD.value, LockStatus.WAITING.value]))
    .group_by(locks.c.status)
)
_runs_by_status = select(workflow_runs.c.status, func.count()).group_by(workflow_runs.c.status)
_pending_approvals = select(func.count(), func.min(approvals.c.created_at)).where(
    approvals.c.status == ApprovalStatus.PENDING.value
)


@dataclass(frozen=True)
class QueueGauge:
    depth: int  # queued, claimable now or later (backoff, not_before)
    oldest_ready_age_s: float  # how long the longest-waiting claimable task has waited; 0 if none


@dataclass(frozen=True)
class StoreGauges:
    """What the store says now, read at scrape time: every replica reports the same."""

    queue: dict[str, QueueGauge]  # by priority
    locks: dict[str, int]  # held, waiting
    workflow_runs: dict[str, int]  # by status
    approvals_pending: int
    oldest_approval_age_s: float


@dataclass(frozen=True)
class Readiness:
    store: str  # ok | unreachable
    migrations: str  # current | behind | unknown

    @property
    def ready(self) -> bool:
        return self.migrations == "current"


class FleetService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def status(self) -> FleetStatus:
        return await self._db.read(self._status_tx)

    def _status_tx(self, conn: Connection) -> FleetStatus:
        agent_counts = {s.value: 0 for s in AgentStatus}
        for status, count in conn.execute(_agents_by_status):
            agent_counts[status] = count
        task_counts = {s.value: {p.value: 0 for p in Priority} for s in TaskStatus}
        for status, rank, count in conn.execute(_tasks_by_status):
            task_counts[status][Priority.from_rank(rank).value] = count
        return FleetStatus(
            agents=agent_counts,
            tasks=task_counts,
            unroutable=conn.execute(_unroutable).scalar_one(),
            totals={
                "agents": sum(agent_counts.values()),
                "tasks": sum(sum(by_p.values()) for by_p in task_counts.values()),
            },
            budgets=budget_summaries(conn, self._clock.now_us()),
        )

    def readiness_sync(self) -> Readiness:
        """Is the store reachable, and migrated to this release's head?"""
        if not self._db.ping():
            return Readiness("unreachable", "unknown")
        return Readiness("ok", "current" if migrate.is_current(self._db.engine) else "behind")

    async def readiness(self) -> Readiness:
        return await asyncio.get_running_loop().run_in_executor(None, self.readiness_sync)

    def gauges_sync(self) -> StoreGauges:
        """For the metrics scrape (a worker thread): queue, locks, workflows, approvals."""
        return self._db.read_sync(self._gauges_tx)

    def _gauges_tx(self, conn: Connection) -> StoreGauges:
        now = self._clock.now_us()
        queue = {p.value: QueueGauge(0, 0.0) for p in Priority}
        for rank, depth, oldest in conn.execute(_queue, {"now": now}):
            queue[Priority.from_rank(rank).value] = QueueGauge(depth, 0.0 if oldest is None else (now - oldest) / 1e6)
        held = {LockStatus.HELD.value: 0, LockStatus.WAITING.value: 0}
        held.update({status: count for status, count in conn.execute(_live_locks)})
        runs = {s.value: 0 for s in RunStatus}
        runs.update({status: count for status, count in conn.execute(_runs_by_status)})
        pending, oldest_approval = conn.execute(_pending_approvals).one()
        return StoreGauges(
            queue=queue,
            locks=held,
            workflow_runs=runs,
            approvals_pending=pending,
            oldest_approval_age_s=0.0 if oldest_approval is None else (now - oldest_approval) / 1e6,
        )

    def counts_sync(self) -> FleetStatus:
        """For the metrics scrape, which runs in a worker thread already."""
        return self._db.read_sync(self._status_tx)
