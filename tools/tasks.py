"""Task tools: submit, get, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.priority import Priority
from server.domain.statuses import TaskStatus
from server.domain.task_spec import TASK_TYPE_PATTERN, TaskSpec
from server.domain.views import TaskList, TaskView
from tools.annotations import DESTRUCTIVE, READ_ONLY, WRITES
from tools.context import FleetContext, caller, services_of

TaskId = Annotated[str, Field(min_length=5, max_length=40, pattern=r"^tsk_[0-9A-Z]+$", description="a task id, tsk_…")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def task_submit(
        ctx: FleetContext,
        type: Annotated[str, Field(pattern=TASK_TYPE_PATTERN, description="what kind of work, e.g. 'review' or 'build'")],
        payload: Annotated[Any, Field(description="the task's input, any JSON (size-bounded)")] = None,
        capabilities: Annotated[list[str], Field(max_length=64, description="capabilities an agent must have to take it")] = [],  # noqa: B006
        priority: Annotated[Priority, Field(description="critical > high > normal > low")] = Priority.NORMAL,
        pinned_agent_id: Annotated[str | None, Field(description="only this agent may take the task")] = None,
        max_attempts: Annotated[int, Field(ge=1, le=100, description="attempts before the task is dead")] = 3,
        idempotency_key: Annotated[str | None, Field(min_length=1, max_length=200,
                                                     description="resubmitting the same key and spec returns the same "
                                                                 "task; the same key with another spec is a conflict")] = None,
    ) -> TaskView:
        """Queue a unit of work for the fleet. An agent whose capabilities include all of the task's
        takes it. Returns the task; poll task_get (or read agentfleet://tasks/{id}) for its result."""
        principal = await caller(ctx)
        spec = TaskSpec(type=type, payload=payload, capabilities=tuple(capabilities), priority=priority,
                        pinned_agent_id=pinned_agent_id, max_attempts=max_attempts, idempotency_key=idempotency_key)
        return await services_of(ctx).tasks.submit(principal, spec)

    @mcp.tool(annotations=READ_ONLY)
    async def task_get(ctx: FleetContext, task_id: TaskId) -> TaskView:
        """Show one task: status, who holds it, attempts, result or error."""
        principal = await caller(ctx)
        return await services_of(ctx).tasks.get(principal, task_id)

    @mcp.tool(annotations=READ_ONLY)
    async def task_list(
        ctx: FleetContext,
        status: Annotated[TaskStatus | None, Field(description="only tasks in this status")] = None,
        type: Annotated[str | None, Field(max_length=100, description="only tasks of this type")] = None,
        agent_id: Annotated[str | None, Field(description="only tasks held (or last held) by this agent")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Field(max_length=200, description="next_cursor from the previous page")] = None,
    ) -> TaskList:
        """List tasks, newest first, a page at a time. An agent's token sees the tasks it submitted,
        holds or is pinned to; the admin sees all."""
        principal = await caller(ctx)
        page, next_cursor = await services_of(ctx).tasks.list(principal, status, type, agent_id, limit, cursor)
        return TaskList(tasks=page, next_cursor=next_cursor)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def task_cancel(
        ctx: FleetContext,
        task_id: TaskId,
        reason: Annotated[str | None, Field(max_length=1000, description="why; recorded on the task")] = None,
    ) -> TaskView:
        """Cancel a task you submitted. A queued task is cancelled at once; a running one is asked to
        stop (its holder learns it on its next heartbeat)."""
        principal = await caller(ctx)
        return await services_of(ctx).tasks.cancel(principal, task_id, reason)
