"""Fleet-wide summaries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from server.clock import Clock
from server.domain.priority import Priority
from server.domain.statuses import AgentStatus, TaskStatus
from server.domain.views import FleetStatus
from server.services.budget_views import budget_summaries
from server.store import migrate
from server.store.database import Database
from server.store.tables import agents, tasks

_agents_by_status = select(agents.c.status, func.count()).group_by(agents.c.status)
_tasks_by_status = select(tasks.c.status, tasks.c.priority, func.count()).group_by(tasks.c.status, tasks.c.priority)
_unroutable = (
    select(func.count())
    .select_from(tasks)
    .where(tasks.c.status == TaskStatus.QUEUED.value, tasks.c.unroutable.is_(True))
)


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

    def counts_sync(self) -> FleetStatus:
        """For the metrics scrape, which runs in a worker thread already."""
        return self._db.read_sync(self._status_tx)
