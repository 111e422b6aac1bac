"""Waiting for work to finish, so a caller need not poll: a task or a workflow run reaching a final
state (or a state the caller names), or several tasks at once.

A waiter re-reads what it waits for only when an event names it (server/services/events/wakeups.py:
a commit here, or another replica's event through the log), plus a re-check every
AGENTFLEET_CLAIM_RECHECK_S for a notification lost with a dropped connection. A caller that goes
away (its MCP request cancelled) leaves at once: the watch ends with the coroutine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Literal

from server.domain.principal import Principal
from server.domain.statuses import TaskStatus
from server.domain.views import TaskView, WorkflowView
from server.domain.workflow_status import RunStatus
from server.errors import InvalidInput
from server.services.signals import KeyedSignals
from server.services.tasks import TaskService
from server.services.workflows import WorkflowService

MAX_WAIT_S = 300
MAX_TASKS = 100
FINAL_TASK = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD})
FINAL_RUN = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

OnChange = Callable[[TaskView], Awaitable[None]]


@dataclass(frozen=True)
class TaskWaitOutcome:
    tasks: list[TaskView]
    done: bool  # the wait's condition held (any / all ended) before the deadline


def _task_reached(view: TaskView, until: frozenset[str]) -> bool:
    return view.status in FINAL_TASK or view.status in until


class WaitService:
    def __init__(self, tasks: TaskService, workflows: WorkflowService, changes: KeyedSignals, recheck_s: float) -> None:
        self._tasks = tasks
        self._workflows = workflows
        self._changes = changes
        self._recheck_s = recheck_s

    async def _pause(self, woken: list[asyncio.Event], remaining: float) -> None:
        waits = [asyncio.ensure_future(event.wait()) for event in woken]
        try:
            await asyncio.wait(waits, timeout=min(remaining, self._recheck_s), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def task(
        self,
        principal: Principal,
        task_id: str,
        wait_s: float,
        until: frozenset[str] = frozenset(),
        on_change: OnChange | None = None,
    ) -> TaskView:
        """The task once it is final (or in a status of `until`), or as it stands at the deadline."""
        outcome = await self.tasks(principal, [task_id], "all", wait_s, until, on_change)
        return outcome.tasks[0]

    async def tasks(
        self,
        principal: Principal,
        task_ids: list[str],
        mode: Literal["any", "all"],
        wait_s: float,
        until: frozenset[str] = frozenset(),
        on_change: OnChange | None = None,
    ) -> TaskWaitOutcome:
        if not task_ids or len(task_ids) > MAX_TASKS:
            raise InvalidInput(f"wait on 1 to {MAX_TASKS} tasks; got {len(task_ids)}")
        ids = list(dict.fromkeys(task_ids))
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        test = any if mode == "any" else all
        seen: dict[str, tuple[str, int | None, str | None]] = {}
        with ExitStack() as stack:
            woken = [stack.enter_context(self._changes.watch(task_id)) for task_id in ids]
            while True:
                for event in woken:
                    event.clear()  # before the reads: a change committed after them wakes us again
                views = [await self._tasks.get(principal, task_id) for task_id in ids]
                if on_change is not None:
                    for view in views:
                        mark = (view.status, view.progress, view.progress_message)
                        if seen.get(view.id, mark) != mark:
                            await on_change(view)
                        seen[view.id] = mark
                done = test(_task_reached(view, until) for view in views)
                remaining = deadline - time.monotonic()
                if done or remaining <= 0 or self._changes.closed:
                    return TaskWaitOutcome(views, done)
                await self._pause(woken, remaining)

    async def workflow(
        self, principal: Principal, run_id: str, wait_s: float, until: frozenset[str] = frozenset()
    ) -> WorkflowView:
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        with self._changes.watch(run_id) as woken:
            while True:
                woken.clear()
                view = await self._workflows.get(principal, run_id)
                remaining = deadline - time.monotonic()
                if view.status in FINAL_RUN or view.status in until or remaining <= 0 or self._changes.closed:
                    return view
                with suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, self._recheck_s))
