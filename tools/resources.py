"""MCP resources: an agent or a task as JSON, for clients that attach context by URI."""

from __future__ import annotations

from collections.abc import Awaitable

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import BaseModel

from server.errors import NotFound
from tools.context import FleetContext, caller, services_of


async def _as_json(view: Awaitable[BaseModel]) -> str:
    try:
        return (await view).model_dump_json()
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from exc


def register(mcp: MCPServer) -> None:
    @mcp.resource(
        "agentfleet://agents/{agent_id}",
        mime_type="application/json",
        description="One agent as JSON, with its children",
    )
    async def agent_resource(agent_id: str, ctx: FleetContext) -> str:
        return await _as_json(services_of(ctx).agents.get(await caller(ctx), agent_id))

    @mcp.resource(
        "agentfleet://tasks/{task_id}",
        mime_type="application/json",
        description="One task as JSON: status, holder, attempts, result or error",
    )
    async def task_resource(task_id: str, ctx: FleetContext) -> str:
        return await _as_json(services_of(ctx).tasks.get(await caller(ctx), task_id))
