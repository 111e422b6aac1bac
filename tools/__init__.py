"""The MCP tool surface, one module per area. Each tool: typed args -> one service call -> typed result."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer, RequestStateSecurity

from server import __version__
from server.metrics import Metrics
from server.services.container import Services
from tools import (
    agents,
    budgets,
    events,
    fleet,
    governance,
    locks,
    messages,
    notifications,
    profiles,
    resources,
    tasks,
    triggers,
    workflows,
)
from tools.context import AppState
from tools.server import FleetMCPServer

INSTRUCTIONS = """agentfleet orchestrates a fleet of AI agents.
Spawn agents from profiles (agent_spawn), queue work for them (task_submit), follow it (task_get,
task_list, fleet_status). Agents call back with their own token (agent_heartbeat and the task tools)
and coordinate over shared things with leased, fenced locks (lock_acquire, lock_release).
Budgets cap spend per scope: reserve before spending (budget_reserve), record it (usage_record).
Errors start with a stable code: not_found, invalid_input, conflict, permission_denied, …"""


def _shared_state_key(services: Services) -> RequestStateSecurity:
    """Replicas share the admin token, so they derive the same key for sealing the MCP request
    state that a 2026-07-28 client echoes back (possibly to another replica)."""
    key = hashlib.sha256(b"agentfleet-mcp-request-state:" + services.auth.admin_token_bytes).hexdigest()
    return RequestStateSecurity(keys=[key])


def build_mcp(
    services: Services, metrics: Metrics, *, default_token: str | None = None, http: bool = False
) -> MCPServer[AppState]:
    """http=True installs bearer auth (every request needs a token); otherwise calls act as
    `default_token`'s principal, or admin when it is None (stdio, in-process)."""

    # Over HTTP the app's middleware verifies every request's token before MCP sees it; the MCP
    # SDK's own OAuth pieces stay off, so no metadata names an authorization server that is not there.
    state = AppState(services=services, default_token=default_token, requires_token=http)

    @asynccontextmanager
    async def lifespan(_server: MCPServer[AppState]) -> AsyncIterator[AppState]:
        yield state

    mcp = FleetMCPServer(
        "agentfleet",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        metrics=metrics,
        state=state,
        request_state_security=_shared_state_key(services),
    )
    areas = (fleet, agents, tasks, locks, budgets, workflows, governance, resources, events, triggers, messages)
    for area in (*areas, notifications, profiles):
        area.register(mcp)
    return mcp
