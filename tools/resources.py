"""MCP resources: an agent or a task as JSON, for clients that attach context by URI."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from server.errors import NotFound
from tools.context import FleetContext, caller, services_of


def register(mcp: MCPServer) -> None:
    @mcp.resource("agentfleet://agents/{agent_id}", mime_type="application/json",
                  description="One agent as JSON, with its children")
    async def agent_resource(agent_id: str, ctx: FleetContext) -> str:
        principal = await caller(ctx)
        try:
            view = await services_of(ctx).agents.get(principal, agent_id)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        return view.model_dump_json()

    @mcp.resource("agentfleet://tasks/{task_id}", mime_type="application/json",
                  description="One task as JSON: status, holder, result or error")
    async def task_resource(task_id: str, ctx: FleetContext) -> str:
        principal = await caller(ctx)
        try:
            view = await services_of(ctx).tasks.get(principal, task_id)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        return view.model_dump_json()
