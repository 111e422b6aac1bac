"""What every tool needs from its context: the services and the calling principal."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context

from server.domain.principal import ADMIN, Principal
from server.errors import PermissionDenied
from server.http.bearer import principal_from
from server.services.container import Services


@dataclass
class AppState:
    services: Services
    # The token a stdio (or in-process) session acts with; None means admin.
    default_token: str | None
    # HTTP: every call carries its own verified token; a call without one is never the admin.
    requires_token: bool = False


FleetContext = Context[AppState]

# The principal of the call in progress, resolved once at the door (FleetMCPServer.call_tool).
current_principal: ContextVar[Principal | None] = ContextVar("agentfleet_principal", default=None)


def services_of(ctx: FleetContext) -> Services:
    return ctx.request_context.lifespan_context.services


async def resolve_caller(state: AppState) -> Principal:
    """HTTP: the principal the bearer middleware verified. stdio: admin, or AGENTFLEET_TOKEN's principal."""
    token = get_access_token()
    if token is not None:
        return principal_from(token)
    if state.requires_token:
        raise PermissionDenied("this needs a valid bearer token (Authorization: Bearer <token>)")
    if state.default_token is None:
        return ADMIN
    principal = await state.services.auth.authenticate(state.default_token)
    if principal is None:
        raise PermissionDenied("AGENTFLEET_TOKEN is not a valid token (revoked, expired, or its agent is gone)")
    return principal


async def caller(ctx: FleetContext, reason: str | None = None) -> Principal:
    """The calling principal, carrying the reason it gave (recorded in this call's audit rows)."""
    principal = current_principal.get() or await resolve_caller(ctx.request_context.lifespan_context)
    return principal.because(reason)
