"""Fleet tools."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from server.domain.views import FleetStatus
from tools.annotations import READ_ONLY
from tools.context import FleetContext, caller, services_of


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def fleet_status(ctx: FleetContext) -> FleetStatus:
        """Summarise the whole fleet: how many agents are in each status, and how many tasks are in
        each status broken down by priority. Use it first to get your bearings, or to check whether
        work is piling up."""
        await caller(ctx)
        return await services_of(ctx).fleet.status()
