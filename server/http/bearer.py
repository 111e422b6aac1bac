"""Bearer tokens at the HTTP door: a token becomes the MCP SDK's AccessToken (checked by its
middleware on /mcp, /a2a, /readyz, /metrics), and an AccessToken becomes our Principal again."""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken, TokenVerifier

from server.domain.principal import Principal, Role
from server.services.auth import Authenticator

SCOPE = "fleet"


class FleetTokenVerifier(TokenVerifier):
    """client_id carries the role, subject the principal id, the profile claim an agent's profile."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def verify_token(self, token: str) -> AccessToken | None:
        principal = await self._auth.authenticate(token)
        if principal is None:
            return None
        return AccessToken(
            token=token,
            client_id=principal.role.value,
            subject=principal.id,
            scopes=[SCOPE],
            claims={"profile": principal.profile} if principal.profile else None,
        )


def principal_from(token: AccessToken) -> Principal:
    profile = (token.claims or {}).get("profile")
    return Principal(Role(token.client_id), token.subject or "", profile if isinstance(profile, str) else None)
