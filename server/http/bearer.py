"""Bearer tokens at the HTTP door: a token becomes the MCP SDK's AccessToken (checked by its
middleware on /mcp, /a2a, /readyz, /metrics), and an AccessToken becomes our Principal again."""

from __future__ import annotations

import hmac
import json

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.types import ASGIApp, Receive, Scope, Send

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


_UNAUTHORIZED = json.dumps(
    {
        "error": "permission_denied",
        "message": "permission_denied: this needs a valid bearer token (Authorization: Bearer <token>): the admin "
        "token (AGENTFLEET_ADMIN_TOKEN or DATA_DIR/admin.token), a token from `agentfleet token create`, or an "
        "agent's own token",
    }
).encode()


class RequireToken:
    """401 for a request without a valid token: a plain answer a client can show. No OAuth
    metadata points anywhere, because this server is no authorization server and names none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or isinstance(scope.get("user"), AuthenticatedUser):
            await self.app(scope, receive, send)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
            (b"www-authenticate", b'Bearer realm="agentfleet"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})


class ScrapeToken:
    """/metrics also answers AGENTFLEET_METRICS_TOKEN, a token no other route accepts: a scraper
    holding it reads metrics and can do nothing else. Other requests go on to `otherwise`."""

    def __init__(self, metrics: ASGIApp, otherwise: ASGIApp, token: str) -> None:
        self._metrics = metrics
        self._otherwise = otherwise
        self._expected = b"bearer " + token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value[:7].lower() + value[7:]
                if hmac.compare_digest(given, self._expected):
                    await self._metrics(scope, receive, send)
                    return
        await self._otherwise(scope, receive, send)
