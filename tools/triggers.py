"""Trigger tools: the fleet acting on a schedule, a webhook, its own events or their absence."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.trigger import TriggerKind
from server.services.events.trigger_views import ReplayResult, TriggerCreated, TriggerList, TriggerRunView, TriggerView
from server.services.events.triggers import NAME_PATTERN, TriggerSpec
from tools.annotations import DESTRUCTIVE, READ_ONLY, WRITES
from tools.context import FleetContext, caller, services_of
from tools.events import Cursor

TriggerRef = Annotated[str, Field(min_length=1, max_length=100, description="the trigger's name or id (trg_…)")]
Cron = Annotated[str | None, Field(max_length=120, description="schedule: five cron fields, e.g. '0 */6 * * *'")]
Zone = Annotated[str | None, Field(max_length=60, description="schedule: the cron's IANA time zone (default UTC)")]
Interval = Annotated[int | None, Field(ge=1, le=366 * 86400, description="schedule: every this many seconds")]
CatchUp = Annotated[
    Literal["skip", "one", "all"] | None,
    Field(
        description="schedule, after downtime: skip missed times, fire one for them (default), or all (up to the limit)"
    ),
]
CatchUpLimit = Annotated[int | None, Field(ge=1, le=1000, description="schedule: most missed times fired (all)")]
Overlap = Annotated[
    Literal["skip", "queue"] | None,
    Field(description="schedule: skip a due time while the last run's work is still going (default), or queue it"),
]
EventTypes = Annotated[
    list[Annotated[str, Field(max_length=60)]] | None,
    Field(max_length=50, description="event/absence: event types or families, e.g. task.dead, agent.*"),
]
Filter = Annotated[
    str | None,
    Field(max_length=2000, description="event/absence: a condition on the event, e.g. event.data.type == 'deploy'"),
]
MaxDepth = Annotated[
    int | None, Field(ge=0, le=10, description="event: ignore events caused this many trigger firings deep (3)")
]
Within = Annotated[
    int | None, Field(ge=1, le=31 * 86400, description="absence: fire when no matching event comes for this long")
]
TaskAction = Annotated[
    dict[str, Any] | None,
    Field(
        description="the task to submit when it fires: a task spec (type, payload, capabilities, priority, …); "
        "its payload may hold {{ event.… }} (event triggers) or {{ body.… }} (webhooks, manual fires)"
    ),
]
WorkflowAction = Annotated[
    dict[str, Any] | None,
    Field(
        description="the workflow to run when it fires: {template: 'name@range' or definition: {…}, inputs: {…}}; "
        "inputs may hold {{ event.… }} / {{ body.… }}"
    ),
]


def _config(**given: Any) -> dict[str, Any]:
    return {key: value for key, value in given.items() if value is not None}


def _action(task: dict[str, Any] | None, workflow: dict[str, Any] | None) -> dict[str, Any]:
    return _config(task=task, workflow=workflow)


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def trigger_create(
        ctx: FleetContext,
        name: Annotated[str, Field(pattern=NAME_PATTERN, description="unique; webhooks are POSTed to /hooks/<name>")],
        kind: Annotated[TriggerKind, Field(description="schedule, event, absence or webhook")],
        task: TaskAction = None,
        workflow: WorkflowAction = None,
        cron: Cron = None,
        timezone: Zone = None,
        interval_s: Interval = None,
        catch_up: CatchUp = None,
        catch_up_limit: CatchUpLimit = None,
        overlap: Overlap = None,
        event_types: EventTypes = None,
        filter: Filter = None,
        max_depth: MaxDepth = None,
        within_s: Within = None,
        secret: Annotated[
            str | None, Field(min_length=16, max_length=200, description="webhook: the signing secret (else generated)")
        ] = None,
        enabled: bool = True,
    ) -> TriggerCreated:
        """Make a trigger that creates work (a task or a workflow run) as you, by itself:
        schedule (cron + timezone, or interval_s; exactly once per due time across replicas; catch_up
        and overlap policies), event (on events of event_types matching filter), absence (when no
        such event comes within within_s; once per window) or webhook (POST /hooks/<name>, signed with
        the secret: HMAC-SHA256 in X-Hub-Signature-256, or Authorization: Bearer <secret>; idempotent
        by X-GitHub-Delivery / X-Agentfleet-Delivery / Idempotency-Key). Give exactly one of task or
        workflow. Checked now and at each firing: you must be allowed to create that work. Staff, or
        agents whose profile names the trigger tools."""
        principal = await caller(ctx)
        config = _config(
            cron=cron,
            timezone=timezone,
            interval_s=interval_s,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            overlap=overlap,
            event_types=event_types,
            filter=filter,
            max_depth=max_depth,
            within_s=within_s,
        )
        spec = TriggerSpec(config, _action(task, workflow))
        return await services_of(ctx).triggers.create(principal, name, kind, spec, enabled, secret)

    @mcp.tool(annotations=READ_ONLY)
    async def trigger_list(
        ctx: FleetContext, kind: Annotated[TriggerKind | None, Field(description="only this kind")] = None
    ) -> TriggerList:
        """Triggers by name, with their next fire times (schedules) and how often they fired. Staff see
        all; an agent sees its own."""
        principal = await caller(ctx)
        return await services_of(ctx).triggers.list(principal, kind)

    @mcp.tool(annotations=READ_ONLY)
    async def trigger_get(ctx: FleetContext, trigger: TriggerRef) -> TriggerView:
        """One trigger with its recent firings (when, why, what it created, or the error)."""
        principal = await caller(ctx)
        return await services_of(ctx).triggers.get(principal, trigger)

    @mcp.tool(annotations=WRITES)
    async def trigger_update(
        ctx: FleetContext,
        trigger: TriggerRef,
        enabled: Annotated[bool | None, Field(description="switch it off or on")] = None,
        task: TaskAction = None,
        workflow: WorkflowAction = None,
        cron: Cron = None,
        timezone: Zone = None,
        interval_s: Interval = None,
        catch_up: CatchUp = None,
        catch_up_limit: CatchUpLimit = None,
        overlap: Overlap = None,
        event_types: EventTypes = None,
        filter: Filter = None,
        max_depth: MaxDepth = None,
        within_s: Within = None,
    ) -> TriggerView:
        """Change a trigger. Settings of its kind, when any is given, replace the old settings as a
        whole (give them all); task or workflow replaces the action. A schedule's next due time is
        recomputed; an event trigger switched back on starts from now, not from a backlog."""
        principal = await caller(ctx)
        config = _config(
            cron=cron,
            timezone=timezone,
            interval_s=interval_s,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            overlap=overlap,
            event_types=event_types,
            filter=filter,
            max_depth=max_depth,
            within_s=within_s,
        )
        action = _action(task, workflow)
        return await services_of(ctx).triggers.update(principal, trigger, config or None, action or None, enabled)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def trigger_delete(ctx: FleetContext, trigger: TriggerRef) -> TriggerView:
        """Delete a trigger and its firing history; work it created stays."""
        principal = await caller(ctx)
        return await services_of(ctx).triggers.delete(principal, trigger)

    @mcp.tool(annotations=WRITES)
    async def trigger_fire(
        ctx: FleetContext,
        trigger: TriggerRef,
        input: Annotated[Any, Field(description="what {{ body.… }} reads in the action (any JSON)")] = None,
    ) -> TriggerRunView:
        """Fire a trigger now, by hand (a test, or a run outside its schedule). The work is created as
        the trigger's owner; the run is recorded like any other."""
        principal = await caller(ctx)
        return await services_of(ctx).triggers.fire(principal, trigger, input if input is not None else {})

    @mcp.tool(annotations=WRITES)
    async def event_replay(
        ctx: FleetContext,
        trigger: TriggerRef,
        after_cursor: Cursor,
        before_cursor: Annotated[
            str | None, Field(pattern=r"^[0-9a-f]{32}$", description="stop before this cursor (default: the head)")
        ] = None,
    ) -> ReplayResult:
        """Run an event trigger again over past events in (after_cursor, before_cursor): after fixing
        its action, say. Idempotent: an event replayed once is not fired again by another replay."""
        principal = await caller(ctx)
        return await services_of(ctx).trigger_runner.replay(principal, trigger, after_cursor, before_cursor)
