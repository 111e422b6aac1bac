"""MCP resources: an agent or a task as JSON, for clients that attach context by URI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from pydantic import BaseModel

from server.domain.principal import Principal
from server.errors import FleetError, NotFound, Refusal
from tools.context import FleetContext, caller, services_of


async def _read(
    ctx: FleetContext, request: str, arguments: dict[str, str], read: Callable[[Principal], Awaitable[BaseModel]]
) -> str:
    """A resource read passes the same door as the tool it mirrors (`request`), and a refusal is
    audited the same way; errors reach the client as resource errors carrying the stable code."""
    principal = await caller(ctx)
    try:
        await services_of(ctx).gate.admit(principal, request)
        return (await read(principal)).model_dump_json()
    except NotFound as exc:
        raise ResourceNotFoundError(str(exc)) from exc
    except Refusal as exc:
        await services_of(ctx).gate.refused(principal, request, arguments, exc)
        raise ResourceError(str(exc)) from exc
    except FleetError as exc:
        raise ResourceError(str(exc)) from exc


def register(mcp: MCPServer) -> None:
    @mcp.resource(
        "agentfleet://agents/{agent_id}",
        mime_type="application/json",
        description="One agent as JSON, with its children",
    )
    async def agent_resource(agent_id: str, ctx: FleetContext) -> str:
        arguments = {"agent_id": agent_id}
        return await _read(ctx, "agent_get", arguments, lambda who: services_of(ctx).agents.get(who, agent_id))

    @mcp.resource(
        "agentfleet://tasks/{task_id}",
        mime_type="application/json",
        description="One task as JSON: status, holder, attempts, result or error",
    )
    async def task_resource(task_id: str, ctx: FleetContext) -> str:
        arguments = {"task_id": task_id}
        return await _read(ctx, "task_get", arguments, lambda who: services_of(ctx).tasks.get(who, task_id))
