"""Who is calling: the principal the bearer middleware found, carried in the A2A call context."""

from __future__ import annotations

from a2a.server.context import ServerCallContext

from server.domain.principal import Principal
from server.errors import PermissionDenied

PRINCIPAL_KEY = "agentfleet_principal"


def principal_of(context: ServerCallContext | None) -> Principal:
    principal = context.state.get(PRINCIPAL_KEY) if context is not None else None
    if not isinstance(principal, Principal):
        raise PermissionDenied("no authenticated principal on this A2A call")
    return principal
