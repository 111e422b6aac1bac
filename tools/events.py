"""Event tools: read the fleet's event log from a cursor, waiting for what comes next."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.services.events.log import START, EventQuery
from server.services.events.service import MAX_WAIT_S, EventPage
from tools.annotations import READ_ONLY
from tools.context import FleetContext, caller, services_of

Cursor = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{32}$",
        description="an event cursor (next_cursor or an event's cursor) to read after; omit for the oldest kept",
    ),
]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def event_list(
        ctx: FleetContext,
        types: Annotated[
            list[Annotated[str, Field(max_length=60)]] | None,
            Field(max_length=50, description="event types or families: task.dead, task.*, agent.*, * (all)"),
        ] = None,
        subject: Annotated[
            str | None, Field(max_length=40, description="only events about this id (task, agent, lock, run, …)")
        ] = None,
        after_cursor: Cursor | None = None,
        wait_s: Annotated[
            float,
            Field(ge=0, le=MAX_WAIT_S, description="long-poll: wait up to this long for a first matching event"),
        ] = 0,
        limit: Annotated[int, Field(ge=1, le=500)] = 100,
    ) -> EventPage:
        """The fleet's event log, oldest first after after_cursor: task submitted / claimed / progress /
        retrying / completed / failed / dead / cancelled, workflow started / step_* / completed / failed /
        cancelled, agent spawned / launched / exited / failed / restarted / unresponsive / terminated,
        lock granted / released / expired / timed_out / cancelled, budget.threshold and budget.overspent,
        approval requested / decided / expired / escalated, trigger.fired. Follow it by passing
        next_cursor back as after_cursor with wait_s > 0: the call returns as soon as a matching
        event is committed, on any replica.
        Staff see every event; an agent sees events it caused, that concern it, or about work it submitted.
        GET /events serves the same log as Server-Sent Events."""
        principal = await caller(ctx)
        query = EventQuery(tuple(types or ()), subject, after_cursor or START, limit)
        return await services_of(ctx).events.list(principal, query, wait_s)
