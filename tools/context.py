"""What every tool needs from its context: the services and the calling principal."""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context

from server.domain.principal import ADMIN, Principal, Role
from server.errors import PermissionDenied
from server.services.container import Services


@dataclass
class AppState:
    services: Services
    # The token a stdio (or in-process) session acts with; None means admin.
    default_token: str | None


FleetContext = Context[AppState]


def services_of(ctx: FleetContext) -> Services:
    return ctx.request_context.lifespan_context.services


async def caller(ctx: FleetContext) -> Principal:
    """HTTP: the principal the bearer middleware verified. stdio: admin, or AGENTFLEET_TOKEN's principal."""
    token = get_access_token()
    if token is not None:
        return Principal(Role(token.client_id), token.subject or "")
    state = ctx.request_context.lifespan_context
    if state.default_token is None:
        return ADMIN
    principal = await state.services.auth.authenticate(state.default_token)
    if principal is None:
        raise PermissionDenied("AGENTFLEET_TOKEN is not a valid token (revoked, or its agent is gone)")
    return principal
