"""Following an orchestrator task as it moves in the store. A follower is woken by the trigger's
notification (PostgreSQL: a change made on any replica, by any code path) or by any local write
(SQLite), and then compares one cheap read with what it last saw. Only as a backstop does it also
look every AGENTFLEET_CLAIM_RECHECK_S: for a change another process made in the same SQLite file
(a stdio session), which nothing here can hear, or a notification lost with the listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

from server.domain.principal import Principal
from server.domain.statuses import TaskStatus
from server.domain.views import TaskView
from server.services.container import Services

FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD})


def mark_of(view: TaskView) -> tuple[str, int, int | None, str | None]:
    return (view.status, view.attempts, view.progress, view.progress_message)


async def changes(services: Services, principal: Principal, seen: TaskView) -> AsyncIterator[TaskView]:
    """Each new view of the task after `seen`, up to and including a final one. Ends early if
    the task disappears or the server shuts down."""
    last = mark_of(seen)
    if seen.status in FINAL:
        return
    with services.task_changes.watch(seen.id) as woken:
        while not services.task_changes.closed:
            woken.clear()  # before the read: a change committed after it wakes us again
            if await services.tasks.mark(seen.id) != last:
                view = await services.tasks.get(principal, seen.id)
                last = mark_of(view)
                yield view
                if view.status in FINAL:
                    return
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), services.settings.claim_recheck_s)
