"""Task tools: submit, get, list, cancel."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field, ValidationError

from server.domain.priority import Priority
from server.domain.resources import MAX_RESOURCES, ResourceRequest
from server.domain.statuses import TaskStatus
from server.domain.task_spec import TASK_TYPE_PATTERN, TaskSpec
from server.domain.views import (
    ClaimResult,
    FeedbackView,
    TaskLease,
    TaskList,
    TaskLogReceipt,
    TaskReceipt,
    TaskView,
    TaskWaitResult,
)
from server.errors import InvalidInput
from server.services.task_logs import (
    MAX_LINE_CHARS,
    MAX_LINES_PER_CALL,
    MAX_TEXT_CHARS,
    as_lines,
)
from server.services.waiting import MAX_TASKS, MAX_WAIT_S, OnChange
from tools.annotations import DESTRUCTIVE, IDEMPOTENT_WRITE, READ_ONLY, WRITES
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of

TaskId = Annotated[str, Field(min_length=5, max_length=40, pattern=r"^tsk_[0-9A-Z]+$", description="a task id, tsk_…")]
WaitS = Annotated[
    float,
    Field(ge=0, le=MAX_WAIT_S, description="wait up to this long for the task to end (0: answer at once)"),
]
Until = Annotated[
    list[TaskStatus] | None,
    Field(max_length=7, description="also return when the task reaches one of these, e.g. [running]"),
]


def progress_reporter(ctx: FleetContext) -> OnChange:
    """While a call waits, each change of the task goes to the client as a progress notification
    (when the client sent a progress token): the holder's task_heartbeat progress and message."""

    async def report(view: TaskView) -> None:
        message = f"{view.id} {view.status}" + (f": {view.progress_message}" if view.progress_message else "")
        await ctx.report_progress(float(view.progress or 0), 100.0, message)

    return report


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def task_submit(
        ctx: FleetContext,
        type: Annotated[
            str, Field(pattern=TASK_TYPE_PATTERN, description="what kind of work, e.g. 'review' or 'build'")
        ],
        payload: Annotated[Any, Field(description="the task's input, any JSON (size-bounded)")] = None,
        capabilities: Annotated[
            list[str], Field(max_length=64, description="capabilities an agent must have to take it")
        ] = [],  # noqa: B006
        priority: Annotated[Priority, Field(description="critical > high > normal > low")] = Priority.NORMAL,
        pinned_agent_id: Annotated[str | None, Field(description="only this agent may take the task")] = None,
        max_attempts: Annotated[int, Field(ge=1, le=100, description="attempts before the task is dead")] = 3,
        idempotency_key: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=200,
                description="resubmitting the same key and spec returns the same "
                "task; the same key with another spec is a conflict",
            ),
        ] = None,
        not_before: Annotated[
            datetime | None, Field(description="ISO 8601 UTC time before which no agent may claim it")
        ] = None,
        lease_s: Annotated[
            int, Field(ge=5, le=3600, description="lease length in seconds; task_heartbeat renews it")
        ] = 60,
        backoff_base_s: Annotated[
            float, Field(ge=0.01, le=3600, description="retry delay base (exponential, full jitter)")
        ] = 1.0,
        backoff_cap_s: Annotated[float, Field(ge=0.01, le=86400, description="largest retry delay")] = 300.0,
        allow_unroutable: Annotated[
            bool,
            Field(
                description="queue it even if no live agent or profile has its "
                "capabilities (shown as unroutable in fleet_status)"
            ),
        ] = False,
        resources: Annotated[
            list[ResourceRequest],
            Field(
                max_length=MAX_RESOURCES,
                description="resources the task needs, [{name, mode}]: it is handed to an agent only together "
                "with their locks, whose fencing tokens come with the claimed task (released when it ends)",
            ),
        ] = [],  # noqa: B006
        estimated_cost_usd: Annotated[
            Decimal | None,
            Field(
                ge=0,
                description="what one attempt may cost: set aside from the claiming agent's budgets when it is "
                "dispatched (the claim fails with budget_exceeded if a hard budget cannot cover it) and settled "
                "with the usage recorded for the task when the attempt ends",
            ),
        ] = None,
        requires_approval: Annotated[
            bool,
            Field(
                description="hold it in pending_approval until an admin or operator approves it (approval_decide); "
                "profiles and budgets can also require approval"
            ),
        ] = False,
        wait_s: Annotated[
            float,
            Field(
                ge=0,
                le=MAX_WAIT_S,
                description="delegate and wait: return when the task ends (with its result) or after this long",
            ),
        ] = 0,
        timeout_s: Annotated[
            int | None,
            Field(
                ge=1,
                le=7 * 86_400,
                description="wall-clock limit of one attempt in seconds, for whoever runs it "
                "(agentfleet worker kills the command and fails the attempt, retryable)",
            ),
        ] = None,
        reason: Reason = None,
    ) -> TaskReceipt:
        """Queue a unit of work for the fleet. An agent whose capabilities include all of the task's
        claims it (task_claim), highest priority first, FIFO within a priority. A task no live agent
        and no profile could run is refused unless allow_unroutable. Failed attempts are retried
        with backoff up to max_attempts, then the task is dead. Returns a receipt (id, status,
        priority, ready_at, …), not the payload you sent. With wait_s the call returns when the task
        ends, with its result or error (or at wait_s with the status then): no polling."""
        principal = await caller(ctx, reason)
        try:
            spec = TaskSpec(
                type=type,
                payload=payload,
                capabilities=tuple(capabilities),
                priority=priority,
                pinned_agent_id=pinned_agent_id,
                max_attempts=max_attempts,
                idempotency_key=idempotency_key,
                not_before=not_before,
                lease_s=lease_s,
                backoff_base_s=backoff_base_s,
                backoff_cap_s=backoff_cap_s,
                allow_unroutable=allow_unroutable,
                resources=tuple(resources),
                estimated_cost_usd=estimated_cost_usd,
                requires_approval=requires_approval,
                timeout_s=timeout_s,
            )
        except ValidationError as exc:
            raise InvalidInput(f"task spec: {exc.errors()[0]['msg']}") from exc
        services = services_of(ctx)
        submitted = await services.tasks.submit(principal, spec)
        if wait_s <= 0:
            return TaskReceipt.of(submitted)
        ended = await services.waits.task(principal, submitted.id, wait_s, on_change=progress_reporter(ctx))
        receipt = TaskReceipt.of(ended)
        return receipt.model_copy(
            update={"result": ended.result, "error": ended.error, "finished_at": ended.finished_at}
        )

    @mcp.tool(annotations=READ_ONLY)
    async def task_get(ctx: FleetContext, task_id: TaskId, wait_s: WaitS = 0, until: Until = None) -> TaskView:
        """Show one task: status, who holds it, attempts, result or error, and the newest lines of its
        log (task_log). With wait_s, wait for it to end (completed, failed, dead, cancelled) or reach a
        status in `until`, instead of polling: the call returns as soon as that happens, on any
        replica, or at wait_s with the task as it is."""
        principal = await caller(ctx)
        services = services_of(ctx)
        if wait_s <= 0:
            return await services.tasks.get(principal, task_id)
        wanted = frozenset(s.value for s in until or ())
        return await services.waits.task(principal, task_id, wait_s, wanted, progress_reporter(ctx))

    @mcp.tool(annotations=READ_ONLY)
    async def task_wait(
        ctx: FleetContext,
        task_ids: Annotated[list[TaskId], Field(min_length=1, max_length=MAX_TASKS, description="tasks to wait on")],
        mode: Annotated[Literal["any", "all"], Field(description="return when any one ends, or when all have")] = "all",
        wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S, description="the longest to wait")] = 60,
    ) -> TaskWaitResult:
        """Wait on several tasks at once (a fan-out you handed to sub-agents): returns when any or all
        of them have ended, or at wait_s, with each task as it stands and whether the wait was met."""
        principal = await caller(ctx)
        outcome = await services_of(ctx).waits.tasks(principal, task_ids, mode, wait_s)
        return TaskWaitResult(tasks=outcome.tasks, done=outcome.done)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def task_feedback(
        ctx: FleetContext,
        task_id: TaskId,
        rating: Annotated[
            Literal["good", "bad"] | Annotated[int, Field(strict=True, ge=1, le=5)],
            Field(description="good or bad, or a score 1 (worst) to 5 (best)"),
        ],
        note: Annotated[str | None, Field(max_length=2000, description="why, in a sentence or two")] = None,
        tags: Annotated[
            list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]],
            Field(max_length=16, description="labels such as wrong-format or too-slow"),
        ] = [],  # noqa: B006
        reason: Reason = None,
    ) -> FeedbackView:
        """Rate a finished task (completed, failed or dead). One feedback per caller per task:
        giving it again replaces yours. For the task's submitter, an operator, or an agent that
        submitted it (a reviewer); the agent that ran it may not rate its own work. Shown on
        task_get, counted in scorecard and profile_compare, audited."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).feedback.give(principal, task_id, rating, note, tags)

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
        """Cancel a task you submitted (an operator: any task). A queued task, or one waiting for
        approval, is cancelled at once; a running one is asked to stop (its holder learns it on its
        next heartbeat)."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).tasks.cancel(principal, task_id, reason)

    @mcp.tool(annotations=WRITES)
    async def task_claim(
        ctx: FleetContext,
        wait_s: Annotated[
            float, Field(ge=0, le=60, description="long-poll: wait up to this long for a task (0: answer at once)")
        ] = 0,
    ) -> ClaimResult:
        """Take the next task this agent can run (agent token only): the highest-priority queued task
        whose capabilities the agent has, FIFO within a priority, leased to the agent until
        lease_expires_at. Renew the lease with task_heartbeat and finish with task_complete or
        task_fail. With wait_s > 0 the call waits for work and returns as soon as some is queued, or
        after wait_s — at most half the agent's heartbeat timeout, so calling again keeps it alive.
        Returns task=null with reason 'none_available', or 'at_capacity' when the agent already
        holds its profile's max_concurrency leases. Fails with budget_exceeded (the task stays queued)
        when a hard budget over the agent is at its block threshold or cannot cover the task's
        estimated_cost_usd."""
        principal = await caller(ctx)
        return await services_of(ctx).leases.claim(principal, wait_s)

    @mcp.tool(annotations=WRITES)
    async def task_heartbeat(
        ctx: FleetContext,
        task_id: TaskId,
        progress: Annotated[int | None, Field(ge=0, le=100, description="percent done")] = None,
        message: Annotated[str | None, Field(max_length=2000, description="a progress note")] = None,
    ) -> TaskLease:
        """Renew the lease on a task you hold and record progress. If cancel_requested comes back
        true, stop and call task_fail: the task ends cancelled."""
        principal = await caller(ctx)
        return await services_of(ctx).leases.heartbeat(principal, task_id, progress, message)

    @mcp.tool(annotations=WRITES)
    async def task_complete(
        ctx: FleetContext,
        task_id: TaskId,
        result: Annotated[Any, Field(description="the task's output, any JSON")] = None,
        usage: Annotated[
            dict[str, Any] | None,
            Field(description="what the work consumed, e.g. {model, input_tokens, output_tokens}"),
        ] = None,
        reason: Reason = None,
    ) -> TaskView:
        """Finish a task you hold with its result. Only the lease holder may; a lapsed lease answers
        lease_expired (the task is being retried elsewhere)."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).leases.complete(principal, task_id, result, usage)

    @mcp.tool(annotations=WRITES)
    async def task_fail(
        ctx: FleetContext,
        task_id: TaskId,
        error: Annotated[str, Field(min_length=1, max_length=10_000, description="what went wrong")],
        retryable: Annotated[
            bool,
            Field(description="true: retry with backoff while attempts remain (then dead); false: the task fails now"),
        ] = True,
        reason: Reason = None,
    ) -> TaskView:
        """Give up on a task you hold. Retryable failures go back to the queue after a backoff delay
        until max_attempts is used up (then the task is dead); others fail at once."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).leases.fail(principal, task_id, error, retryable)

    @mcp.tool(annotations=WRITES)
    async def task_log(
        ctx: FleetContext,
        task_id: TaskId,
        lines: Annotated[
            list[Annotated[str, Field(max_length=MAX_LINE_CHARS)]] | None,
            Field(min_length=1, max_length=MAX_LINES_PER_CALL, description="log lines, oldest first"),
        ] = None,
        text: Annotated[
            str | None,
            Field(min_length=1, max_length=MAX_TEXT_CHARS, description="instead of lines: text, split at line breaks"),
        ] = None,
        level: Annotated[
            Literal["debug", "info", "warning", "error"], Field(description="the level of every line in this call")
        ] = "info",
    ) -> TaskLogReceipt:
        """Append log lines to the attempt you hold on a task (agent token, lease holder only): what
        the work is doing, for whoever follows it (task_get shows the newest lines). Give `lines` or
        `text`, up to 200 lines of 4,000 characters per call; an attempt keeps its newest 1,000
        lines. agentfleet worker sends its command's stderr here."""
        principal = await caller(ctx)
        return await services_of(ctx).task_logs.append(principal, task_id, as_lines(lines, text), level)
