"""Agent tools: spawn, list, get, terminate, heartbeat."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.statuses import AgentStatus
from server.domain.views import AgentList, AgentView, SpawnedAgent, TerminatedAgents
from tools.annotations import DESTRUCTIVE, READ_ONLY, WRITES
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of

AgentId = Annotated[
    str, Field(min_length=5, max_length=40, pattern=r"^agt_[0-9A-Z]+$", description="an agent id, agt_…")
]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def agent_spawn(
        ctx: FleetContext,
        profile: Annotated[
            str,
            Field(
                min_length=1,
                max_length=120,
                description="profile name, optionally with @version (e.g. 'developer' or 'developer@1.0.0')",
            ),
        ],
        name: Annotated[str | None, Field(description="a readable name; generated when omitted")] = None,
        capabilities: Annotated[
            list[str], Field(max_length=64, description="capabilities to add to the profile's")
        ] = [],  # noqa: B006
        parent_id: Annotated[
            str | None,
            Field(
                description="make the new agent a child of this agent (admin only; "
                "an agent's own spawns are always its children)"
            ),
        ] = None,
        labels: Annotated[dict[str, str], Field(description="free-form key/value labels")] = {},  # noqa: B006
        pools: Annotated[
            list[str],
            Field(max_length=16, description="budget pools to join besides the profile's (scopes pool:<name>)"),
        ] = [],  # noqa: B006
        reason: Reason = None,
    ) -> SpawnedAgent:
        """Register a new agent from a profile and get its bearer token. The token is returned only
        this once and is stored only as a hash: hand it to whatever runs the agent. With the
        `external` runtime the caller runs the agent, which then calls back with the token
        (agent_heartbeat, task tools). An agent that spawns another becomes its parent. A hard budget
        over the new agent (its parent's, its profile's, its pools', global) at its block threshold
        refuses the spawn with budget_exceeded."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).agents.spawn(principal, profile, name, capabilities, parent_id, labels, pools)

    @mcp.tool(annotations=READ_ONLY)
    async def agent_list(
        ctx: FleetContext,
        status: Annotated[AgentStatus | None, Field(description="only agents in this status")] = None,
        profile: Annotated[str | None, Field(description="only agents of this profile name")] = None,
        parent_id: Annotated[str | None, Field(description="only direct children of this agent")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> AgentList:
        """List agents, oldest first, optionally filtered. An agent's token sees itself and its
        descendants; the admin sees all."""
        principal = await caller(ctx)
        return AgentList(agents=await services_of(ctx).agents.list(principal, status, profile, parent_id, limit))

    @mcp.tool(annotations=READ_ONLY)
    async def agent_get(ctx: FleetContext, agent_id: AgentId) -> AgentView:
        """Show one agent: profile, capabilities, status, last heartbeat, parent and children."""
        principal = await caller(ctx)
        return await services_of(ctx).agents.get(principal, agent_id)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def agent_terminate(
        ctx: FleetContext,
        agent_id: AgentId,
        cascade: Annotated[
            bool,
            Field(
                description="also terminate every live descendant (default true); "
                "false refuses when live children exist"
            ),
        ] = True,
        reason: Reason = None,
    ) -> TerminatedAgents:
        """Terminate an agent: its token stops working at once and tasks it was running go back to
        the queue. By default its descendants are terminated too."""
        principal = await caller(ctx, reason)
        return TerminatedAgents(terminated=await services_of(ctx).agents.terminate(principal, agent_id, cascade))

    @mcp.tool(annotations=WRITES)
    async def agent_heartbeat(ctx: FleetContext) -> AgentView:
        """Tell the orchestrator the calling agent is alive. Any call with the agent's token counts,
        so an agent that is busy calling other tools need not; an idle one calls this at least once
        per heartbeat timeout of its profile, or it becomes unresponsive and loses its leases,
        locks and holds. Returns the agent (starting or unresponsive -> active)."""
        principal = await caller(ctx)
        return await services_of(ctx).agents.heartbeat(principal)
