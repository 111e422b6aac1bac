"""Agent tools: spawn, list, get, terminate, restart, heartbeat."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.profile import Runtime
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
                description="profile name, optionally with @version or an npm-style range ('developer', "
                "'developer@1.0.0', 'developer@^1'): a name alone follows the name's rollout, else the newest "
                "active version; retired versions are never spawned",
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
        a2a_url: Annotated[
            str | None,
            Field(
                pattern=r"^https?://",
                max_length=2000,
                description="runtime a2a: the remote A2A agent's base URL (overrides the profile's)",
            ),
        ] = None,
        runtime: Annotated[
            Runtime | None,
            Field(description="refuse (invalid_input, nothing created) unless the profile has this runtime"),
        ] = None,
        reason: Reason = None,
    ) -> SpawnedAgent:
        """Create an agent from a profile. The profile's runtime decides who runs it:
        `external` — the caller runs it: the bearer token comes back this once (stored only as a
        hash), and the agent calls back with it (task_claim, agent_heartbeat, …);
        `process` — this server starts the profile's command and supervises it (restarts with
        backoff, agent_get shows pid, restarts, last exit and log tails); no token is returned;
        `a2a` — a remote A2A agent (a2a_url or the profile's): its card's skills become
        capabilities and tasks routed to it are sent over A2A; no token is returned.
        An agent that spawns another becomes its parent. Fails with conflict beyond
        AGENTFLEET_MAX_AGENTS live agents or the parent profile's max_children / max_depth, and
        with budget_exceeded when a hard budget over the new agent is at its block threshold."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).agents.spawn(
            principal, profile, name, capabilities, parent_id, labels, pools, a2a_url, runtime
        )

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
        graceful: Annotated[
            bool,
            Field(
                description="process agents: stop claiming, SIGTERM, let the current task finish for up to the "
                "profile's stop_timeout_s, then SIGKILL (default true); false: SIGKILL at once"
            ),
        ] = True,
        wait_s: Annotated[
            float,
            Field(ge=0, le=600, description="how long to wait for stopping process agents to end before returning"),
        ] = 30,
        reason: Reason = None,
    ) -> TerminatedAgents:
        """Terminate an agent and, by default, its live descendants. An external agent ends at once:
        its token stops working and tasks it was running go back to the queue. A process agent is
        `stopping` while it drains (it claims nothing more), then terminated when its process
        exits; the call waits up to wait_s for that and lists any still stopping."""
        principal = await caller(ctx, reason)
        ended, stopping = await services_of(ctx).agents.terminate(principal, agent_id, cascade, graceful, wait_s)
        return TerminatedAgents(terminated=ended, stopping=stopping)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def agent_restart(ctx: FleetContext, agent_id: AgentId, reason: Reason = None) -> AgentView:
        """Restart a process agent in place: same id, parent and children; its process gets SIGTERM
        (SIGKILL after the profile's stop_timeout_s), then a new process with a new token starts.
        Resets the restart count, and revives an agent that failed after too many restarts."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).agents.restart(principal, agent_id)

    @mcp.tool(annotations=WRITES)
    async def agent_heartbeat(ctx: FleetContext) -> AgentView:
        """Tell the orchestrator the calling agent is alive. Any call with the agent's token counts,
        so an agent that is busy calling other tools need not; an idle one calls this at least once
        per heartbeat timeout of its profile, or it becomes unresponsive and loses its leases,
        locks and holds. Returns the agent (starting or unresponsive -> active)."""
        principal = await caller(ctx)
        return await services_of(ctx).agents.heartbeat(principal)
